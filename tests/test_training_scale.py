"""Training at scale: gradient checkpointing, packed rows (`sequence_id`) and the attention implementations, on
every backend; packed `tf.data` datasets under TensorFlow.

Expected values come from the plain (unpacked, uncheckpointed, "sdpa") path or from the PyTorch reference, never
from the code under test.
"""

import functools

import keras
import numpy as np
import pytest
import torch

from tests._reference import as_numpy, assert_close, batch_with_padding_and_masks
from tf_esm import TFEsmForMaskedLM, TFEsmForSequenceClassification, TFEsmForTokenClassification
from tf_esm.modeling.encoder import TFEsmLayer
from tf_esm.modeling.packing import positions_in_protein, protein_rows, protein_starts, same_protein
from tf_esm.pipelines.packing import pack_rows, packed_arrays

BACKEND = keras.backend.backend()
LENGTHS = (12, 7, 3)
# Rows 0 and 1 hold one and two <mask> tokens: their token-dropout ratios differ, so a row-level ratio in a packed
# row would be wrong for both.
MASKS = ((0, 3), (1, 2), (1, 5))


# ------------------------------------------------------------------------------------------------------ helpers
def unpacked_batch():
    input_ids, attention_mask = batch_with_padding_and_masks(lengths=LENGTHS, mask_positions=MASKS)
    return input_ids, attention_mask


def pack(input_ids, attention_mask, rows=((0, 2), (1,)), width=None, values=None, fill=-100):
    """The proteins of an unpacked batch packed into rows (each a tuple of batch rows), right-padded; with
    `values` (per-token, the unpacked layout), those values packed the same way (`fill` for padding)."""
    lengths = attention_mask.sum(axis=1)
    width = width or int(max(sum(lengths[row] for row in members) for members in rows)) + 2
    packed_ids = np.ones((len(rows), width), np.int32)
    sequence_id = np.full((len(rows), width), -1, np.int32)
    packed_values = None
    if values is not None:
        packed_values = np.full((len(rows), width) + values.shape[2:], fill, values.dtype)
    for out, members in enumerate(rows):
        start = 0
        for number, row in enumerate(members):
            n = int(lengths[row])
            packed_ids[out, start:start + n] = input_ids[row, :n]
            sequence_id[out, start:start + n] = number
            if values is not None:
                packed_values[out, start:start + n] = values[row, :n]
            start += n
    return packed_ids, sequence_id, packed_values


def unpack(packed, sequence_id, rows=((0, 2), (1,))):
    """{unpacked batch row: its tokens' values} from a packed array."""
    out = {}
    for index, members in enumerate(rows):
        for number, row in enumerate(members):
            out[row] = packed[index][sequence_id[index] == number]
    return out


def gradients(model, inputs, labels):
    """(loss, [gradient of each trainable variable]) of the model's built-in loss in a training call."""
    variables = model.trainable_variables
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = model(inputs, labels=labels, training=True).loss
        return float(loss), [np.asarray(g) for g in tape.gradient(loss, variables)]
    if BACKEND == "jax":
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss_of(trainable):
            outputs, _ = model.stateless_call(trainable, non_trainable, inputs, labels=labels, training=True)
            return outputs.loss

        loss, grads = jax.value_and_grad(loss_of)([v.value for v in variables])
        return float(loss), [np.asarray(g) for g in grads]
    loss = model(inputs, labels=labels, training=True).loss
    grads = torch.autograd.grad(loss, [v.value for v in variables])
    return float(loss.detach()), [g.detach().numpy() for g in grads]


def assert_gradients_equal(plain, checkpointed, rtol=1e-6):
    (loss, grads), (loss_c, grads_c) = plain, checkpointed
    assert abs(loss - loss_c) <= rtol * abs(loss)
    assert len(grads) == len(grads_c)
    for g, g_c in zip(grads, grads_c):
        scale = float(np.max(np.abs(g)))
        assert scale > 0  # every weight matters in these checkpoints
        assert float(np.max(np.abs(g - g_c))) <= rtol * scale


@pytest.fixture(scope="module")
def mlm_checkpoint(reference_checkpoints):
    return reference_checkpoints("rotary", "EsmForMaskedLM")


def mlm_labels(input_ids):
    rng = np.random.default_rng(3)
    return np.where((rng.random(input_ids.shape) < 0.4) & (input_ids > 3), input_ids, -100).astype(np.int32)


