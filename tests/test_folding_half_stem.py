"""ESMFold with a half-precision stem (`stem_precision="float16"` / `"bfloat16"`: the stem's weights stored in half
precision, as transformers' `fp16_esm` stem, which is `.half()`), against transformers' `EsmForProteinFolding` with
its stem in float16 (its `fp16_esm` default, run on the CPU as it is) or cast to bfloat16. Tiny random checkpoints
(tests/test_folding_model.py builds them). Runs under every Keras backend (tests/conftest.py EVERY_BACKEND_MODULES).

Structure outputs of these tiny random models amplify half-precision rounding: transformers' own float16 stem moves
positions by ~0.016 A from its float32 stem. The stem's hidden states are checked directly too.
"""

import copy
import json
import struct

import keras
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from tests._reference import assert_within, share_directory, share_model
from tests.folding_reference import max_abs_diff
from tests.test_folding_model import SEQUENCES, _batch, _make_reference
from tf_esm.backend import to_numpy
from tf_esm.folding import TFEsmForProteinFolding

HALF = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}  # numpy types of the half dtypes


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{stem dtype of the checkpoint: (directory, transformers reference)}: an `fp16_esm=True` save (stem tensors
    in float16, as transformers writes it) and a float32 one."""
    out = {}
    for name, fp16_esm in (("float16", True), ("float32", False)):
        directory = tmp_path_factory.mktemp(f"esmfold_{name}_stem")
        reference = _make_reference(directory, fp16_esm=fp16_esm, seed=1)
        share_directory(directory)
        share_model(f"test_folding_half_stem.checkpoints[{name}]", reference)
        out[name] = (str(directory), reference)
    return out


def _fold(model, compiled=True):
    aatype, mask = _batch(SEQUENCES[1:])  # two lengths: the shorter one padded
    return model(aatype, attention_mask=mask, num_recycles=0, compiled=compiled)


def _reference_fold(reference):
    aatype, mask = _batch(SEQUENCES[1:])
    with torch.no_grad():
        return reference(torch.from_numpy(aatype), attention_mask=torch.from_numpy(mask), num_recycles=0)


def _stem_states(model):
    """The stem's hidden states, [B, L, layers + 1, C] as float32 (what `esm_s_combine` combines), and the mask."""
    aatype, mask = _batch(SEQUENCES[1:])
    esm_ids = model.af2_idx_to_esm_idx(aatype, mask)
    states, _ = model.compute_language_model_representations(esm_ids)
    return np.asarray(keras.ops.convert_to_numpy(states)), mask.astype(bool)


def _reference_stem_states(reference):
    aatype, mask = _batch(SEQUENCES[1:])
    esm_ids = reference.af2_idx_to_esm_idx(torch.from_numpy(aatype), torch.from_numpy(mask))
    with torch.no_grad():
        return reference.compute_language_model_representations(esm_ids).float().numpy()


def _bfloat16_reference(reference):
    """A copy of `reference` with its stem cast to bfloat16 (`.to(torch.bfloat16)`), except the rotary `inv_freq`
    buffer: casting it too rounds the rotation frequencies to 8 bits (a different model: the angles at residue 10
    move by up to ~0.02 rad), whereas tf_esm keeps the checkpoint's (float32, or float16-valued) frequencies and
    computes the rotary tables in float32, as transformers computes them from its buffer."""
    copied = copy.deepcopy(reference)
    inv_freq = copied.esm.rotary_embeddings.inv_freq.clone()
    copied.esm.to(torch.bfloat16)
    copied.esm.rotary_embeddings.inv_freq = inv_freq
    return copied


def _numpy(variable):
    return to_numpy(variable.value)


def _stem_bytes(model):
    return sum(int(np.prod(v.shape)) * np.dtype(HALF.get(str(v.dtype), str(v.dtype))).itemsize
               for v in model.esm.weights)


