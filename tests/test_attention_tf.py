"""Blocked attention (TensorFlow inference on CPU): the numbers of one softmax over all keys, block by block."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from tests._reference import assert_close, batch_with_padding_and_masks, record_parity, torch_outputs
from tf_esm import TFEsmModel
from tf_esm.modeling import attention, attention_tf


def reference_attention(query, key, value, bias=None):
    """float64 NumPy softmax attention; inputs (batch, heads, length, dim), output (batch, length, heads, dim)."""
    query, key, value = (np.asarray(x, np.float64) for x in (query, key, value))
    scores = query @ np.swapaxes(key, -1, -2)
    if bias is not None:
        scores = scores + np.asarray(bias, np.float64)
    scores -= scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    return np.transpose(probs @ value, (0, 2, 1, 3))


def qkv(rng, batch=2, heads=3, query_len=150, key_len=150, dim=8):
    shapes = ((batch, heads, query_len, dim), (batch, heads, key_len, dim), (batch, heads, key_len, dim))
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


def padding_bias(rng, batch, key_len):
    keep = rng.random((batch, 1, 1, key_len)) > 0.3
    keep[..., 0] = True
    return np.where(keep, 0.0, np.finfo(np.float32).min).astype(np.float32)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("bias_kind", ["none", "padding", "causal"])
def test_blocks_give_the_whole_softmax(rng, bias_kind, jit_compile):
    query, key, value = qkv(rng, query_len=149, key_len=149)
    bias = None
    if bias_kind == "padding":
        bias = padding_bias(rng, 2, 149)
    elif bias_kind == "causal":  # one bias row per query: it is cut into blocks with the queries
        bias = np.where(np.tril(np.ones((149, 149), bool)), 0.0, np.finfo(np.float32).min)[None, None]
        bias = bias.astype(np.float32)
    expected = reference_attention(query, key, value, bias)
    # At most 57,600 / (2 x 3 x 149 keys) = 64 rows per block: 3 even blocks of 50 rows, the last with one padding row.
    function = tf.function(
        lambda q, k, v: attention_tf.blocked_attention(q, k, v, bias, block_elements=57_600),
        jit_compile=jit_compile)
    out = function(query, key, value).numpy()
    assert out.shape == expected.shape
    assert_close(out, expected, 5e-6, f"blocked attention, {bias_kind} bias")  # fp32 vs float64


def test_one_block_and_dynamic_shapes_share_one_graph(rng):
    """Under a (None, ...) signature the block count is computed at run time; short inputs take one block."""
    function = tf.function(attention_tf.blocked_attention,
                           input_signature=[tf.TensorSpec((None, 3, None, 8), tf.float32)] * 3)
    for batch, length in ((1, 10), (2, 200), (3, 65)):
        query, key, value = qkv(rng, batch=batch, query_len=length, key_len=length)
        assert_close(function(query, key, value).numpy(), reference_attention(query, key, value), 2e-6,
                     f"{batch} x {length}")
    assert len(function._list_all_concrete_functions_for_serialization()) == 1


def test_static_shapes_choose_one_block_or_the_loop_when_tracing(rng):
    """With shapes known when tracing, no conditional op: one block, or the loop of blocks. (The conditional with
    the loop inside had TensorFlow's graph optimiser log two ERROR lines, "topological sort failed", whenever such
    a function was instantiated: each traced-once layer of an eager ESMFold first call.)"""
    query, key, value = qkv(rng, query_len=149, key_len=149)
    expected = reference_attention(query, key, value)
    for block_elements, loops in ((57_600, True), (10 ** 9, False)):
        attend = functools.partial(attention_tf.blocked_attention, block_elements=block_elements)
        concrete = tf.function(lambda q, k, v: attend(q, k, v)).get_concrete_function(query, key, value)
        types = {operation.type for operation in concrete.graph.get_operations()}
        assert not types & {"If", "StatelessIf"}, types
        assert bool(types & {"While", "StatelessWhile"}) == loops, types
        assert_close(concrete(query, key, value).numpy(), expected, 5e-6, f"static shapes, {block_elements}")


def test_half_precision_inputs_are_as_accurate_as_the_keras_kernel(rng):
    """bfloat16 in and out, softmax in float32, as `keras.ops.dot_product_attention`, which it replaces: against
    the exact attention of the same bfloat16 inputs (float64), no worse than that kernel by more than one bfloat16
    ulp at the outputs' magnitude (|x| < 4: 2**-6), and within four such ulps. (The two kernels' roundings differ
    with the CPU's bfloat16 support: measured on AMD Zen 3 without bfloat16 instructions, ours 0.039 from the exact
    values, Keras' 0.099, 0.084 apart.)"""
    import keras

    query, key, value = (tf.cast(x, tf.bfloat16) for x in qkv(rng))
    bias = tf.cast(padding_bias(rng, 2, 150), tf.bfloat16)
    out = attention_tf.blocked_attention(query, key, value, bias=bias, block_elements=57_600)
    assert out.dtype == tf.bfloat16
    heads_last = [tf.transpose(x, (0, 2, 1, 3)) for x in (query, key, value)]
    expected = keras.ops.dot_product_attention(*heads_last, bias=bias, scale=1.0)
    exact = reference_attention(*(tf.cast(x, tf.float64).numpy() for x in (query, key, value)),
                                bias=tf.cast(bias, tf.float64).numpy())
    ours_error = float(np.max(np.abs(tf.cast(out, tf.float64).numpy() - exact)))
    keras_error = float(np.max(np.abs(tf.cast(expected, tf.float64).numpy() - exact)))
    record_parity("bf16 vs exact", ours_error)
    assert ours_error <= keras_error + 2 ** -6, (ours_error, keras_error)
    assert ours_error <= 2 ** -4, ours_error