# ---------------------------------------------------------------------------------------- gradient checkpointing
@pytest.fixture
def counted_layer_calls(monkeypatch):
    """How many times the encoder layer's `call` ran (its Python code: once per layer in a forward pass, again
    per layer when TensorFlow or PyTorch recompute it in the backward pass)."""
    calls = []
    original = TFEsmLayer.call

    @functools.wraps(original)
    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TFEsmLayer, "call", counting)
    return calls


def test_checkpointed_gradients_equal_plain_ones(mlm_checkpoint, counted_layer_calls):
    model = TFEsmForMaskedLM.from_pretrained(mlm_checkpoint.path)
    input_ids, attention_mask = unpacked_batch()
    inputs, labels = {"input_ids": input_ids, "attention_mask": attention_mask}, mlm_labels(input_ids)
    assert not model.is_gradient_checkpointing
    plain = gradients(model, inputs, labels)
    plain_calls = len(counted_layer_calls)
    assert plain_calls == 2  # two layers, one forward pass

    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and model.config.gradient_checkpointing
    del counted_layer_calls[:]
    checkpointed = gradients(model, inputs, labels)
    assert_gradients_equal(plain, checkpointed)
    if BACKEND == "jax":  # JAX recomputes from the traced program; the checkpoints are in it
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]
        program = jax.make_jaxpr(jax.grad(lambda trainable: model.stateless_call(
            trainable, non_trainable, inputs, labels=labels, training=True)[0].loss))(
            [v.value for v in model.trainable_variables])
        assert str(program).count("checkpoint[") + str(program).count("remat") >= 2
    else:  # each layer ran again in the backward pass
        assert len(counted_layer_calls) == 2 * plain_calls

    model.gradient_checkpointing_disable()
    assert_gradients_equal(plain, gradients(model, inputs, labels))


def test_checkpointed_dropout_draws_the_masks_of_the_plain_path(mlm_checkpoint):
    """With dropout on, a recomputed layer draws the masks its forward pass drew, and the seed advances once."""
    model = TFEsmForMaskedLM.from_pretrained(mlm_checkpoint.path, hidden_dropout_prob=0.2,
                                             attention_probs_dropout_prob=0.2)
    input_ids, attention_mask = unpacked_batch()
    inputs, labels = {"input_ids": input_ids, "attention_mask": attention_mask}, mlm_labels(input_ids)
    seeds = [v for v in model.non_trainable_variables if "seed" in v.path]
    assert seeds
    start = [as_numpy(v.value).copy() for v in seeds]
    # Keras' PyTorch dropout with an unseeded layer draws from torch's global generator (its seed state stays),
    # which torch's checkpoint saves and restores for the recomputation.
    torch.manual_seed(7)
    plain = gradients(model, inputs, labels)
    if BACKEND == "tensorflow":
        after_plain = [as_numpy(v.value).copy() for v in seeds]
        assert any((a != b).any() for a, b in zip(start, after_plain))
    else:  # a stateless call (JAX) leaves the variables as they were; PyTorch's draws do not use them
        after_plain = start
    for variable, value in zip(seeds, start):
        variable.assign(value)
    torch.manual_seed(7)
    model.gradient_checkpointing_enable()
    checkpointed = gradients(model, inputs, labels)
    assert_gradients_equal(plain, checkpointed)
    for variable, value in zip(seeds, after_plain):
        np.testing.assert_array_equal(as_numpy(variable.value), value)


def test_gradient_checkpointing_is_a_saved_setting(mlm_checkpoint, tmp_path):
    model = TFEsmForMaskedLM.from_pretrained(mlm_checkpoint.path, gradient_checkpointing=True)
    assert model.esm.encoder.layer.gradient_checkpointing
    model.save_pretrained(tmp_path / "saved")
    again = TFEsmForMaskedLM.from_pretrained(tmp_path / "saved")
    assert again.config.gradient_checkpointing and again.esm.encoder.layer.gradient_checkpointing
    assert not TFEsmForMaskedLM.from_pretrained(mlm_checkpoint.path).esm.encoder.layer.gradient_checkpointing
    with pytest.raises(ValueError, match="not supported"):
        again.gradient_checkpointing_enable({"preserve_rng_state": False})
    again.gradient_checkpointing_enable({"use_reentrant": False})  # transformers' usual call