@pytest.mark.parametrize("stem_precision", ["float16", "bfloat16"])
@pytest.mark.parametrize("stored", ["float16", "float32"])
def test_stem_weights_are_stored_in_half_precision(checkpoints, stored, stem_precision):
    """from_pretrained(stem_precision=...) of a float16 (fp16_esm) or float32 checkpoint: every stem weight but the rotary
    frequencies is of the half dtype, equal to the checkpoint's tensor rounded once; the trunk stays float32."""
    from tf_esm.io.stacked_weights import matrix_ndim
    from tf_esm.io.weights import (matched_state_dict, model_variables, normalize_reference_names, read_state_dict,
                                   reference_name)

    directory, _ = checkpoints[stored]
    model = TFEsmForProteinFolding.from_pretrained(directory, stem_precision=stem_precision, strict=True)
    full = TFEsmForProteinFolding.from_pretrained(directory, strict=True)  # float32 stem (CPU default)
    assert model.stem_precision == stem_precision and full.stem_precision == "float32"
    assert model.esm.dtype_policy.name == stem_precision  # storage and compute: not a mixed policy
    assert [v.path.rsplit("/", 2)[1:] for v in model.esm.weights if str(v.dtype) != stem_precision] == [
        ["rotary_embeddings", "inv_freq"]]  # float32: the rotary tables are computed in float32
    stem = {id(v) for v in model.esm.weights}
    assert {str(v.dtype) for v in model.weights if id(v) not in stem} == {"float32"}
    # The checkpoint's per-layer tensors gathered under the encoder's stacked names, as loading does.
    state = matched_state_dict(normalize_reference_names(read_state_dict(directory)), model_variables(model))
    for variable in model.esm.weights:
        name, transpose = reference_name(variable.path)
        expected = np.asarray(state[name], np.float32)
        expected = expected.swapaxes(-1, -2) if transpose and expected.ndim == matrix_ndim(name) else expected
        expected = expected.astype(HALF[stem_precision]) if str(variable.dtype) == stem_precision else expected
        np.testing.assert_array_equal(_numpy(variable), expected,
                                      err_msg=variable.path)
    inv_freq_bytes = 4 * model.config.hidden_size // model.config.num_attention_heads // 2
    assert _stem_bytes(model) - inv_freq_bytes == (_stem_bytes(full) - inv_freq_bytes) // 2


def test_float16_stem_matches_reference_float16_stem(checkpoints):
    """Ours in float16 against transformers' fp16_esm stem (float16 weights and compute on the CPU): the same
    numerics (layer norms, softmax and the rotary in float32, float32 accumulation in the matmuls, hidden states
    cast to float32 before the layer combination). Remaining differences are half-precision roundings: the
    reference adds a linear layer's bias before rounding its float32 sum to float16, a float16 matmul here rounds
    before the bias is added, so about a quarter of each projection's outputs differ by one float16 ulp."""
    directory, reference = checkpoints["float16"]
    model = TFEsmForProteinFolding.from_pretrained(directory, stem_precision="float16", strict=True)

    ours, mask = _stem_states(model)  # eager
    theirs = _reference_stem_states(reference)
    np.testing.assert_array_equal(ours, ours.astype(np.float16).astype(np.float32))  # computed in float16
    differences = np.abs(ours - theirs)[mask].max(axis=(0, 2))  # per hidden state: embeddings, layers
    assert differences[0] == 0.0  # measured 0: the embeddings are exact
    assert_within("float16 stem hidden states", float(differences.max()), 0.015)  # measured 3.9e-3 TF, 2.9e-3 JAX

    output = _fold(model)  # the compiled path
    expected = _reference_fold(reference)
    assert float(expected["positions"][-1].std()) > 1.0  # a real structure
    # measured: positions 1.4e-2 TF, 1.8e-2 JAX (transformers' float16 stem vs its float32 one: 1.6e-2); plddt
    # 4.2e-6, 5.8e-6; ptm 6.5e-8, 2.2e-7
    assert_within("float16 stem positions", max_abs_diff(output["positions"], expected["positions"]), 0.08)
    assert_within("float16 stem plddt", max_abs_diff(output["plddt"], expected["plddt"]), 3e-5)
    assert_within("float16 stem ptm", max_abs_diff(output["ptm"], expected["ptm"]), 2e-6)


def test_float16_and_mixed_float16_stems_agree_exactly(checkpoints):
    """float16 weights compute what float32 weights cast to float16 on every call (`mixed_float16`, which keeps
    working) compute: the checkpoint's float16 values either way, so the same hidden states to the bit."""
    directory, _ = checkpoints["float16"]
    half, _ = _stem_states(TFEsmForProteinFolding.from_pretrained(directory, stem_precision="float16", strict=True))
    mixed_model = TFEsmForProteinFolding.from_pretrained(directory, stem_precision="mixed_float16", strict=True)
    assert {str(v.dtype) for v in mixed_model.esm.weights} == {"float32"}
    mixed, _ = _stem_states(mixed_model)
    np.testing.assert_array_equal(half, mixed)


