"""fair-esm `.pt` checkpoints and HF directories -> tf_esm model directories (`tf-esm convert`).

Reading the checkpoints is `tf_esm.io.fair_esm` / `tf_esm.io.weights`; this module builds the model they describe and
saves it, all inside a staging directory that replaces the destination in one rename.
"""

from __future__ import annotations

import os
import shutil

from tf_esm.storage.atomic import atomic_directory
from tf_esm.configuration import load_config
from tf_esm.io.fair_esm import REGRESSION_NAMES, has_regression_weights, read_fair_esm_checkpoint, regression_path
from tf_esm.modeling.models import TFEsmForMaskedLM
from tf_esm.pipelines.auto import state_dict_class
from tf_esm.keras_compat import deferred_initialization
from tf_esm.io.weights import (
    CheckpointError,
    finish_initialization,
    load_state_dict,
    read_state_dict,
)


# Tokenizer files of an HF directory, carried over unchanged.
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _write_fair_esm(src, directory):
    config, state_dict = read_fair_esm_checkpoint(src)
    model = TFEsmForMaskedLM(config)
    model.build()
    missing, unexpected = load_state_dict(model, state_dict, source=src)
    missing = [n for n in missing if n not in REGRESSION_NAMES or has_regression_weights(src)]
    if missing or unexpected:
        raise CheckpointError(f"{src}: missing tensors {missing}; unexpected tensors {unexpected}.")
    model.save_pretrained(directory)


def _write_esmc_package(src, directory):
    from tf_esm.io.esmc_package import read_esmc_package_checkpoint
    from tf_esm.modeling.esmc_models import TFEsmcForMaskedLM

    config, state_dict = read_esmc_package_checkpoint(src)
    with deferred_initialization():
        model = TFEsmcForMaskedLM(config)
        model.build()
    try:
        missing, unexpected = load_state_dict(model, state_dict, source=src)
    finally:
        finish_initialization(model)
    if missing or unexpected:
        raise CheckpointError(f"{src}: missing tensors {missing}; unexpected tensors {unexpected}.")
    model.save_pretrained(directory)


def _write_hf_directory(src, directory, stem_precision=None):
    config = load_config(src)
    is_folding_model = getattr(config, "is_folding_model", False)
    if stem_precision is not None and not is_folding_model:
        raise ValueError(f"{src}: stem_precision is for ESMFold checkpoints; this one is not a folding model.")
    state_dict = read_state_dict(src)
    if is_folding_model:
        # ESMFold: the stem in the checkpoint's precision (float32) on any device, unless asked for a half one.
        from tf_esm.folding import TFEsmForProteinFolding

        model_class, kwargs = TFEsmForProteinFolding, {"stem_precision": stem_precision or "float32"}
    else:
        model_class, kwargs = state_dict_class(state_dict), {}
    with deferred_initialization():  # no random values for the weights the checkpoint replaces
        model = model_class(config, **kwargs)
        model.build()
    try:
        missing, _ = load_state_dict(model, state_dict, source=src)
    finally:
        finish_initialization(model)
    if missing:
        raise CheckpointError(f"{src}: missing tensors {missing}.")
    model.save_pretrained(directory)
    # After the model: save_pretrained only fills an empty directory. The source's own vocabulary replaces the
    # standard one it wrote (the staging directory is renamed into place as a whole, so plain copies are safe).
    for filename in _TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, filename)):
            shutil.copyfile(os.path.join(src, filename), os.path.join(directory, filename))


def _inside(path, directory):
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def convert_checkpoint(src, dst, overwrite=False, stem_precision=None):
    """Convert a fair-esm `.pt` file, an `esm`-package ESM C `.pth` file (`esmc_300m_2024_12_v0.pth`) or an HF model
    directory (ESM-1, ESM-2, ESMFold, ESM C) into a tf_esm model directory `dst`.

    `dst` receives `config.json`, `tf_esm_model.h5` and `vocab.txt` (plus the source's tokenizer files for an HF
    directory) and loads with `TFEsmForMaskedLM.from_pretrained(dst)` (or the task class of an HF directory).
    The output is written into a temporary directory next to `dst` and renamed at the end, so a failed or
    interrupted conversion leaves `dst` as it was.

    Args:
        src: a fair-esm checkpoint (`esm2_t6_8M_UR50D.pt`, `esm1b_t33_650M_UR50S.pt`, ...; the contact-regression
            file is read from beside it) or a directory with `config.json` and HF weights.
        dst: the output directory; it must not exist or be empty, unless `overwrite`.
        overwrite: replace an existing non-empty `dst`.
        stem_precision: ESMFold only: "bfloat16" or "float16" stores the ESM-2 stem's weights rounded once to
            that precision (half its size on disk and in memory). The converted model then builds its stem in
            that precision by default and maps those weights as they are, with no cast on loading (as float32
            ones are mapped). Default: float32, the checkpoint's own precision.

    Returns:
        The output directory.

    Examples:

    ```python
    >>> from tf_esm.pipelines.convert import convert_checkpoint  # or tf_esm.pipelines.convert
    >>> from tf_esm import TFEsmForMaskedLM
    >>> convert_checkpoint("esm2_t6_8M_UR50D.pt", "esm2_t6_8M_tf")
    'esm2_t6_8M_tf'
    >>> model = TFEsmForMaskedLM.from_pretrained("esm2_t6_8M_tf")
    ```
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if stem_precision not in (None, "float32", "float16", "bfloat16"):
        raise ValueError(f"stem_precision must be None, 'float32', 'float16' or 'bfloat16'; got {stem_precision!r}.")
    if not os.path.exists(src):
        raise CheckpointError(f"{src}: no such file or directory.")
    if os.path.isdir(src):
        writer = _write_hf_directory
        if not os.path.isfile(os.path.join(src, "config.json")):
            raise CheckpointError(f"{src}: an HF model directory needs a config.json.")
    elif src.endswith((".pt", ".pth")):
        writer = _write_fair_esm if src.endswith(".pt") else _write_esmc_package
        if stem_precision is not None:
            raise ValueError(f"{src}: stem_precision is for ESMFold checkpoints (HF directories).")
    else:
        raise CheckpointError(f"{src}: expected a fair-esm '.pt' file, an esm-package ESM C '.pth' file or an HF "
                              "model directory.")
    if os.path.exists(dst):
        if not os.path.isdir(dst):
            raise FileExistsError(f"{dst} exists and is not a directory.")
        if os.listdir(dst) and not overwrite:
            raise FileExistsError(f"{dst} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
        if _inside(src, dst) or (writer is _write_fair_esm and _inside(regression_path(src), dst)):
            raise ValueError(f"{dst} holds the source {src}; write the conversion somewhere else.")

    with atomic_directory(dst, overwrite=overwrite) as staging:
        if writer is _write_hf_directory:
            writer(src, staging, stem_precision)
        else:
            writer(src, staging)
    return dst
