"""TensorFlow-only: `tf.data` inputs of the models' Keras loops (`fit`, `evaluate`, `predict`).

Kept apart from the backend-neutral models, as `attention_tf.py` is; the models import it only when a
`tf.data.Dataset` is passed to them.
"""

from __future__ import annotations

from tf_esm.backend import require_tensorflow

tf = require_tensorflow("tf_esm.modeling.dataset_tf (tf.data inputs of fit)")


def without_autotune_stall(dataset):
    """`dataset` with tf.data's autotuning off, unless its options already say either way.

    With autotuning on, deleting an iterator that was read from inside long-running steps blocks for many
    seconds with the CPU idle (TensorFlow 2.21; the autotune thread sleeps out its current period; measured in
    benchmarks/RESULTS.md, "Training steps"). Keras makes a new iterator every epoch (and for each validation pass), so CPU
    fine-tuning with multi-second steps stalls at every epoch boundary. Model steps, not the input pipeline,
    bound ESM training, so nothing is lost by turning autotuning off. The `fit`/`evaluate`/`predict` of tf_esm
    models apply this to `tf.data.Dataset` inputs (including `validation_data`).
    """
    if not isinstance(dataset, tf.data.Dataset) or dataset.options().autotune.enabled is not None:
        return dataset
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