def test_bfloat16_stem_matches_reference_bfloat16_stem(checkpoints):
    """Ours in bfloat16 (from a float32 checkpoint) against transformers' stem cast to bfloat16, and, looser,
    against its float16 stem. bfloat16 keeps 8 bits of mantissa, float16 11: differences ~8x float16's."""
    directory, reference = checkpoints["float32"]
    model = TFEsmForProteinFolding.from_pretrained(directory, stem_precision="bfloat16", strict=True)
    bf16_reference = _bfloat16_reference(reference)

    ours, mask = _stem_states(model)
    np.testing.assert_array_equal(ours, ours.astype(HALF["bfloat16"]).astype(np.float32))  # computed in bfloat16
    differences = np.abs(ours - _reference_stem_states(bf16_reference))[mask].max(axis=(0, 2))
    assert differences[0] == 0.0  # measured 0: the embeddings are exact
    assert_within("bfloat16 stem hidden states", float(differences.max()), 0.08)  # measured 2.0e-2 TF, 2.3e-2 JAX

    output = _fold(model)  # the compiled path
    # measured: positions 6.5e-2 TF, 0.13 JAX; plddt 3.5e-5, 5.7e-5; ptm 1.7e-6, 5.7e-6
    expected = _reference_fold(bf16_reference)
    assert_within("bfloat16 stem positions", max_abs_diff(output["positions"], expected["positions"]), 0.4)
    assert_within("bfloat16 stem plddt", max_abs_diff(output["plddt"], expected["plddt"]), 3e-4)
    assert_within("bfloat16 stem ptm", max_abs_diff(output["ptm"], expected["ptm"]), 3e-5)

    fp16_reference = copy.deepcopy(reference)
    fp16_reference.esm.half()  # transformers' fp16_esm stem, of the same float32 weights
    expected = _reference_fold(fp16_reference)
    # measured: positions 0.11 TF, 0.12 JAX; plddt 5.6e-5, 4.2e-5; ptm 5.9e-7, 4.6e-6
    assert_within("bfloat16 vs float16 stem positions", max_abs_diff(output["positions"], expected["positions"]),
                  0.5)
    assert_within("bfloat16 vs float16 stem plddt", max_abs_diff(output["plddt"], expected["plddt"]), 3e-4)
    assert_within("bfloat16 vs float16 stem ptm", max_abs_diff(output["ptm"], expected["ptm"]), 3e-5)


def _safetensors_dtypes(path):
    with open(path, "rb") as handle:
        header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
    header.pop("__metadata__", None)
    return {name: entry["dtype"] for name, entry in header.items()}


@pytest.mark.parametrize("stem_precision", ["float16", "bfloat16"])
def test_save_pretrained_of_a_half_stem(checkpoints, tmp_path, stem_precision):
    """save_pretrained writes the stem's tensors in its half dtype (as transformers saves an fp16_esm model), the
    trunk in float32; transformers loads the file, and so do we (h5: bfloat16 as 16-bit patterns, version 3,
    tests/test_bfloat16_storage.py)."""
    directory, reference = checkpoints["float16"]
    model = TFEsmForProteinFolding.from_pretrained(directory, stem_precision=stem_precision, strict=True)
    model.save_pretrained(str(tmp_path / "safetensors"), format="safetensors")
    model.save_pretrained(str(tmp_path / "h5"), format="h5")
    dtypes = _safetensors_dtypes(tmp_path / "safetensors" / "model.safetensors")
    stem_code = {"float16": "F16", "bfloat16": "BF16"}[stem_precision]
    assert {dtype for name, dtype in dtypes.items() if name.startswith("esm.") and "inv_freq" not in name} == {
        stem_code}
    assert {dtype for name, dtype in dtypes.items() if not name.startswith("esm.") and name != "af2_to_esm"} == {
        "F32"}
    assert dtypes["af2_to_esm"] == "I64"  # transformers' buffer, as its checkpoints hold it

    for saved in ("safetensors", "h5"):
        reloaded = TFEsmForProteinFolding.from_pretrained(str(tmp_path / saved), stem_precision=stem_precision, strict=True)
        for ours, again in zip(model.weights, reloaded.weights):
            assert ours.path.split("/", 1)[1] == again.path.split("/", 1)[1] and ours.dtype == again.dtype
            np.testing.assert_array_equal(_numpy(ours), _numpy(again), err_msg=f"{saved} {ours.path}")

    theirs = transformers.EsmForProteinFolding.from_pretrained(str(tmp_path / "safetensors")).eval()
    assert next(theirs.esm.parameters()).dtype == torch.float16  # the checkpoint's fp16_esm
    if stem_precision == "float16":  # the same float16 weights in the same PyTorch model: the same numbers
        expected, got = _reference_fold(reference), _reference_fold(theirs)
        assert_within("reloaded float16 stem positions", max_abs_diff(got["positions"].numpy(),
                                                                      expected["positions"]), 0.0)
    else:  # bfloat16 weights of this model widen to float16 exactly
        from tf_esm.io.weights import model_state_dict

        ours = model_state_dict(model)
        for name, parameter in theirs.esm.named_parameters():
            np.testing.assert_array_equal(parameter.detach().float().numpy(),
                                          np.asarray(ours[f"esm.{name}"], np.float32), err_msg=name)