@pytest.mark.parametrize("bias_kind", ["none", "padding"])
def test_bfloat16_softmax_gives_the_float32_softmax_rounded(rng, bias_kind):
    """bfloat16 scores go through a bfloat16 softmax (no casting passes): the same numbers as casting the scores to
    float32, a float32 softmax, and rounding the probabilities to bfloat16 (HF's autocast numerics)."""
    query, key, value = (tf.cast(x, tf.bfloat16) for x in qkv(rng, query_len=149, key_len=149))
    bias = tf.cast(padding_bias(rng, 2, 149), tf.bfloat16) if bias_kind == "padding" else None
    out = attention_tf.blocked_attention(query, key, value, bias=bias, block_elements=57_600)
    scores = tf.cast(tf.matmul(query, key, transpose_b=True), tf.float32)
    if bias is not None:
        scores += tf.cast(bias, tf.float32)
    probs = tf.cast(tf.nn.softmax(scores, axis=-1), tf.bfloat16)
    expected = tf.transpose(tf.matmul(probs, value), (0, 2, 1, 3))
    # Measured 0; allowed: one bfloat16 ulp at the outputs' magnitude (|x| < 4).
    assert_close(tf.cast(out, tf.float32).numpy(), tf.cast(expected, tf.float32).numpy(), 2 ** -6,
                 f"bf16 softmax, {bias_kind} bias")


def test_model_with_many_blocks_matches_transformers(reference_checkpoints, monkeypatch):
    """A padded batch through the whole encoder in 3 blocks of 51 query rows per layer: transformers' numbers."""
    assert attention.uses_blocked_attention(), "TensorFlow on a CPU should take the blocked path"
    ref = reference_checkpoints("rotary", "EsmModel")
    input_ids, attention_mask = batch_with_padding_and_masks(lengths=(150, 90, 20))
    expected = torch_outputs(ref.model, input_ids, attention_mask)
    calls = []
    original = attention_tf.blocked_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(attention_tf, "SCORE_BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(attention_tf, "blocked_attention", counting)
    out = TFEsmModel.from_pretrained(ref.path)(input_ids, attention_mask=attention_mask)
    assert len(calls) == ref.config.num_hidden_layers
    assert_close(out.last_hidden_state, expected.last_hidden_state, 2e-5, "encoder, 3 blocks per layer")


def test_training_uses_the_differentiable_kernel(reference_checkpoints, monkeypatch):
    """Blocked attention is for inference; training keeps `keras.ops.dot_product_attention` (gradients)."""
    monkeypatch.setattr(attention_tf, "blocked_attention", lambda *a, **k: pytest.fail("blocked in training"))
    model = TFEsmModel.from_pretrained(reference_checkpoints("rotary", "EsmModel").path)
    input_ids, attention_mask = batch_with_padding_and_masks()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(input_ids, attention_mask=attention_mask, training=True).last_hidden_state)
    # The layers' weights are stacked: `esm/encoder/layer/stacked-attention-self-query-kernel`, ...
    attention_weights = [v for v in model.trainable_variables if "attention" in v.path]
    assert attention_weights
    assert all(g is not None for g in tape.gradient(loss, attention_weights))
