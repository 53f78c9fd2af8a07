"""TensorFlow-only: a `tf.data` option for the models' Keras loops (`fit`, `evaluate`, `predict`), applied by
the dataset builders of `tf_esm.pipelines.data` and by users who choose it; the models never change a dataset they are given.
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
    bound ESM training, so nothing is lost by turning autotuning off. `tf_esm.pipelines.data` applies it to the datasets it
    builds; pass your own datasets through it if their epochs stall at the end (an opt-in: `fit` leaves the
    options of the datasets it is given as they are).
    """
    if not isinstance(dataset, tf.data.Dataset) or dataset.options().autotune.enabled is not None:
        return dataset
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