def test_stem_precision_survives_get_config(checkpoints):
    directory, _ = checkpoints["float16"]
    model = TFEsmForProteinFolding.from_pretrained(directory, stem_precision="bfloat16", strict=True)
    assert model.get_config()["stem_precision"] == "bfloat16"
    clone = TFEsmForProteinFolding.from_config(model.get_config())  # not built: random initialisation is slow
    assert clone.stem_precision == "bfloat16" and clone.esm.dtype_policy.name == "bfloat16"


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="slow elsewhere: load_model builds the model with its random initialisers first, which "
                           "JAX compiles shape by shape (~15 s); the .keras format is the same under every backend")
def test_keras_file_keeps_the_half_stem(checkpoints, tmp_path):
    directory, _ = checkpoints["float16"]
    model = TFEsmForProteinFolding.from_pretrained(directory, stem_precision="bfloat16", strict=True)
    path = str(tmp_path / "esmfold.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.stem_precision == "bfloat16" and loaded.esm.dtype_policy.name == "bfloat16"
    assert len(loaded.weights) == len(model.weights)
    for ours, again in zip(model.weights, loaded.weights):
        assert str(ours.dtype) == str(again.dtype), ours.path
        np.testing.assert_array_equal(_numpy(ours), _numpy(again), err_msg=ours.path)


def test_unknown_stem_precision_is_a_clear_error(checkpoints):
    from tf_esm.configuration import EsmConfig

    config = EsmConfig.from_pretrained(checkpoints["float16"][0])
    with pytest.raises(ValueError, match=r"stem_precision must be None or one of float32, float16, bfloat16, "
                                         r"mixed_float16; got 'fp16'"):
        TFEsmForProteinFolding(config, stem_precision="fp16")


def test_cli_stem_precision(checkpoints, tmp_path, monkeypatch, capsys):
    """`tf-esm fold --stem-precision bfloat16` loads the model with a bfloat16 stem (warning on a CPU without
    bfloat16 instructions) and writes what the Python API folds with it; without the flag the model's default
    applies (stem_precision None)."""
    from tf_esm import folding
    from tf_esm.cli import main
    from tf_esm.modeling import precision

    directory, _ = checkpoints["float16"]
    loaded, warned = [], []
    original = folding.TFEsmForProteinFolding.from_pretrained.__func__

    def from_pretrained(cls, reference, **kwargs):  # records the arguments; loads once (one compiled program)
        loaded.append(kwargs)
        model = loaded[1] if len(loaded) > 1 else original(cls, reference, **kwargs)
        loaded.append(model)
        return model

    monkeypatch.setattr(folding.TFEsmForProteinFolding, "from_pretrained", classmethod(from_pretrained))
    monkeypatch.setattr(precision, "warn_if_slow", lambda name: warned.append(name) if name != "float32" else None)
    fasta = tmp_path / "fold.fasta"
    sequence = SEQUENCES[1]
    fasta.write_text(f">one\n{sequence}\n")
    assert main(["fold", directory, str(fasta), str(tmp_path / "bf16"), "--num-recycles", "0",
                 "--stem-precision", "bfloat16", "--quiet"]) == 0, capsys.readouterr().err
    assert loaded[0] == {"stem_precision": "bfloat16"} and warned == ["bfloat16"]
    model = loaded[1]
    assert {str(v.dtype) for v in model.esm.weights} == {"bfloat16", "float32"}
    # The command folds on the backend's default path, as the Python API does: the same call of a fresh model writes
    # the same file.
    fresh = original(folding.TFEsmForProteinFolding, directory, stem_precision="bfloat16")
    assert (tmp_path / "bf16" / "one.pdb").read_text() == fresh.infer_pdb(sequence, num_recycles=0)

    assert main(["fold", directory, str(fasta), str(tmp_path / "default"), "--num-recycles", "0",
                 "--quiet"]) == 0
    assert loaded[2] == {"stem_precision": None}  # the model's default: float32 on a CPU (see the first test)

    assert main(["fold", directory, str(fasta), str(tmp_path / "x"), "--stem-precision", "float8"]) == 2
    assert "invalid choice: 'float8'" in capsys.readouterr().err


def test_float16_stem_on_a_cpu_under_tensorflow_warns(checkpoints, caplog):
    """TensorFlow has no fast float16 matmul on a CPU (the full model's float16 stem did not finish a fold in
    20 minutes): building one there says so and points to bfloat16. Under JAX, and for bfloat16 on a CPU with
    bfloat16 instructions, nothing is said."""
    import logging

    from tf_esm.configuration import EsmConfig
    from tf_esm.modeling import precision

    config = EsmConfig.from_pretrained(checkpoints["float16"][0])
    with caplog.at_level(logging.WARNING, logger="tf_esm"):
        TFEsmForProteinFolding(config, stem_precision="float16")
    warned = [r.getMessage() for r in caplog.records if "float16 precision on a CPU" in r.getMessage()]
    if keras.backend.backend() == "tensorflow" and precision.runs_on_cpu():
        assert len(warned) == 1 and "use bfloat16" in warned[0]
    else:
        assert not warned
