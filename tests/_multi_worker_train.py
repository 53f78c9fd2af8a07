"""One training process for tests/test_multi_worker.py: fits a tiny sequence classifier and saves its final weights.

Run as a script: `python _multi_worker_train.py CHECKPOINT OUT.npz multi|single`. With `multi`, TF_CONFIG (set by
the test) names this worker and its peer on 127.0.0.1 and the model trains under MultiWorkerMirroredStrategy; with
`single` it trains in this one process on the same global batches, the reference the workers must match.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

GLOBAL_BATCH = 8
EPOCHS = 4


def dataset():
    """32 deterministic rows, K-rich (class 1) vs E-rich (class 0): <cls> + 10 residues + <eos>, global batches of 8.

    The order is fixed (no shuffle): the DATA auto-shard policy below hands each worker its half of every global
    batch by position, which is only the same split on both workers when both see the same order."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 32).astype(np.int32)
    ids = rng.integers(4, 24, size=(32, 12)).astype(np.int32)
    ids = np.where(rng.random(ids.shape) < 0.6, np.where(labels[:, None] == 1, 15, 9), ids).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    data = tf.data.Dataset.from_tensor_slices(({"input_ids": ids, "attention_mask": np.ones_like(ids)}, labels))
    options = tf.data.Options()
    # Explicit rather than the AUTO default, which falls back to DATA for in-memory data with a warning.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.batch(GLOBAL_BATCH).with_options(options)


def main(checkpoint, output, mode):
    if mode == "multi":
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.RING))
    elif mode == "single":
        strategy = tf.distribute.get_strategy()
    else:
        raise SystemExit(f"mode must be 'multi' or 'single', not {mode!r}")
    import keras

    from tf_esm import TFEsmForSequenceClassification

    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = TFEsmForSequenceClassification.from_pretrained(checkpoint)
        model.compile(optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"], jit_compile=False)
    history = model.fit(dataset(), epochs=EPOCHS, verbose=0).history
    np.savez(output, *[np.asarray(weight.numpy()) for weight in model.weights])
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "history": history,
                      "task": json.loads(os.environ.get("TF_CONFIG", "{}")).get("task")}))


if __name__ == "__main__":
    main(*sys.argv[1:])
