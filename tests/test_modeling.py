"""Parity of the Keras encoder family with transformers 5.x (PyTorch) on tiny random-weight checkpoints."""

import copy
import logging
import os

import numpy as np
import pytest
import torch

import tf_esm
from tests._reference import assert_close as _assert_close
from tests._reference import batch_with_padding_and_masks, torch_outputs
from tf_esm import (
    EsmConfig,
    TFEsmForMaskedLM,
    TFEsmForSequenceClassification,
    TFEsmForTokenClassification,
    TFEsmModel,
)
from tf_esm.backend import to_numpy
from tf_esm.io.weights import CheckpointError

# fp32 on CPU: differences come from summation order only (measured max ~1e-6); 2e-5 leaves room for oneDNN.
ATOL = 2e-5


def assert_close(ours, theirs, atol=ATOL, what=""):
    return _assert_close(ours, theirs, atol, what)


@pytest.fixture(scope="module")
def batch():
    return batch_with_padding_and_masks()


@pytest.mark.parametrize("kind", ["rotary", "absolute"])
def test_masked_lm_parity_all_outputs(reference_checkpoints, batch, kind):
    ref = reference_checkpoints(kind)
    input_ids, attention_mask = batch
    expected = torch_outputs(ref.model, input_ids, attention_mask, output_hidden_states=True,
                             output_attentions=True)
    model = TFEsmForMaskedLM.from_pretrained(ref.path)
    out = model(input_ids, attention_mask=attention_mask, output_hidden_states=True, output_attentions=True)
    assert_close(out.logits, expected.logits, what="logits")
    assert len(out.hidden_states) == len(expected.hidden_states) == 3
    for index, (ours, theirs) in enumerate(zip(out.hidden_states, expected.hidden_states)):
        assert_close(ours, theirs, what=f"hidden_states[{index}]")
    assert len(out.attentions) == 2
    for index, (ours, theirs) in enumerate(zip(out.attentions, expected.attentions)):
        assert_close(ours, theirs, what=f"attentions[{index}]")
    # The fused attention path (no probabilities requested) gives the same logits.
    fused = model(input_ids, attention_mask=attention_mask)
    assert_close(fused.logits, expected.logits, what="fused logits")
    assert fused.hidden_states is None and fused.attentions is None


def test_token_dropout_counts_only_real_tokens(reference_checkpoints):
    """<mask> in a padded row: the rescaling uses the attention-mask length (transformers >= 4.46 / 5.x)."""
    ref = reference_checkpoints("rotary")
    input_ids, attention_mask = batch_with_padding_and_masks(lengths=(14, 3), mask_positions=((1, 1), (1, 2)))
    expected = torch_outputs(ref.model, input_ids, attention_mask)
    model = TFEsmForMaskedLM.from_pretrained(ref.path)
    out = model(input_ids, attention_mask=attention_mask)
    assert_close(out.logits, expected.logits, what="logits")
    # Without an attention mask the ratio is counted over the full (padded) length, as in the reference.
    expected_nomask = torch_outputs(ref.model, input_ids[:1])
    assert_close(model(input_ids[:1]).logits, expected_nomask.logits, what="logits without mask")


def test_masked_lm_loss_parity(reference_checkpoints, batch):
    ref = reference_checkpoints("rotary")
    input_ids, attention_mask = batch
    labels = np.full_like(input_ids, -100)
    labels[0, 3], labels[1, 2], labels[1, 5], labels[2, 1] = 5, 7, 9, 11
    expected = torch_outputs(ref.model, input_ids, attention_mask, labels=torch.as_tensor(labels).long())
    out = TFEsmForMaskedLM.from_pretrained(ref.path)(input_ids, attention_mask=attention_mask, labels=labels)
    assert_close(out.loss, expected.loss, what="loss")


