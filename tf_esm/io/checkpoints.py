"""One entry point for reading any checkpoint a model can load, below the model classes.

`read_checkpoint` turns a reference (hub id, HF or tf_esm directory, a weight file inside one, a fair-esm `.pt`
file) into `(config, state_dict, source)`: the state dict uses the HF reference names, which
`tf_esm.io.weights.load_state_dict` maps onto Keras variables through its one name table.
"""

from __future__ import annotations

import os

from tf_esm.configuration import load_config
from tf_esm.storage.hub import resolve_file
from tf_esm.io.weights import WEIGHT_FILES, CheckpointError, read_state_dict


def read_checkpoint(reference, config=None, populate=True):
    """`(config, {reference name: array}, source)` of a checkpoint.

    Args:
        reference: a directory (HF PyTorch layout or written by `save_pretrained`), a weight file inside one, a
            fair-esm `.pt` file, an `esm`-package ESM C `.pth` file, or a hub id (downloaded when online).
        config: an `EsmConfig` (`EsmcConfig`) to return instead of the checkpoint's own.
        populate: a memory-mapped file (our HDF5) is read ahead into the page cache (a hint to the kernel); pass
            False when the weights will be copied out of it (cast to another dtype) instead of used in place.

    Returns:
        The configuration, the state dict, and the file the weights came from (named in load messages).
    """
    reference = os.fspath(reference)
    if reference.endswith(".pth") and os.path.isfile(reference):
        # The esm package's ESM C weights: a bare state dict, no configuration (io/esmc_package.py).
        from tf_esm.io.esmc_package import read_esmc_package_checkpoint

        checkpoint_config, state_dict = read_esmc_package_checkpoint(reference, config)
        return checkpoint_config, state_dict, reference
    if reference.endswith(".pt") and os.path.isfile(reference):
        # A fair-esm checkpoint carries its own architecture arguments.
        from tf_esm.io.fair_esm import read_fair_esm_checkpoint

        checkpoint_config, state_dict = read_fair_esm_checkpoint(reference)
        return config or checkpoint_config, state_dict, reference
    weights_path = None
    if os.path.isfile(reference):
        weights_path, reference = reference, os.path.dirname(reference) or "."
    if config is None:
        config = load_config(reference)
    for filename in WEIGHT_FILES if weights_path is None else ():
        weights_path = resolve_file(reference, filename, required=False)
        if weights_path is not None:
            break
    if weights_path is None:
        raise CheckpointError(f"{reference}: no weights found (looked for {', '.join(WEIGHT_FILES)}).")
    return config, read_state_dict(weights_path, populate), weights_path