def test_fit_steps_with_checkpointing_match_plain_steps(mlm_checkpoint):
    """Two optimiser steps of Keras' compiled training step: the same losses with and without checkpointing."""
    input_ids, attention_mask = unpacked_batch()
    inputs, labels = {"input_ids": input_ids, "attention_mask": attention_mask}, mlm_labels(input_ids)
    losses = []
    for checkpointing in (False, True):
        model = TFEsmForMaskedLM.from_pretrained(mlm_checkpoint.path)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        losses.append([float(model.train_on_batch(inputs, labels)) for _ in range(3)])
    assert losses[0][0] != losses[0][2]  # the steps changed the weights
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


# --------------------------------------------------------------------------------------------------- packed rows
def test_packing_helpers():
    sequence_id = np.array([[0, 0, 0, 1, 1, -1], [0, 0, 1, 2, 2, 2]], np.int32)
    np.testing.assert_array_equal(as_numpy(positions_in_protein(same_protein(sequence_id))),
                                  [[0, 1, 2, 0, 1, 0], [0, 1, 0, 0, 1, 2]])
    starts = as_numpy(protein_starts(sequence_id))
    np.testing.assert_array_equal(starts, [[1, 0, 0, 1, 0, 0], [1, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(protein_rows(np.arange(12).reshape(2, 6), sequence_id), [0, 3, 6, 8, 9])


@pytest.mark.parametrize("kind", ["rotary", "absolute"])
def test_packed_proteins_get_their_reference_logits_and_loss(reference_checkpoints, kind):
    """Each packed protein's logits equal PyTorch's for it alone (positions restart, attention stays within the
    protein, token dropout uses the protein's own <mask> ratio), and the masked-LM loss equals the unpacked one."""
    reference = reference_checkpoints(kind, "EsmForMaskedLM")
    model = TFEsmForMaskedLM.from_pretrained(reference.path)
    input_ids, attention_mask = unpacked_batch()
    labels = mlm_labels(input_ids)
    with torch.no_grad():
        expected = reference.model(input_ids=torch.as_tensor(input_ids, dtype=torch.long),
                                   attention_mask=torch.as_tensor(attention_mask)).logits.numpy()
    unpacked = model({"input_ids": input_ids, "attention_mask": attention_mask}, labels=labels)
    packed_ids, sequence_id, packed_labels = pack(input_ids, attention_mask, values=labels)
    packed = model({"input_ids": packed_ids, "sequence_id": sequence_id}, labels=packed_labels)
    logits = unpack(as_numpy(packed.logits), sequence_id)
    for row, length in enumerate(LENGTHS):
        assert_close(logits[row], expected[row, :length + 2], 1e-5, f"packed {kind} logits vs reference, row {row}")
    assert_close(packed.loss, as_numpy(unpacked.loss), 1e-5, f"packed {kind} masked-LM loss")


def test_packed_token_dropout_is_per_protein(mlm_checkpoint):
    """A row-level ratio (all of a packed row's <mask> tokens over all its tokens) moves the logits: the packed
    row must not use it."""
    model = TFEsmForMaskedLM.from_pretrained(mlm_checkpoint.path)
    input_ids, attention_mask = unpacked_batch()
    packed_ids, sequence_id, _ = pack(input_ids, attention_mask, rows=((0, 1),))
    embeddings = model.esm.embeddings
    per_protein = as_numpy(embeddings(input_ids=packed_ids, attention_mask=(sequence_id >= 0).astype("int32"),
                                      sequence_id=sequence_id))
    per_row = as_numpy(embeddings(input_ids=packed_ids, attention_mask=(sequence_id >= 0).astype("int32")))
    alone = [as_numpy(embeddings(input_ids=input_ids[row:row + 1, :LENGTHS[row] + 2]))[0] for row in (0, 1)]
    assert_close(per_protein[0][sequence_id[0] == 0], alone[0], 1e-6, "packed token dropout, protein 0")
    assert_close(per_protein[0][sequence_id[0] == 1], alone[1], 1e-6, "packed token dropout, protein 1")
    assert np.abs(per_row[0][sequence_id[0] == 0] - alone[0]).max() > 1e-3


def test_packed_token_classification_loss_and_logits(reference_checkpoints):
    model = TFEsmForTokenClassification.from_pretrained(
        reference_checkpoints("rotary", "EsmForTokenClassification", num_labels=3).path)
    input_ids, attention_mask = unpacked_batch()
    labels = np.where(attention_mask > 0, np.random.default_rng(4).integers(0, 3, input_ids.shape), -100)
    labels = labels.astype(np.int32)
    unpacked = model({"input_ids": input_ids, "attention_mask": attention_mask}, labels=labels)
    packed_ids, sequence_id, packed_labels = pack(input_ids, attention_mask, values=labels)
    packed = model({"input_ids": packed_ids, "sequence_id": sequence_id}, labels=packed_labels)
    logits = unpack(as_numpy(packed.logits), sequence_id)
    for row, length in enumerate(LENGTHS):
        assert_close(logits[row], as_numpy(unpacked.logits)[row, :length + 2], 1e-5, f"packed token logits {row}")
    assert_close(packed.loss, as_numpy(unpacked.loss), 1e-5, "packed token-classification loss")


@pytest.mark.parametrize("problem", ["single_label", "multi_label", "regression"])
def test_packed_sequence_classification_gives_one_row_per_protein(reference_checkpoints, problem):
    num_labels = {"single_label": 2, "multi_label": 3, "regression": 1}[problem]
    problem_type = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
                    "regression": "regression"}[problem]  # set: the reference would set it on its first call
    reference = reference_checkpoints("rotary", "EsmForSequenceClassification", num_labels=num_labels,
                                      problem_type=problem_type)
    model = TFEsmForSequenceClassification.from_pretrained(reference.path)
    input_ids, attention_mask = unpacked_batch()
    rng = np.random.default_rng(5)
    if problem == "single_label":
        labels = rng.integers(0, 2, len(LENGTHS)).astype(np.int32)
    elif problem == "multi_label":
        labels = rng.integers(0, 2, (len(LENGTHS), 3)).astype(np.float32)
    else:
        labels = rng.normal(size=len(LENGTHS)).astype(np.float32)
    with torch.no_grad():
        expected = reference.model(input_ids=torch.as_tensor(input_ids, dtype=torch.long),
                                   attention_mask=torch.as_tensor(attention_mask),
                                   labels=torch.as_tensor(labels.astype(np.int64) if problem == "single_label"
                                                          else labels)).loss.item()
    unpacked = model({"input_ids": input_ids, "attention_mask": attention_mask}, labels=labels)
    # Labels in the packed layout: each protein's at its first token.
    rows = ((0, 2), (1,))
    per_token = np.zeros(input_ids.shape + labels.shape[1:], labels.dtype)
    per_token[:, 0] = labels
    fill = -100 if problem == "single_label" else 0
    packed_ids, sequence_id, packed_labels = pack(input_ids, attention_mask, rows=rows, values=per_token, fill=fill)
    if problem == "single_label":  # the other tokens of a protein hold -100 too
        packed_labels = np.where(as_numpy(protein_starts(sequence_id)), packed_labels, -100).astype(np.int32)
    packed = model({"input_ids": packed_ids, "sequence_id": sequence_id}, labels=packed_labels)
    per_protein = protein_rows(as_numpy(packed.logits), sequence_id)  # in packed order: rows 0, 2, 1
    assert_close(per_protein, as_numpy(unpacked.logits)[[0, 2, 1]], 1e-5, f"packed {problem} logits")
    starts = as_numpy(protein_starts(sequence_id))
    assert not np.abs(as_numpy(packed.logits)[~starts]).any()
    assert_close(packed.loss, np.float32(expected), 1e-5, f"packed {problem} loss vs reference")
    # A compiled Keras loss reads the proteins' first tokens only too.
    if problem == "single_label":
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        packed_keras = model.test_on_batch({"input_ids": packed_ids, "sequence_id": sequence_id}, packed_labels)
        assert_close(np.float32(packed_keras), np.float32(expected), 1e-5, "packed single-label Keras loss")


def test_packed_fit_matches_unpacked_fit(mlm_checkpoint):
    """Keras' compiled training step on packed rows: the losses of three steps equal the unpacked batch's."""
    input_ids, attention_mask = unpacked_batch()
    labels = mlm_labels(input_ids)
    packed_ids, sequence_id, packed_labels = pack(input_ids, attention_mask, values=labels)
    losses = []
    for inputs, targets in (({"input_ids": input_ids, "attention_mask": attention_mask}, labels),
                            ({"input_ids": packed_ids, "sequence_id": sequence_id}, packed_labels)):
        model = TFEsmForMaskedLM.from_pretrained(mlm_checkpoint.path)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        losses.append([float(model.train_on_batch(inputs, targets)) for _ in range(3)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_sequence_id_refuses_decoder_inputs(mlm_checkpoint):
    model = TFEsmForMaskedLM.from_pretrained(mlm_checkpoint.path)
    input_ids, attention_mask = unpacked_batch()
    with pytest.raises(ValueError, match="sequence_id"):
        model(input_ids, sequence_id=np.zeros_like(input_ids), position_ids=np.zeros_like(input_ids))


# ----------------------------------------------------------------------------------------------------- attention
@pytest.mark.parametrize("packed", [False, True])
def test_sdpa_and_eager_attention_agree(mlm_checkpoint, packed):
    eager = TFEsmForMaskedLM.from_pretrained(mlm_checkpoint.path, attn_implementation="eager")
    sdpa = TFEsmForMaskedLM.from_pretrained(mlm_checkpoint.path)
    assert sdpa.config.attn_implementation is None and eager.config.attn_implementation == "eager"
    input_ids, attention_mask = unpacked_batch()
    labels = mlm_labels(input_ids)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if packed:
        packed_ids, sequence_id, labels = pack(input_ids, attention_mask, values=labels)
        inputs = {"input_ids": packed_ids, "sequence_id": sequence_id}
    fused_calls = []
    fused = keras.ops.dot_product_attention

    def counting(*args, **kwargs):
        fused_calls.append(1)
        return fused(*args, **kwargs)

    for training in (False, True):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(keras.ops, "dot_product_attention", counting)
            before = len(fused_calls)
            theirs = eager(inputs, training=training)
            assert len(fused_calls) == before  # "eager": the explicit path only
            ours = sdpa(inputs, training=training)
        assert_close(ours.logits, as_numpy(theirs.logits), 1e-5, f"sdpa vs eager logits (training={training})")
    assert fused_calls  # "sdpa": the fused kernel (at least when training; TF CPU inference attends in blocks)
    with torch.no_grad():
        expected = mlm_checkpoint.model(input_ids=torch.as_tensor(input_ids, dtype=torch.long),
                                        attention_mask=torch.as_tensor(attention_mask)).logits.numpy()
    eager_logits = as_numpy(eager({"input_ids": input_ids, "attention_mask": attention_mask}).logits)
    assert_close(eager_logits, expected, 1e-5, "eager attention vs reference")
    assert_gradients_equal(gradients(sdpa, inputs, labels), gradients(eager, inputs, labels), rtol=1e-5)


def test_training_attention_recomputes_its_probabilities(mlm_checkpoint, monkeypatch):
    """A training call's fused attention keeps no (batch, heads, L, L) probabilities for the backward pass where
    the backend's kernel would (TensorFlow, JAX's XLA kernel): it recomputes them, with the gradients of the path
    that keeps them; inside a checkpointed layer it is not recomputed a second time."""
    from tf_esm.modeling import attention

    model = TFEsmForMaskedLM.from_pretrained(mlm_checkpoint.path)
    input_ids, attention_mask = unpacked_batch()
    inputs, labels = {"input_ids": input_ids, "attention_mask": attention_mask}, mlm_labels(input_ids)
    recomputes = attention.recomputes_probabilities("float32")
    assert recomputes == (BACKEND in ("tensorflow", "jax"))  # CPU here
    calls = []
    fused = keras.ops.dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(keras.ops, "dot_product_attention", counting)
    recomputed = gradients(model, inputs, labels)
    if BACKEND == "tensorflow":  # two layers: forward, then again in the backward pass
        assert len(calls) == 4
    elif BACKEND == "jax":
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]
        program = str(jax.make_jaxpr(jax.grad(lambda trainable: model.stateless_call(
            trainable, non_trainable, inputs, labels=labels, training=True)[0].loss))(
            [v.value for v in model.trainable_variables]))
        assert program.count("checkpoint[") + program.count("remat") >= 1
    model.gradient_checkpointing_enable()
    del calls[:]
    checkpointed = gradients(model, inputs, labels)
    if BACKEND == "tensorflow":  # the layer's recomputation only
        assert len(calls) == 4
    model.gradient_checkpointing_disable()
    monkeypatch.setattr(attention, "recomputes_probabilities", lambda dtype: False)
    kept = gradients(model, inputs, labels)
    assert_gradients_equal(kept, recomputed)
    assert_gradients_equal(kept, checkpointed)


def test_attn_implementation_is_checked():
    from tf_esm import EsmConfig

    with pytest.raises(ValueError, match="attn_implementation 'flash'"):
        EsmConfig(vocab_size=33, attn_implementation="flash")
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        EsmConfig(vocab_size=33, gradient_checkpointing="yes")


# ---------------------------------------------------------------------------------------- packed tf.data datasets
def test_pack_rows_fills_rows_best_fit():
    lengths = [9, 7, 5, 3, 3, 2, 1]
    rows = pack_rows(lengths, 10)
    assert sorted(index for row in rows for index in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 3  # 30 tokens in rows of 10: no room wasted
    with pytest.raises(ValueError, match="longer than pack_length=8"):
        pack_rows(lengths, 8)


def test_packed_arrays_lay_out_labels_by_task():
    tokens = [[0, 5, 6, 2], [0, 7, 2], [0, 8, 9, 10, 2]]
    features, labels = packed_arrays(tokens, [1, 0, 1], pack_length=8)
    assert features["input_ids"].shape == (2, 8)
    np.testing.assert_array_equal(features["sequence_id"], [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, -1, -1, -1, -1]])
    np.testing.assert_array_equal(features["input_ids"][0], [0, 8, 9, 10, 2, 0, 7, 2])
    np.testing.assert_array_equal(labels, [[1, -100, -100, -100, -100, 0, -100, -100], [1] + [-100] * 7])
    _, token_labels = packed_arrays(tokens, [[3, 4], [5], [6, 7, 8]], task="token", pack_length=8)
    np.testing.assert_array_equal(token_labels[0], [-100, 6, 7, 8, -100, -100, 5, -100])
    _, multi = packed_arrays(tokens, [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], pack_length=8)
    assert multi.shape == (2, 8, 2) and multi[0, 5].tolist() == [0.0, 1.0] and not multi[0, 1].any()


@pytest.mark.tensorflow_only("tf.data pipelines")
@pytest.mark.parametrize("task", ["sequence", "token", "mlm"])
def test_packed_dataset_gives_each_protein_its_unpacked_loss(reference_checkpoints, esm_tokenizer, task):
    from tf_esm.pipelines.data import MlmMasking, sequences_dataset

    sequences = ["MKTAYIAKQRQ", "GVLSE", "MKVLAAGIW", "ACDEFGHIKLMN", "WY", "PPGQ"]
    rng = np.random.default_rng(6)
    if task == "sequence":
        model_class, checkpoint = TFEsmForSequenceClassification, ("EsmForSequenceClassification", 2)
        labels = [int(v) for v in rng.integers(0, 2, len(sequences))]
    elif task == "token":
        model_class, checkpoint = TFEsmForTokenClassification, ("EsmForTokenClassification", 3)
        labels = [[int(v) for v in rng.integers(0, 3, len(s))] for s in sequences]
    else:
        model_class, checkpoint, labels = TFEsmForMaskedLM, ("EsmForMaskedLM", None), None
    options = {"num_labels": checkpoint[1]} if checkpoint[1] else {}
    model = model_class.from_pretrained(reference_checkpoints("rotary", checkpoint[0], **options).path)
    common = dict(labels=labels, task="token" if task == "token" else None, tokenizer=esm_tokenizer)
    masking = (lambda: MlmMasking(esm_tokenizer, probability=1.0, mask_fraction=1.0, random_fraction=0.0)
               if task == "mlm" else None)
    unpacked = list(sequences_dataset(sequences, batch_size=len(sequences), bucket_boundaries=None,
                                      mlm=masking(), **common))
    packed = list(sequences_dataset(sequences, batch_size=2, pack_length=16, mlm=masking(), **common))
    features, targets = packed[0]
    assert set(features) == {"input_ids", "attention_mask", "sequence_id"}
    assert features["input_ids"].shape[1] == 16
    padding = sum(int(np.sum(f["sequence_id"].numpy() < 0)) for f, _ in packed)
    real = sum(len(s) + 2 for s in sequences)
    assert real + padding == 16 * sum(int(f["input_ids"].shape[0]) for f, _ in packed)
    assert padding < 16  # 55 tokens in four rows of 16

    (unpacked_features, unpacked_targets), = unpacked
    expected = model(dict(unpacked_features), labels=unpacked_targets).loss
    total, proteins = 0.0, 0
    for features, targets in packed:  # per batch: weight each batch's mean by what it averages over
        outputs = model(dict(features), labels=targets)
        count = (int(np.sum(as_numpy(protein_starts(features["sequence_id"])))) if task == "sequence"
                 else int(np.sum(targets.numpy() != -100)))
        total += float(outputs.loss) * count
        proteins += count
    assert_close(np.float32(total / proteins), as_numpy(expected), 1e-5, f"packed dataset {task} loss")
