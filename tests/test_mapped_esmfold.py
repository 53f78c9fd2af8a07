"""ESMFold loaded from tf_esm's own file (`tf-esm convert`): the variables adopt views of the file's memory map (no
copy), the model folds as the reference does, and a weight written in place stays the process's own value."""

import ctypes

import keras
import numpy as np
import pytest
import torch
import transformers

from tests.folding_reference import perturb_
from tests.test_folding_model import ATOL, SEQUENCES, TRUNK, _batch
from tf_esm.configuration import ESM2_VOCAB
from tf_esm.folding import TFEsmForProteinFolding
from tf_esm.io import buffers

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="variables adopt the file's memory map under TensorFlow only")

# A stem wide enough that each of its matrices spans whole pages (the tiny parity stem's fit inside one page).
WIDE_STEM = dict(vocab_size=33, hidden_size=256, num_hidden_layers=3, num_attention_heads=4, intermediate_size=1024,
                 max_position_embeddings=1026, pad_token_id=1, mask_token_id=32, position_embedding_type="rotary",
                 token_dropout=True, emb_layer_norm_before=False, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5)


def save_wide_stem_reference(directory):
    """A wide-stem float32 ESMFold of transformers (random weights), saved into `directory`; returns it."""
    torch.manual_seed(0)
    config = transformers.EsmConfig(**WIDE_STEM, is_folding_model=True, vocab_list=list(ESM2_VOCAB),
                                    esmfold_config=dict(fp16_esm=False, lddt_head_hid_dim=16, trunk=TRUNK))
    reference = transformers.EsmForProteinFolding(config).eval()
    perturb_(reference, scale=0.1, seed=0)
    reference.save_pretrained(str(directory))
    return reference


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(reference, directory converted by `tf-esm convert`) of a wide-stem ESMFold saved by transformers."""
    from tf_esm.pipelines.convert import convert_checkpoint

    directory = tmp_path_factory.mktemp("mapped")
    reference = save_wide_stem_reference(directory / "hf")
    return reference, convert_checkpoint(str(directory / "hf"), str(directory / "converted"))


def test_a_converted_model_is_mapped_and_folds_as_the_reference(converted):
    reference, directory = converted
    model = TFEsmForProteinFolding.from_pretrained(directory, strict=True)
    assert buffers.is_mapped(np.asarray(model.esm.encoder.layer.stacked_weight("intermediate.dense.kernel").value.value()))
    assert all(buffers.is_mapped(np.asarray(v.value.value())) for v in model.trunk.blocks.stacked_weights
               if len(v.shape) > 1)
    aatype, mask = _batch(SEQUENCES[:1])
    with torch.no_grad():
        expected = reference(torch.from_numpy(aatype), attention_mask=torch.from_numpy(mask),
                             num_recycles=0)["positions"].numpy()
    for compiled in (False, True):
        positions = np.asarray(model(aatype, attention_mask=mask, num_recycles=0, compiled=compiled)["positions"])
        np.testing.assert_allclose(positions, expected, rtol=0, atol=ATOL["positions"], err_msg=f"compiled={compiled}")


def test_a_weight_written_in_place_keeps_its_value(converted):
    """A private (copy-on-write) mapping: a write gives the process its own page; folding does not undo it."""
    _, directory = converted
    model = TFEsmForProteinFolding.from_pretrained(directory, strict=True)
    kernel = model.esm.encoder.layer.stacked_weight("intermediate.dense.kernel")
    array = np.asarray(kernel.value.value())
    assert buffers.is_mapped(array)
    written = np.full(array.shape, 0.25, np.float32)
    ctypes.memmove(array.ctypes.data, written.ctypes.data, written.nbytes)
    aatype, mask = _batch(SEQUENCES[1:2])
    model(aatype, attention_mask=mask, num_recycles=0)
    np.testing.assert_array_equal(np.asarray(kernel.value.value()), written)
