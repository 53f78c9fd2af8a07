"""bfloat16 weights stored as they are (tf_esm weight file version 3): `save_pretrained` of a bfloat16 model and
`tf-esm convert --stem-precision bfloat16` of an ESMFold checkpoint. The stored values are the model's own bit for
bit; loading maps them (no cast, so no copy) like float32 weights; loading them into a
float32 model widens them exactly; a tf_esm that predates version 3 finds no group it knows."""

import json
import os
import runpy

import h5py
import keras
import numpy as np
import pytest
import torch
import transformers

from tests.test_folding_model import SEQUENCES, _batch
from tests.test_mapped_esmfold import save_wide_stem_reference
from tf_esm import TFEsmModel
from tf_esm.backend import to_numpy
from tf_esm.folding import TFEsmForProteinFolding
from tf_esm.io import buffers, native_h5
from tf_esm.io.weights import H5_WEIGHTS_NAME

def _values(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable.value)).astype(np.float32)


@pytest.fixture(scope="module")
def esmfold(tmp_path_factory):
    """(HF directory of a wide-stem float32 ESMFold saved by transformers, its bfloat16-stem conversion)."""
    from tf_esm.pipelines.convert import convert_checkpoint

    directory = tmp_path_factory.mktemp("bf16_stem")
    save_wide_stem_reference(directory / "hf")
    return str(directory / "hf"), convert_checkpoint(str(directory / "hf"), str(directory / "bf16"),
                                                     stem_precision="bfloat16")


def test_converted_bfloat16_stem_is_stored_as_it_is_and_recorded_in_the_config(esmfold):
    _, converted = esmfold
    assert json.load(open(f"{converted}/config.json"))["esm_dtype"] == "bfloat16"
    with h5py.File(f"{converted}/{H5_WEIGHTS_NAME}", "r") as handle:
        # Version 4: version 3's bfloat16 datasets, and the trunk's blocks stored as stacks.
        assert handle.attrs["format_version"] == 4 and list(handle) == [native_h5.GROUPS[4]]
        group = handle[native_h5.GROUPS[4]]
        kernel = group["esm/encoder/layer/*/intermediate/dense/weight"]
        assert kernel.dtype == np.dtype("<u2") and kernel.attrs["bfloat16"]
        trunk = group["trunk/blocks/*/mlp_seq/mlp/1/weight"]
        assert trunk.dtype == np.float32 and not trunk.attrs.get("bfloat16", False)
        assert trunk.shape == (2, 32, 128) and trunk.attrs["keras_layout"]  # [block, in, out]: Keras' layout
        inv_freq = group["esm/rotary_embeddings/inv_freq"]
        assert inv_freq.dtype == np.float32  # the rotary frequencies stay float32 in a half stem


def test_converted_bfloat16_stem_loads_as_the_cast_one_and_folds_the_same(esmfold):
    """The converted model builds its stem in bfloat16 by default, with the same weights and positions as a
    bfloat16 stem cast from the float32 checkpoint on loading (whose parity with transformers' bfloat16 stem
    test_folding_half_stem checks)."""
    hf, converted = esmfold
    model = TFEsmForProteinFolding.from_pretrained(converted, strict=True)
    cast = TFEsmForProteinFolding.from_pretrained(hf, stem_precision="bfloat16", strict=True)
    assert model.stem_precision == "bfloat16"
    assert [v.path.split("/", 1)[1] for v in model.weights] == [v.path.split("/", 1)[1] for v in cast.weights]
    for ours, theirs in zip(model.weights, cast.weights):
        assert ours.dtype == theirs.dtype, ours.path
        np.testing.assert_array_equal(_values(ours), _values(theirs), err_msg=ours.path)
    aatype, mask = _batch(SEQUENCES[:2])
    for call in ("first call", "compiled program"):  # each path against the same path of the cast model
        expected = to_numpy(cast(aatype, attention_mask=mask, num_recycles=0)["positions"])
        positions = to_numpy(model(aatype, attention_mask=mask, num_recycles=0)["positions"])
        np.testing.assert_array_equal(positions, expected, err_msg=call)

    widened = TFEsmForProteinFolding.from_pretrained(converted, stem_precision="float32", strict=True)
    kernel = widened.esm.encoder.layer.stacked_weight("intermediate.dense.kernel")
    assert widened.stem_precision == "float32" and kernel.dtype == "float32"
    np.testing.assert_array_equal(_values(kernel), _values(model.esm.encoder.layer.stacked_weight("intermediate.dense.kernel")))


