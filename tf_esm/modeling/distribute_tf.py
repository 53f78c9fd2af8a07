"""`fit` under `tf.distribute.MultiWorkerMirroredStrategy` with more than one worker (TensorFlow only).

Before its first step, Keras 3's TensorFlow trainer (`_maybe_symbolic_build`) takes the first distributed batch and
averages it across the replicas with `strategy.reduce("MEAN", batch, axis=None)`, only to learn the batch's shapes
and dtypes. `MirroredStrategy` reduces a nested batch leaf by leaf; the collective strategy behind
`MultiWorkerMirroredStrategy` does not (`CollectiveAllReduceExtended._reduce_to` hands the whole nest to the
cross-device ops), so with two or more workers any batch of more than one tensor, an `(x, y)` pair or a dict of
inputs, fails with "Attempt to convert a value ({...PerReplica...}) with an unsupported type"
(keras-team/keras#20329, open; Keras 3.15, TensorFlow 2.21). A single-worker run takes another branch and works.

The reduction is not needed: the MEAN over replicas (axis=None) has the shape and dtype of one replica's batch, which
is all the symbolic build reads. `local_build_batch` returns this worker's first replica's batch instead, without
any collective op.

After every train/test step, the same trainer reduces the step's logs (scalar loss and metric values) with
`strategy.reduce("MEAN", value, axis=0)` when there are several workers (`reduce_per_replica`), which fails on a
scalar: "Invalid reduction dimension 0 for input with 0 dimensions" (tensorflow/tensorflow#72388, closed without a
fix; its workaround is Keras 2). `logs_for_multi_worker_reduce` gives each scalar a length-1 axis, so the reduction
averages the replicas' values, the value a one-worker MirroredStrategy logs (the mean of its replicas' results), and
returns a scalar again. The weights do not depend on either: Keras all-reduces the gradients itself.
"""

from __future__ import annotations

import tensorflow as tf

from tf_esm.keras_compat import in_multi_worker_mode


def is_multi_worker(strategy):
    """Whether `strategy` is a collective (MultiWorkerMirrored) strategy with more than one worker."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return in_multi_worker_mode(strategy)


def local_build_batch(strategy, epoch_iterator):
    """The first batch of `epoch_iterator` (a Keras `TFEpochIterator`) as this worker's first replica sees it: a nest
    of plain tensors with one replica's shapes, for Keras' symbolic build. None when the iterator is empty."""
    for _, _, iterator in epoch_iterator:
        batch = next(iterator)
        return tf.nest.map_structure(
            lambda value: strategy.experimental_local_results(value)[0]
            if isinstance(value, tf.distribute.DistributedValues) else value, batch)
    return None


def logs_for_multi_worker_reduce(logs):
    """A train/test step's logs with every scalar tensor reshaped to shape (1,), for Keras' multi-worker reduction
    of step outputs along axis 0."""
    def with_axis(value):
        if isinstance(value, (tf.Tensor, tf.Variable)) and value.shape.rank == 0:
            return tf.reshape(value, (1,))
        return value

    return tf.nest.map_structure(with_axis, logs)
