"""The built-in losses of the task models (as the PyTorch reference computes them), in keras.ops."""

from __future__ import annotations

from keras import ops

from tf_esm.configuration import IGNORE_INDEX


def masked_sparse_cross_entropy(labels, logits):
    """Mean cross-entropy over positions whose label is not -100 (torch's CrossEntropyLoss default)."""
    num_classes = ops.shape(logits)[-1]
    logits = ops.reshape(ops.cast(logits, "float32"), (-1, num_classes))
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    keep = ops.not_equal(labels, IGNORE_INDEX)
    safe_labels = ops.where(keep, labels, 0)
    log_probs = ops.log_softmax(logits, axis=-1)
    picked = ops.take_along_axis(log_probs, safe_labels[:, None], axis=-1)[:, 0]
    keep_f = ops.cast(keep, "float32")
    return -ops.sum(picked * keep_f) / ops.maximum(ops.sum(keep_f), 1.0)


def resolve_problem_type(config, labels):
    """HF's rule: one label -> regression; integer labels -> single-label; otherwise multi-label."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    dtype = str(getattr(labels, "dtype", "")).lower()
    if "int" in dtype:
        return "single_label_classification"
    return "multi_label_classification"


def sequence_classification_loss(problem_type, labels, logits, num_labels):
    logits32 = ops.cast(logits, "float32")
    if problem_type == "regression":
        labels = ops.cast(labels, "float32")
        if num_labels == 1:
            return ops.mean(ops.square(ops.reshape(logits32, (-1,)) - ops.reshape(labels, (-1,))))
        return ops.mean(ops.square(logits32 - labels))
    if problem_type == "single_label_classification":
        return masked_sparse_cross_entropy(labels, logits32)
    if problem_type == "multi_label_classification":
        labels = ops.cast(labels, "float32")
        # Numerically stable binary cross-entropy with logits.
        per_element = ops.maximum(logits32, 0) - logits32 * labels + ops.log1p(ops.exp(-ops.abs(logits32)))
        return ops.mean(per_element)
    raise ValueError(f"Unknown problem_type {problem_type!r}.")


def packed_sequence_classification_loss(problem_type, labels, logits, starts, num_labels):
    """`sequence_classification_loss` for packed rows (modeling/packing.py): `logits` (batch, length, num_labels)
    and `labels` (batch, length) or (batch, length, num_labels) are read at the proteins' first tokens `starts`
    (batch, length) only, so each protein counts once, as one row of an unpacked batch does."""
    weight = ops.cast(starts, "float32")
    proteins = ops.maximum(ops.sum(weight), 1.0)
    logits32 = ops.cast(logits, "float32")
    if problem_type == "single_label_classification":
        labels = ops.cast(labels, "int32")
        return masked_sparse_cross_entropy(ops.where(starts, labels, IGNORE_INDEX), logits32)
    labels = ops.cast(labels, "float32")
    if len(labels.shape) == 2:
        labels = labels[..., None]
    if problem_type == "regression":
        per_element = ops.square(logits32 - labels)
    elif problem_type == "multi_label_classification":
        per_element = ops.maximum(logits32, 0) - logits32 * labels + ops.log1p(ops.exp(-ops.abs(logits32)))
    else:
        raise ValueError(f"Unknown problem_type {problem_type!r}.")
    return ops.sum(per_element * weight[..., None]) / (proteins * num_labels)
