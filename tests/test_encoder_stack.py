"""The encoder's layers are one `LayerStack` (tf_esm/modeling/layer_stack.py), as ESMFold's trunk blocks are: each
weight of a layer is one variable stacked over the layers, held once on every backend (JAX's programs scan the
model's own variables; there is no second, stacked copy). Checkpoints with per-layer names still load: tf_esm's own
files written before the stack (a fixture), and transformers' (parity); `save_pretrained` writes the stacks, and its
safetensors export per-layer names that transformers loads."""

import gc
import os
import shutil

import h5py
import numpy as np
import safetensors
import torch
import transformers

from tests._reference import as_numpy, assert_close, batch_with_padding_and_masks, torch_outputs
from tests.conftest import BACKEND
from tf_esm import TFEsmForMaskedLM, TFEsmModel
from tf_esm.io import native_h5
from tf_esm.modeling.layer_stack import LayerStack

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "per_layer_h5")
ATOL = 2e-5


def test_the_encoder_holds_each_weight_of_a_layer_once_stacked_over_the_layers(reference_checkpoints):
    reference = reference_checkpoints("rotary", model_class="EsmModel")
    model = TFEsmModel.from_pretrained(reference.path)
    stack = model.esm.encoder.layer
    assert isinstance(stack, LayerStack) and len(stack) == 2
    torch_layers = reference.model.encoder.layer
    assert len(stack.weights) == len(list(torch_layers[0].parameters()))  # one variable per weight of a layer
    kernel = stack.stacked_weight("attention.self.query.kernel")
    assert tuple(kernel.shape) == (2, 32, 32)
    for index, layer in enumerate(torch_layers):  # layer i's weight is slice i
        np.testing.assert_array_equal(as_numpy(kernel.value)[index], layer.attention.self.query.weight.detach().numpy().T)
    encoder_ids = {id(variable) for variable in model.esm.encoder.variables}
    assert not any(id(variable) in encoder_ids for variable in stack.template.variables)  # the template holds none


def test_jax_programs_keep_no_second_copy_of_the_encoder_weights(reference_checkpoints):
    """Under JAX the embedding program's arguments are the model's variables' own arrays: running it leaves no new
    device arrays the size of the encoder's layers behind (a stacked copy of them, before)."""
    if BACKEND != "jax":
        return
    import jax

    from tf_esm.pipelines.inference import embed_sequences

    reference = reference_checkpoints("rotary", model_class="EsmModel")
    model = TFEsmModel.from_pretrained(reference.path)
    layer_bytes = sum(int(np.prod(weight.shape)) * 4 for weight in model.esm.encoder.layer.weights)
    gc.collect()
    before = sum(array.nbytes for array in jax.live_arrays())
    embed_sequences(model, ["MKTAYIAKQR", "MKV"], include=("mean",), repr_layers=(2,))
    gc.collect()
    grown = sum(array.nbytes for array in jax.live_arrays()) - before
    assert grown < layer_bytes / 4, (grown, layer_bytes)


def _outputs(model, input_ids, attention_mask):
    out = model(input_ids, attention_mask=attention_mask, output_hidden_states=True, output_attentions=True)
    return [as_numpy(out.logits)] + [as_numpy(h) for h in out.hidden_states] + [as_numpy(a) for a in out.attentions]


def test_a_per_layer_file_written_before_the_stack_loads_and_matches_transformers(tmp_path):
    with h5py.File(os.path.join(FIXTURE, "tf_esm_model.h5"), "r") as handle:
        assert handle.attrs["format_version"] == 2
        group = handle[native_h5.GROUPS[2]]
        assert "esm/encoder/layer/1/attention/self/query/weight" in group  # one dataset per layer
    model = TFEsmForMaskedLM.from_pretrained(FIXTURE, strict=True)
    input_ids, attention_mask = batch_with_padding_and_masks()
    ours = _outputs(model, input_ids, attention_mask)

    # The reference: transformers with the checkpoint that file was converted from.
    hf = tmp_path / "hf"
    hf.mkdir()
    shutil.copy(os.path.join(FIXTURE, "config.json"), hf / "config.json")
    shutil.copy(os.path.join(FIXTURE, "reference.safetensors"), hf / "model.safetensors")
    reference = transformers.EsmForMaskedLM.from_pretrained(str(hf), attn_implementation="eager").eval()
    expected = torch_outputs(reference, input_ids, attention_mask, output_hidden_states=True,
                             output_attentions=True)
    theirs = ([expected.logits.numpy()] + [h.numpy() for h in expected.hidden_states]
              + [a.numpy() for a in expected.attentions])
    keep = attention_mask.astype(bool)
    for index, (value, reference_value) in enumerate(zip(ours, theirs)):
        if value.ndim == 3:  # logits, hidden states: the real tokens
            value, reference_value = value[keep], reference_value[keep]
        assert_close(value, reference_value, ATOL, f"per-layer h5 output {index}")

    # Saved again: one dataset per stacked weight (version 4), which loads to the same numbers.
    model.save_pretrained(str(tmp_path / "stacked"))
    with h5py.File(tmp_path / "stacked" / "tf_esm_model.h5", "r") as handle:
        assert handle.attrs["format_version"] == 4
        group = handle[native_h5.GROUPS[4]]
        assert group["esm/encoder/layer/*/attention/self/query/weight"].shape == (2, 32, 32)
        assert "0" not in group["esm/encoder/layer"]
    again = TFEsmForMaskedLM.from_pretrained(str(tmp_path / "stacked"), strict=True)
    for value, reloaded in zip(ours, _outputs(again, input_ids, attention_mask)):
        np.testing.assert_array_equal(value, reloaded)

    # The safetensors export has transformers' per-layer names; transformers loads it and gives its numbers.
    model.save_pretrained(str(tmp_path / "export"), format="safetensors")
    with safetensors.safe_open(str(tmp_path / "export" / "model.safetensors"), framework="np") as handle:
        names = set(handle.keys())
    assert {"esm.encoder.layer.0.attention.self.query.weight", "esm.encoder.layer.1.output.dense.weight"} <= names
    assert not any("*" in name for name in names)
    exported = transformers.EsmForMaskedLM.from_pretrained(str(tmp_path / "export"),
                                                           attn_implementation="eager").eval()
    with torch.no_grad():
        logits = exported(input_ids=torch.from_numpy(input_ids).long(),
                          attention_mask=torch.from_numpy(attention_mask)).logits.numpy()
    assert_close(logits[keep], theirs[0][keep], ATOL, "exported logits, transformers")