@pytest.mark.tensorflow_only("variables adopt the file's memory map under TensorFlow only")
def test_converted_bfloat16_stem_is_mapped(esmfold):
    _, converted = esmfold
    model = TFEsmForProteinFolding.from_pretrained(converted, strict=True)
    kernel = model.esm.encoder.layer.stacked_weight("intermediate.dense.kernel")
    assert kernel.dtype == "bfloat16"
    assert buffers.is_mapped(np.asarray(kernel.value.value()))  # no cast, no copy


def test_save_pretrained_of_a_bfloat16_encoder_round_trips(tmp_path):
    """A bfloat16 TFEsmModel saved as h5 stores bfloat16 (version 4: its layers are stacked) and reloads bit for
    bit, in bfloat16 or widened to float32; a reader that knows only versions 1 and 2 finds none of its groups."""
    config = transformers.EsmConfig(vocab_size=33, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=128, max_position_embeddings=130, pad_token_id=1,
                                    mask_token_id=32, position_embedding_type="rotary", token_dropout=True)
    torch.manual_seed(0)
    transformers.EsmModel(config, add_pooling_layer=False).save_pretrained(str(tmp_path / "hf"))
    model = TFEsmModel.from_pretrained(str(tmp_path / "hf"), precision="bfloat16", add_pooling_layer=False)
    model.save_pretrained(str(tmp_path / "saved"))
    with h5py.File(tmp_path / "saved" / H5_WEIGHTS_NAME, "r") as handle:
        assert handle.attrs["format_version"] == 4
        assert set(native_h5.GROUPS[version] for version in (1, 2)).isdisjoint(handle)
        assert handle[native_h5.GROUPS[4]]["esm/encoder/layer/*/intermediate/dense/weight"].attrs["bfloat16"]
    for dtype in ("bfloat16", "float32"):
        again = TFEsmModel.from_pretrained(str(tmp_path / "saved"), precision=dtype, add_pooling_layer=False)
        for ours, theirs in zip(model.weights, again.weights):
            assert str(theirs.dtype) == (dtype if ours.dtype == "bfloat16" else str(ours.dtype)), theirs.path
            np.testing.assert_array_equal(_values(theirs), _values(ours), err_msg=f"{dtype} {theirs.path}")


def test_a_dataset_marked_bfloat16_with_the_wrong_storage_is_refused(tmp_path):
    from tf_esm.io.weights import CheckpointError

    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["format_version"] = 3
        handle.create_dataset(f"{native_h5.GROUPS[3]}/esm/embeddings/word_embeddings/weight",
                              data=np.zeros((33, 8), np.float32)).attrs["bfloat16"] = True
    with pytest.raises(CheckpointError, match="word_embeddings/weight.*marked bfloat16 but stored as float32"):
        native_h5.read_h5(str(path))


def test_convert_stem_precision_command(esmfold, tmp_path, capsys):
    from tf_esm.cli import main

    hf, _ = esmfold
    assert main(["convert", hf, str(tmp_path / "out"), "--stem-precision", "bfloat16"]) == 0
    assert json.load(open(tmp_path / "out" / "config.json"))["esm_dtype"] == "bfloat16"
    script = runpy.run_path(os.path.join(os.path.dirname(__file__), os.pardir, "conversion_scripts",
                                         "convert_esm_checkpoint.py"))
    assert script["main"](["--checkpoint", hf, "--output", str(tmp_path / "script"), "--stem-precision",
                           "float16"]) == 0
    assert json.load(open(tmp_path / "script" / "config.json"))["esm_dtype"] == "float16"
    capsys.readouterr()
    (tmp_path / "one.fasta").write_text(f">one\n{SEQUENCES[0]}\n")
    assert main(["fold", hf, str(tmp_path / "one.fasta"), str(tmp_path / "pdb"), "--num-recycles", "0",
                 "--stem-precision", "bfloat16"]) == 0
    assert f"tf-esm convert {hf} DIR --stem-precision bfloat16" in capsys.readouterr().err  # the tip keeps the flag
    encoder = tmp_path / "encoder"
    transformers.EsmModel(transformers.EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=64,
                                                 pad_token_id=1)).save_pretrained(str(encoder))
    capsys.readouterr()
    assert main(["convert", str(encoder), str(tmp_path / "no"), "--stem-precision", "bfloat16"]) != 0
    assert "--stem-precision is for ESMFold checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
