"""TensorFlow-only: attention over blocks of query rows, for inference on a CPU.

The numbers are those of one softmax over the whole score tensor (each query row's softmax sees every key), but only
one block of rows' scores exists at a time. At ESM's longest inputs the whole score tensor of every sequence in
flight dominated peak memory when embedding on CPU; a block of about 1M scores also stays in cache, so the attention
itself got faster on CPU (`python benchmarks/bench_attention.py`; figures in benchmarks/RESULTS.md).
"""

from __future__ import annotations

from tf_esm.backend import require_tensorflow

tf = require_tensorflow("tf_esm.modeling.attention_tf (blocked CPU attention)")

# Scores (batch x heads x rows x keys) per block; the block has at least _MIN_BLOCK_ROWS query rows.
SCORE_BLOCK_ELEMENTS = 1 << 20
_MIN_BLOCK_ROWS = 64


def _bias_in_keys(query, key, bias):
    """Fold a bias that is the same for every query row (a key padding mask) into the score product: each query
    gets one more feature, 1, and each key its bias, so `query @ key^T` is the biased score. Adding the bias to the
    scores is a whole pass over them (about a fifth of the attention time measured on CPU: benchmarks/RESULTS.md,
    the whole-process `tf-esm embed` section); one more feature in the product costs next to nothing. The unmasked
    scores are unchanged (q.k + 1 * 0); a masked one may round to -inf in float16, which the softmax takes as 0."""
    shape = tf.shape(key)
    bias = tf.cast(bias, key.dtype)  # (batch or 1, heads or 1, 1, key_len)
    key_bias = tf.broadcast_to(tf.transpose(bias, (0, 1, 3, 2)), tf.stack([shape[0], shape[1], shape[2], 1]))
    query_shape = tf.shape(query)
    ones = tf.ones(tf.stack([query_shape[0], query_shape[1], query_shape[2], 1]), query.dtype)
    return tf.concat([query, ones], axis=-1), tf.concat([key, key_bias], axis=-1)


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
        The context, (batch, query_len, heads, head_dim), in `value`'s dtype. The softmax computes in float32.
    """
    block_elements = block_elements or SCORE_BLOCK_ELEMENTS
    shape = tf.shape(query)
    batch, heads, query_len = shape[0], shape[1], shape[2]
    key_len = tf.shape(key)[2]
    most_rows = tf.maximum(_MIN_BLOCK_ROWS, block_elements // tf.maximum(batch * heads * key_len, 1))
    num_blocks = (query_len + most_rows - 1) // most_rows
    rows = (query_len + num_blocks - 1) // tf.maximum(num_blocks, 1)  # even blocks: the last one pads < num_blocks
    if bias is not None:
        bias = tf.convert_to_tensor(bias)
    per_row_bias = bias is not None and (bias.shape.rank != 4 or bias.shape[2] != 1)
    if bias is not None and not per_row_bias:
        query, key = _bias_in_keys(query, key, bias)
        bias = None
    if bias is not None:
        bias = tf.cast(bias, tf.float32)

    def attend(query_rows, keys_t, bias_rows):
        scores = tf.matmul(query_rows, keys_t)
        if bias_rows is None and scores.dtype == tf.bfloat16:
            # oneDNN's bfloat16 softmax computes in float32 and rounds its output once: the numbers of the cast
            # path below, without two casting passes over the scores (~1.4x faster attention on CPU).
            return tf.matmul(tf.nn.softmax(scores, axis=-1), value)
        scores = tf.cast(scores, tf.float32)
        if bias_rows is not None:
            scores = scores + bias_rows
        probs = tf.cast(tf.nn.softmax(scores, axis=-1), value.dtype)
        return tf.matmul(probs, value)  # (batch, heads, rows, head_dim)

    def one_block():  # short inputs: no loop, no padding
        return tf.transpose(attend(query, tf.transpose(key, (0, 1, 3, 2)), bias), (0, 2, 1, 3))

    def blocks():
        # Whole blocks only (under XLA a slice past the end would be shifted back, not cut): pad the last block's
        # query rows with zeros and drop their outputs.
        padding = num_blocks * rows - query_len
        padded_query = tf.pad(query, [[0, 0], [0, 0], [0, padding], [0, 0]])
        keys_t = tf.transpose(key, (0, 1, 3, 2))
        row_bias = bias
        if per_row_bias:  # a bias per query row (causal): cut it with the rows
            row_bias = tf.broadcast_to(bias, tf.stack([tf.shape(bias)[0], tf.shape(bias)[1], query_len, key_len]))
            row_bias = tf.pad(row_bias, [[0, 0], [0, 0], [0, padding], [0, 0]])

        def block(index, outputs):
            start = index * rows
            block_bias = row_bias[:, :, start:start + rows] if per_row_bias else row_bias
            context = attend(padded_query[:, :, start:start + rows], keys_t, block_bias)
            return index + 1, outputs.write(index, tf.transpose(context, (2, 0, 1, 3)))

        outputs = tf.TensorArray(value.dtype, size=num_blocks, infer_shape=False)
        # One block at a time: running blocks in parallel would bring the whole score tensor back.
        _, outputs = tf.while_loop(lambda index, _: index < num_blocks, block, (tf.constant(0), outputs),
                                   parallel_iterations=1)
        return tf.transpose(outputs.concat()[:query_len], (1, 0, 2, 3))

    static = [query.shape[0], query.shape[1], query.shape[2], key.shape[2]]
    if None not in static:  # shapes known when tracing (eager calls, fixed-shape traces): no conditional op
        static_batch, static_heads, static_query_len, static_key_len = static
        static_rows = max(_MIN_BLOCK_ROWS, block_elements // max(static_batch * static_heads * static_key_len, 1))
        return one_block() if static_query_len <= static_rows else blocks()
    return tf.cond(num_blocks <= 1, one_block, blocks)
