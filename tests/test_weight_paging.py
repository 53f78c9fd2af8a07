"""ESMFold's weights paged per use (`TFEsmForProteinFolding.page_weights`, `layers_tf.paged_weights`): a model
loaded from tf_esm's own file holds each stem layer's and trunk block's weights only while the layer runs, folds as
the reference does, and never drops a page that holds the only copy of a value (a weight written in place)."""

import ctypes
import sys

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

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                       reason="variables adopt the file's memory map under TensorFlow only"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pages per use and reads /proc/self/pagemap"),
]

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

    directory = tmp_path_factory.mktemp("paging")
    reference = save_wide_stem_reference(directory / "hf")
    return reference, convert_checkpoint(str(directory / "hf"), str(directory / "converted"))


def _resident_pages(layers):
    """(pages mapped into the process, whole pages) of the variables of `layers`, from /proc/self/pagemap."""
    mapped = total = 0
    for layer in layers:
        for variable in layer.variables:
            array = np.asarray(variable.value.value())
            begin, length = buffers._whole_pages(array.ctypes.data, array.nbytes)
            if length:
                with open("/proc/self/pagemap", "rb") as handle:
                    handle.seek(begin // buffers.mmap.PAGESIZE * 8)
                    entries = np.frombuffer(handle.read(length // buffers.mmap.PAGESIZE * 8), np.uint64)
                mapped += int(np.sum(entries >> 63))
                total += entries.size
    return mapped, total


def test_paging_is_off_by_default(converted):
    _, directory = converted
    assert TFEsmForProteinFolding.from_pretrained(directory, strict=True).page_weights is False


def test_paged_weights_leave_the_process_after_each_fold_and_fold_as_the_reference(converted, monkeypatch):
    reference, directory = converted
    monkeypatch.setattr(TFEsmForProteinFolding, "page_weights", True)  # the opt-in, before loading
    model = TFEsmForProteinFolding.from_pretrained(directory, strict=True)
    stacks = list(model.esm.encoder.layer) + [model.trunk.blocks]  # the stem's layers, the trunk's stacked blocks
    layer_count = len(model.esm.encoder.layer) + len(model.trunk.blocks)
    for layers, pages in ((model.esm.encoder.layer, 100), ([model.trunk.blocks], 20)):
        mapped, total = _resident_pages(layers)
        assert total > pages and mapped == 0  # the stacks were only read ahead on loading, not mapped
    # The trunk's stacked weights are views of the file's mapping (stored stacked), paged per block's slices.
    from tf_esm.modeling import layers_tf

    blocks = model.trunk.blocks
    spans = layers_tf._stack_spans(blocks)
    per_block = sum(np.asarray(v.value.value()).nbytes for v in blocks.stacked_weights) // len(blocks)
    assert len(spans) == len(blocks) and all(sum(span[1] for span in block) >= per_block for block in spans)

    aatype, mask = _batch(SEQUENCES[:1])
    with torch.no_grad():
        theirs = reference(torch.from_numpy(aatype), attention_mask=torch.from_numpy(mask), num_recycles=0)
    expected = theirs["positions"].numpy()
    for call, compiled in (("eager call", False), ("compiled program", True), ("compiled program again", True)):
        positions = np.asarray(model(aatype, attention_mask=mask, num_recycles=0, compiled=compiled)["positions"])
        np.testing.assert_allclose(positions, expected, rtol=0, atol=ATOL["positions"], err_msg=call)
        mapped, total = _resident_pages(stacks)
        # At most a fault-around window (16 pages) per layer: mapped by the use of a weight outside the stacks
        # that lies next to the layer's in the file.
        assert mapped <= 16 * layer_count, f"{call}: {mapped} of {total} pages of the layer stacks still mapped"
    assert model.inference_trace_count == 1

    model.page_weights = False  # the same model, its weights left mapped after use
    positions = np.asarray(model(aatype, attention_mask=mask, num_recycles=0, compiled=True)["positions"])
    np.testing.assert_allclose(positions, expected, rtol=0, atol=ATOL["positions"])
    mapped, total = _resident_pages(model.esm.encoder.layer)
    assert mapped == total


def test_a_weight_written_in_place_is_never_dropped(converted):
    """A private mapping's written page is the only copy of its values: paging leaves that weight mapped."""
    _, directory = converted
    model = TFEsmForProteinFolding.from_pretrained(directory, strict=True)
    model.page_weights = True
    kernel = model.esm.encoder.layer[1].intermediate.dense.kernel
    array = np.asarray(kernel.value.value())
    assert buffers.mapped_span(array.ctypes.data) is not None  # the variable's memory is the file's map
    written = np.full(array.shape, 0.25, np.float32)
    ctypes.memmove(array.ctypes.data, written.ctypes.data, written.nbytes)  # copy-on-write: the process's own pages
    assert buffers.paged_out([buffers.mapped_span(array.ctypes.data)]) == 0
    aatype, mask = _batch(SEQUENCES[1:2])
    model(aatype, attention_mask=mask, num_recycles=0, compiled=True)
    np.testing.assert_array_equal(np.asarray(kernel.value.value()), written)
    clean = model.esm.encoder.layer[1].output_block.dense.kernel  # the next matrix: still the file's pages, dropped
    assert buffers.paged_out([buffers.mapped_span(np.asarray(clean.value.value()).ctypes.data)]) == 1


def test_fold_command_pages_weights_on_request_only(converted, tmp_path, monkeypatch):
    from tf_esm import folding
    from tf_esm.cli import main

    _, directory = converted
    models = []
    load = folding.TFEsmForProteinFolding.from_pretrained

    def from_pretrained(reference, **kwargs):
        models.append(load(reference, **kwargs))
        return models[-1]

    monkeypatch.setattr(folding.TFEsmForProteinFolding, "from_pretrained", from_pretrained)
    fasta = tmp_path / "one.fasta"
    fasta.write_text(">one\nMKTAYIAKQRQISFVKSHFS\n")
    for outdir, flags in (("paged", ["--page-weights"]), ("resident", [])):
        assert main(["fold", directory, str(fasta), str(tmp_path / outdir), "--num-recycles", "0",
                     *flags]) == 0
    assert [model.page_weights for model in models] == [True, False]
    mapped, total = _resident_pages(models[0].esm.encoder.layer)
    assert mapped <= 16 * len(models[0].esm.encoder.layer) and total > 700
    mapped, total = _resident_pages(models[1].esm.encoder.layer)
    assert mapped == total
    assert (tmp_path / "paged" / "one.pdb").read_text() == (tmp_path / "resident" / "one.pdb").read_text()
