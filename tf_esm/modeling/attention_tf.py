"""TensorFlow-only: attention over blocks of query rows, for inference on a CPU.

The numbers are those of one softmax over the whole score tensor (each query row's softmax sees every key), but only
one block of rows' scores exists at a time. At ESM's longest inputs (1,024 tokens, 20 heads) the whole score tensor
is 80 MB per sequence, and three of them (scores, masked scores, probabilities) per concurrent batch dominated peak
memory; a block of about 1M scores (4 MB) also stays in cache, which made the attention itself faster on CPU
(1,002 tokens: 33 -> 24 ms single-threaded; measured in benchmarks/RESULTS.md's session).
"""

from __future__ import annotations

import tensorflow as tf

# Scores (batch x heads x rows x keys) per block; the block has at least _MIN_BLOCK_ROWS query rows.
SCORE_BLOCK_ELEMENTS = 1 << 20
_MIN_BLOCK_ROWS = 64


def cpu_only():
    """Whether TensorFlow places work on a CPU (no GPU visible): where blocked attention is used."""
    return not tf.config.list_logical_devices("GPU")


def blocked_attention(query, key, value, bias=None, block_elements=None):
    """Softmax attention computed over blocks of query rows.

    Args:
        query: (batch, heads, query_len, head_dim), already scaled.
        key, value: (batch, heads, key_len, head_dim).
        bias: additive bias broadcastable to (batch, heads, query_len, key_len), or None.
        block_elements: scores per block (default `SCORE_BLOCK_ELEMENTS`).

    Returns:
        The context, (batch, query_len, heads, head_dim), in `value`'s dtype. The softmax runs in float32.
    """
    block_elements = block_elements or SCORE_BLOCK_ELEMENTS
    shape = tf.shape(query)
    batch, heads, query_len = shape[0], shape[1], shape[2]
    key_len = tf.shape(key)[2]
    rows = tf.maximum(_MIN_BLOCK_ROWS, block_elements // tf.maximum(batch * heads * key_len, 1))
    num_blocks = (query_len + rows - 1) // rows
    # Whole blocks only (under XLA a slice past the end would be shifted back, not cut): pad the last block's
    # query rows with zeros and drop their outputs.
    padding = num_blocks * rows - query_len
    query = tf.pad(query, [[0, 0], [0, 0], [0, padding], [0, 0]])
    keys_t = tf.transpose(key, (0, 1, 3, 2))
    per_row_bias = False
    if bias is not None:
        bias = tf.cast(bias, tf.float32)
        if bias.shape.rank != 4 or bias.shape[2] != 1:  # a bias per query row (causal): cut it with the rows
            bias = tf.broadcast_to(bias, tf.stack([tf.shape(bias)[0], tf.shape(bias)[1], query_len, key_len]))
            bias = tf.pad(bias, [[0, 0], [0, 0], [0, padding], [0, 0]])
            per_row_bias = True

    def block(index, outputs):
        start = index * rows
        scores = tf.cast(tf.matmul(query[:, :, start:start + rows], keys_t), tf.float32)
        if bias is not None:
            scores = scores + (bias[:, :, start:start + rows] if per_row_bias else bias)
        probs = tf.cast(tf.nn.softmax(scores, axis=-1), value.dtype)
        context = tf.matmul(probs, value)  # (batch, heads, rows, head_dim)
        return index + 1, outputs.write(index, tf.transpose(context, (2, 0, 1, 3)))

    outputs = tf.TensorArray(value.dtype, size=num_blocks, infer_shape=False)
    # One block at a time: running blocks in parallel would bring the whole score tensor back.
    _, outputs = tf.while_loop(lambda index, _: index < num_blocks, block, (tf.constant(0), outputs),
                               parallel_iterations=1)
    return tf.transpose(outputs.concat()[:query_len], (1, 0, 2, 3))