@pytest.mark.parametrize("kind", ["rotary", "absolute"])
def test_base_model_pooler_and_hidden_states(reference_checkpoints, batch, kind):
    ref = reference_checkpoints(kind, "EsmModel")
    input_ids, attention_mask = batch
    expected = torch_outputs(ref.model, input_ids, attention_mask, output_hidden_states=True)
    model = TFEsmModel.from_pretrained(ref.path)
    out = model(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    assert_close(out.last_hidden_state, expected.last_hidden_state, what="last_hidden_state")
    assert_close(out.pooler_output, expected.pooler_output, what="pooler_output")
    for index, (ours, theirs) in enumerate(zip(out.hidden_states, expected.hidden_states)):
        assert_close(ours, theirs, what=f"hidden_states[{index}]")
    # Attribute, key and index access to the same tensors.
    assert out["last_hidden_state"] is out.last_hidden_state
    assert out[0] is out.last_hidden_state


@pytest.mark.parametrize("kind", ["rotary", "absolute"])
def test_contacts_parity(reference_checkpoints, batch, kind):
    ref = reference_checkpoints(kind)
    input_ids, attention_mask = batch
    with torch.no_grad():
        expected = ref.model.predict_contacts(torch.as_tensor(input_ids).long(), torch.as_tensor(attention_mask))
    model = TFEsmForMaskedLM.from_pretrained(ref.path)
    assert_close(model.predict_contacts(input_ids, attention_mask), expected, what="contacts (MLM)")
    base = TFEsmModel.from_pretrained(ref.path)
    assert_close(base.predict_contacts(input_ids, attention_mask), expected, what="contacts (base)")


@pytest.mark.parametrize("problem_type,num_labels", [
    ("single_label_classification", 3), ("multi_label_classification", 3), ("regression", 1), ("regression", 2),
])
def test_sequence_classification_parity(reference_checkpoints, batch, problem_type, num_labels):
    ref = reference_checkpoints("rotary", "EsmForSequenceClassification", num_labels=num_labels,
                                problem_type=problem_type)
    input_ids, attention_mask = batch
    rng = np.random.default_rng(3)
    if problem_type == "single_label_classification":
        labels = rng.integers(0, num_labels, size=(3,))
        torch_labels = torch.as_tensor(labels).long()
    elif problem_type == "multi_label_classification":
        labels = rng.integers(0, 2, size=(3, num_labels)).astype(np.float32)
        torch_labels = torch.as_tensor(labels)
    else:
        labels = rng.normal(size=(3, num_labels)).astype(np.float32)
        torch_labels = torch.as_tensor(labels)
    expected = torch_outputs(ref.model, input_ids, attention_mask, labels=torch_labels)
    model = TFEsmForSequenceClassification.from_pretrained(ref.path)
    out = model(input_ids, attention_mask=attention_mask, labels=labels)
    assert_close(out.logits, expected.logits, what="logits")
    assert_close(out.loss, expected.loss, what="loss")


def test_problem_type_inferred_like_transformers(reference_checkpoints, batch):
    ref = reference_checkpoints("rotary", "EsmForSequenceClassification", num_labels=3)
    input_ids, attention_mask = batch
    model = TFEsmForSequenceClassification.from_pretrained(ref.path)
    assert model.config.problem_type is None
    int_labels = np.array([0, 2, 1])
    assert ref.model.config.problem_type is None  # torch_outputs leaves the shared reference model as it was
    expected = torch_outputs(ref.model, input_ids, attention_mask, labels=torch.as_tensor(int_labels))
    assert ref.model.config.problem_type is None
    assert_close(model(input_ids, attention_mask=attention_mask, labels=int_labels).loss, expected.loss,
                 what="inferred single-label loss")


def test_token_classification_parity_ignores_minus_100(reference_checkpoints, batch):
    ref = reference_checkpoints("absolute", "EsmForTokenClassification", num_labels=4)
    input_ids, attention_mask = batch
    labels = np.random.default_rng(4).integers(0, 4, size=input_ids.shape)
    labels[attention_mask == 0] = -100
    labels[:, 0] = -100
    expected = torch_outputs(ref.model, input_ids, attention_mask, labels=torch.as_tensor(labels).long())
    out = TFEsmForTokenClassification.from_pretrained(ref.path)(input_ids, attention_mask=attention_mask,
                                                                labels=labels)
    assert_close(out.logits, expected.logits, what="logits")
    assert_close(out.loss, expected.loss, what="loss")


def test_inputs_embeds_and_position_ids(reference_checkpoints, batch):
    ref = reference_checkpoints("absolute", "EsmModel")
    input_ids, attention_mask = batch
    embeds = ref.model.embeddings.word_embeddings(torch.as_tensor(input_ids).long()).detach()
    # inputs_embeds replaces the word-embedding lookup only (transformers 4.x and its TF port); 5.x instead skips
    # the whole embedding module, so run that module on the reference side first to get the 4.x semantics.
    with torch.no_grad():
        embedded = ref.model.embeddings(inputs_embeds=embeds, attention_mask=torch.as_tensor(attention_mask))
        expected = ref.model(inputs_embeds=embedded, attention_mask=torch.as_tensor(attention_mask)).last_hidden_state
    model = TFEsmModel.from_pretrained(ref.path)
    out = model(inputs_embeds=embeds.numpy(), attention_mask=attention_mask)
    assert_close(out.last_hidden_state, expected, what="inputs_embeds")
    position_ids = np.tile(np.arange(2, 2 + input_ids.shape[1]), (3, 1))
    expected = ref.model(torch.as_tensor(input_ids).long(), attention_mask=torch.as_tensor(attention_mask),
                         position_ids=torch.as_tensor(position_ids)).last_hidden_state
    out = model(input_ids, attention_mask=attention_mask, position_ids=position_ids)
    assert_close(out.last_hidden_state, expected, what="position_ids")


def head_masked_eager_attention(head_mask, layers):
    """transformers 4.x's head_mask semantics for 5.x's eager attention: the attention probabilities of layer `i`
    are multiplied by `head_mask[i]` (one factor per head) before they weight the values (5.x has no head_mask).
    `layers` maps each reference `EsmSelfAttention` module to its layer index."""
    factors = torch.as_tensor(head_mask, dtype=torch.float32)

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        scores = torch.matmul(query, key.transpose(2, 3)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
        if attention_mask is not None:
            scores = scores + attention_mask
        probabilities = torch.softmax(scores, dim=-1) * factors[layers[module]][None, :, None, None]
        return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), probabilities

    return attention


@pytest.mark.parametrize("kind", ["rotary", "absolute"])
def test_head_mask_matches_the_reference_with_masked_heads(reference_checkpoints, batch, monkeypatch, kind):
    """head_mask multiplies attention probabilities per layer and head (transformers 4.x; 5.x ignores it): checked
    against the reference model with its eager attention doing the same."""
    from transformers.models.esm import modeling_esm

    ref = reference_checkpoints(kind, "EsmModel")
    assert ref.model.config._attn_implementation == "eager"
    input_ids, attention_mask = batch
    model = TFEsmModel.from_pretrained(ref.path)
    layers = {layer.attention.self: index for index, layer in enumerate(ref.model.encoder.layer)}
    unmasked = torch_outputs(ref.model, input_ids, attention_mask, output_attentions=True)
    head_mask = np.ones((2, 4), dtype=np.float32)
    head_mask[0, 1] = 0.0  # head 1 of layer 0 off
    head_mask[1, 2] = 0.5  # head 2 of layer 1 halved
    per_head = np.asarray([1.0, 0.25, 1.0, 0.0], np.float32)  # (heads,): the same for every layer
    for mask, what in ((head_mask, "(layers, heads)"), (per_head, "(heads,)")):
        with monkeypatch.context() as patch:
            patch.setattr(modeling_esm, "eager_attention_forward",
                          head_masked_eager_attention(np.broadcast_to(mask, (2, 4)), layers))
            expected = torch_outputs(ref.model, input_ids, attention_mask, output_attentions=True)
        assert np.max(np.abs(expected.last_hidden_state.numpy() - to_numpy(unmasked.last_hidden_state))) > 1e-2
        out = model(input_ids, attention_mask=attention_mask, head_mask=mask, output_attentions=True)
        assert_close(out.last_hidden_state, expected.last_hidden_state, what=f"last_hidden_state, {what}")
        for index, (ours, theirs) in enumerate(zip(out.attentions, expected.attentions)):
            assert_close(ours, theirs, what=f"attentions[{index}], {what}")
        assert_close(model(input_ids, attention_mask=attention_mask, head_mask=mask).last_hidden_state,
                     expected.last_hidden_state, what=f"last_hidden_state without attentions, {what}")
    # The patched reference with an all-ones mask is the reference itself.
    with monkeypatch.context() as patch:
        patch.setattr(modeling_esm, "eager_attention_forward", head_masked_eager_attention(np.ones((2, 4)), layers))
        ones = torch_outputs(ref.model, input_ids, attention_mask)
    assert_close(ones.last_hidden_state, unmasked.last_hidden_state, atol=1e-6, what="all-ones patched reference")


def test_dict_inputs_like_tokenizer_output(reference_checkpoints, batch):
    ref = reference_checkpoints("rotary")
    input_ids, attention_mask = batch
    model = TFEsmForMaskedLM.from_pretrained(ref.path)
    a = to_numpy(model({"input_ids": input_ids, "attention_mask": attention_mask}).logits)
    b = to_numpy(model(input_ids, attention_mask=attention_mask).logits)
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------ loading and saving

def test_bin_and_sharded_checkpoints(reference_checkpoints, batch, tmp_path):
    ref = reference_checkpoints("rotary")
    input_ids, attention_mask = batch
    expected = torch_outputs(ref.model, input_ids, attention_mask).logits
    # transformers 5.x always writes safetensors; write the legacy pytorch_model.bin layout by hand.
    os.makedirs(tmp_path / "bin")
    torch.save(ref.model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    ref.config.save_pretrained(str(tmp_path / "bin"))
    out = TFEsmForMaskedLM.from_pretrained(tmp_path / "bin")(input_ids, attention_mask=attention_mask)
    assert_close(out.logits, expected, what=".bin logits")
    ref.model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    out = TFEsmForMaskedLM.from_pretrained(tmp_path / "sharded")(input_ids, attention_mask=attention_mask)
    assert_close(out.logits, expected, what="sharded logits")


def test_sharded_bin_checkpoint(reference_checkpoints, batch, tmp_path):
    """Sharded .bin (pytorch_model-0000i-of-0000n.bin + pytorch_model.bin.index.json), as transformers 4.x wrote
    them; 5.x writes safetensors only, so huggingface_hub's writer (the one 4.x used) writes the shards here."""
    import transformers
    from huggingface_hub import save_torch_state_dict

    ref = reference_checkpoints("absolute")
    input_ids, attention_mask = batch
    expected = torch_outputs(ref.model, input_ids, attention_mask).logits
    directory = tmp_path / "sharded_bin"
    directory.mkdir()
    save_torch_state_dict(ref.model.state_dict(), str(directory), max_shard_size="20KB", safe_serialization=False)
    ref.config.save_pretrained(str(directory))
    assert "pytorch_model.bin.index.json" in os.listdir(directory)
    assert not any(name.endswith(".safetensors") for name in os.listdir(directory))
    shards = [name for name in os.listdir(directory) if name.startswith("pytorch_model-")]
    assert len(shards) > 2
    # transformers reads the same files back to the same model (so the layout is the reference's).
    reread = transformers.EsmForMaskedLM.from_pretrained(str(directory), attn_implementation="eager").eval()
    assert_close(torch_outputs(reread, input_ids, attention_mask).logits, expected, atol=0.0,
                 what="transformers, sharded .bin logits")
    out = TFEsmForMaskedLM.from_pretrained(directory, strict=True)(input_ids, attention_mask=attention_mask)
    assert_close(out.logits, expected, what="sharded .bin logits")


def test_transformers4_layout_per_layer_inv_freq_and_layer_norm_names(reference_checkpoints, batch, tmp_path):
    """4.x files name layer norms weight/bias, store inv_freq per layer (fp16-rounded) and the tied decoder."""
    from safetensors.torch import load_file, save_file

    ref = reference_checkpoints("rotary")
    state = load_file(os.path.join(ref.path, "model.safetensors"))
    converted = {}
    for name, value in state.items():
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
        if "layer.*." in name:
            for layer in range(2):
                # fp16-rounded like the released ESM-2 checkpoints; we must use it as stored.
                converted[name.replace("*", str(layer))] = value.half().float()
            continue
        converted[name] = value
    converted["lm_head.decoder.weight"] = converted["esm.embeddings.word_embeddings.weight"].clone()
    os.makedirs(tmp_path / "v4")
    save_file(converted, str(tmp_path / "v4" / "model.safetensors"), metadata={"format": "pt"})
    ref.config.save_pretrained(str(tmp_path / "v4"))
    model = TFEsmForMaskedLM.from_pretrained(tmp_path / "v4", strict=True)
    inv_freq = model.esm.rotary_embeddings.inv_freq.numpy()
    np.testing.assert_array_equal(inv_freq, state["esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq"]
                                  .half().float().numpy())
    # Same inv_freq in the reference -> same logits (on a copy: the session's reference model is shared).
    reference = copy.deepcopy(ref.model)
    with torch.no_grad():
        reference.esm.rotary_embeddings.inv_freq.copy_(torch.as_tensor(inv_freq))
    input_ids, attention_mask = batch
    expected = torch_outputs(reference, input_ids, attention_mask).logits
    assert_close(model(input_ids, attention_mask=attention_mask).logits, expected, what="fp16 inv_freq logits")


@pytest.mark.parametrize("fmt", ["h5", "safetensors"])
def test_save_load_round_trip_bit_exact(reference_checkpoints, batch, tmp_path, fmt):
    ref = reference_checkpoints("absolute", "EsmForSequenceClassification", num_labels=3)
    model = TFEsmForSequenceClassification.from_pretrained(ref.path)
    model.save_pretrained(tmp_path / "saved", format=fmt)
    assert (tmp_path / "saved" / "vocab.txt").exists()
    reloaded = TFEsmForSequenceClassification.from_pretrained(tmp_path / "saved", strict=True)
    for a, b in zip(model.weights, reloaded.weights):
        assert a.path.split("/", 1)[1] == b.path.split("/", 1)[1]
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    input_ids, attention_mask = batch
    np.testing.assert_array_equal(to_numpy(model(input_ids, attention_mask=attention_mask).logits),
                                  to_numpy(reloaded(input_ids, attention_mask=attention_mask).logits))
    assert reloaded.config == model.config


def test_our_safetensors_loads_in_transformers(reference_checkpoints, batch, tmp_path):
    import transformers

    ref = reference_checkpoints("rotary")
    TFEsmForMaskedLM.from_pretrained(ref.path).save_pretrained(tmp_path / "out", format="safetensors")
    back, info = transformers.EsmForMaskedLM.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    back.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    input_ids, attention_mask = batch
    np.testing.assert_allclose(torch_outputs(back, input_ids, attention_mask).logits.numpy(),
                               torch_outputs(ref.model, input_ids, attention_mask).logits.numpy(), atol=ATOL)


def test_task_model_from_base_checkpoint_warns_new_weights(reference_checkpoints, caplog):
    ref = reference_checkpoints("rotary", "EsmModel")
    with caplog.at_level(logging.WARNING, logger="tf_esm"):
        model = TFEsmForSequenceClassification.from_pretrained(ref.path, num_labels=5)
    assert "newly initialised" in caplog.text and "classifier.out_proj.weight" in caplog.text
    assert model.classifier.out_proj.kernel.shape == (32, 5)
    # The backbone weights are the checkpoint's.
    np.testing.assert_array_equal(model.esm.embeddings.word_embeddings.embeddings.numpy(),
                                  ref.model.embeddings.word_embeddings.weight.detach().numpy())


def test_base_model_from_task_checkpoint_warns_unused(reference_checkpoints, caplog):
    ref = reference_checkpoints("rotary")
    with caplog.at_level(logging.WARNING, logger="tf_esm"):
        TFEsmModel.from_pretrained(ref.path)
    assert "were not used" in caplog.text and "lm_head.dense.weight" in caplog.text
    assert "lost" not in caplog.text  # leaving the masked-LM head behind is how fine-tuning starts


@pytest.mark.parametrize("model_class", [TFEsmModel, TFEsmForMaskedLM])
def test_dropping_a_trained_task_head_is_a_plain_warning_naming_the_class(reference_checkpoints, caplog,
                                                                          model_class):
    """A classifier checkpoint loaded into a base or masked-LM model loses its trained head: the warning says so,
    names the head and the class that keeps it, and never calls it expected."""
    ref = reference_checkpoints("rotary", "EsmForSequenceClassification", num_labels=3)
    with caplog.at_level(logging.WARNING, logger="tf_esm"):
        model_class.from_pretrained(ref.path)
    warnings = [record for record in caplog.records if "classifier" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING, caplog.text
    message = warnings[0].getMessage()
    assert "trained classifier" in message and "trained weights are lost" in message, message
    assert "classifier.out_proj.weight" in message and "expected" not in message, message
    assert "load it with TFEsmForSequenceClassification" in message, message


def test_mis_shaped_tensor_is_named(reference_checkpoints, tmp_path):
    ref = reference_checkpoints("rotary")
    config = EsmConfig.from_pretrained(ref.path)
    config.intermediate_size = 48
    config.save_pretrained(tmp_path)
    os.symlink(os.path.join(ref.path, "model.safetensors"), tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"esm\.encoder\.layer\.\{i\}\.intermediate\.dense\.(weight|bias)'.*needs \(48"):
        TFEsmForMaskedLM.from_pretrained(tmp_path)


def test_strict_missing_is_error(reference_checkpoints):
    ref = reference_checkpoints("rotary", "EsmModel")
    with pytest.raises(CheckpointError, match="missing tensors"):
        TFEsmForMaskedLM.from_pretrained(ref.path, strict=True)


def test_offline_hub_id_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="pass its local directory"):
        TFEsmModel.from_pretrained("facebook/esm2_t6_8M_UR50D_does_not_exist_locally")


def test_missing_directory_error():
    with pytest.raises(OSError, match="does not exist locally"):
        TFEsmModel.from_pretrained("./no/such/model/dir")


def test_keras_get_config_round_trip(reference_checkpoints):
    ref = reference_checkpoints("absolute")
    model = TFEsmForMaskedLM.from_pretrained(ref.path)
    clone = TFEsmForMaskedLM.from_config(model.get_config())
    clone.build()
    assert clone.config == model.config
    assert [w.path.split("/", 1)[1] for w in clone.weights] == [w.path.split("/", 1)[1] for w in model.weights]
    layer = model.esm
    layer_clone = type(layer).from_config(layer.get_config())
    assert layer_clone.config == layer.config


def test_absolute_positions_limit_is_enforced(reference_checkpoints):
    ref = reference_checkpoints("absolute", "EsmModel")
    model = TFEsmModel.from_pretrained(ref.path)
    too_long = np.full((1, 63), 5, dtype=np.int32)  # table of 64 holds positions 2..63 -> at most 62 tokens
    with pytest.raises(ValueError, match="at most 62 tokens"):
        model(too_long)
    model(too_long[:, :62])


def test_public_names_exported():
    for name in ("EsmConfig", "TFEsmModel", "TFEsmForMaskedLM", "TFEsmForSequenceClassification",
                 "TFEsmForTokenClassification", "TFEsmMainLayer"):
        assert hasattr(tf_esm, name)
