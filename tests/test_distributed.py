"""`fit` under `tf.distribute.MirroredStrategy` on two logical CPU devices.

Logical devices must be configured before TensorFlow initialises its devices, so the training runs in a fresh
Python process. With the built-in loss and plain SGD, two replicas of half a batch each must produce exactly the
update one device makes on the whole batch (Keras sums replica gradients, so each replica's loss is scaled by 1/2).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from tf_esm import TFEsmForSequenceClassification

    # K-rich (class 1) vs E-rich (class 0) sequences: <cls> + 10 residues + <eos>.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 32).astype(np.int32)
    ids = rng.integers(4, 24, size=(32, 12)).astype(np.int32)
    ids = np.where(rng.random(ids.shape) < 0.6, np.where(labels[:, None] == 1, 15, 9), ids).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    data = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(8)  # global batch: 4 rows per replica

    def train(strategy, loss=None):
        with strategy.scope():
            model = TFEsmForSequenceClassification.from_pretrained(sys.argv[1])
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss, metrics=["accuracy"], jit_compile=False)
        history = model.fit(data, epochs=8, verbose=0).history
        return model, history

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    distributed, distributed_history = train(mirrored)
    single, single_history = train(tf.distribute.get_strategy())
    with mirrored.scope():  # a compiled Keras loss, evaluated across the replicas
        distributed.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    print(json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "devices": [device.name for device in tf.config.list_logical_devices("CPU")],
        "mirrored_variables": all(isinstance(v.value, tf.distribute.DistributedValues) for v in distributed.weights),
        "distributed_history": distributed_history,
        "single_history": single_history,
        "max_weight_difference": max(float(np.max(np.abs(a.numpy() - b.numpy())))
                                     for a, b in zip(distributed.weights, single.weights)),
        "keras_loss_evaluation": distributed.evaluate(data, verbose=0, return_dict=True)["loss"],
        "builtin_loss": float(single(inputs, labels=labels).loss),
    }))
''')


# The encoder's layer traced once (modeling/layers_tf.py) under MirroredStrategy: `evaluate` runs it (inference),
# `fit` trains through the unrolled layers and validates through it.
TRACED_ONCE_SCRIPT = textwrap.dedent('''
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from tf_esm import TFEsmForSequenceClassification
    from tf_esm.modeling import layers_tf

    traced_under_strategy = []
    trace_once = layers_tf._traced_once

    def counting_trace_once(*args, **kwargs):
        traced_under_strategy.append(tf.distribute.has_strategy())
        return trace_once(*args, **kwargs)

    layers_tf._traced_once = counting_trace_once

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 16).astype(np.int32)
    ids = rng.integers(4, 24, size=(16, 10)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    data = tf.data.Dataset.from_tensor_slices(({"input_ids": ids}, labels)).batch(8)

    def run(strategy, trace_once):
        layers_tf.TRACE_ONCE = trace_once
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = TFEsmForSequenceClassification.from_pretrained(sys.argv[1])
            model.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
        evaluated = model.evaluate(data, verbose=0, return_dict=True)["loss"]
        history = model.fit(data, validation_data=data, epochs=2, verbose=0).history
        return {"evaluate": evaluated, "loss": history["loss"], "val_loss": history["val_loss"]}

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {"mirrored_traced": run(mirrored, True)}
    results["traced_under_strategy"] = any(traced_under_strategy)
    results["mirrored_unrolled"] = run(mirrored, False)
    results["single_traced"] = run(tf.distribute.get_strategy(), True)
    print(json.dumps(results))
''')


def _run_script(text, checkpoint, tmp_path):
    """Run `text` in a fresh Python process (logical devices are set before TensorFlow starts) on `checkpoint`;
    its last line of output, as JSON."""
    script = tmp_path / "mirrored.py"
    script.write_text(text)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    completed = subprocess.run([sys.executable, str(script), checkpoint.path], capture_output=True, text=True,
                               env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_mirrored_strategy_on_two_logical_cpus_matches_one_device(reference_checkpoints, tmp_path):
    checkpoint = reference_checkpoints("rotary", "EsmForSequenceClassification", num_labels=2)
    result = _run_script(SCRIPT, checkpoint, tmp_path)

    assert result["replicas"] == 2 and len(result["devices"]) == 2
    assert result["mirrored_variables"]
    history = result["distributed_history"]
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] > 0.9  # chance: about 0.5
    # Two replicas on half batches = one device on the whole batch.
    for name in ("loss", "accuracy"):
        assert history[name] == pytest.approx(result["single_history"][name], rel=1e-4, abs=1e-5)
    assert result["max_weight_difference"] < 1e-4
    # Evaluating with a compiled Keras loss across replicas gives the full-batch built-in loss.
    assert result["keras_loss_evaluation"] == pytest.approx(result["builtin_loss"], rel=1e-4)


def test_layers_traced_once_under_mirrored_strategy_match_unrolled_and_one_device(reference_checkpoints, tmp_path):
    """Each replica's traced layer must run with that layer's weights (a distributed variable passed to a traced
    function is captured by it, not fed: every layer then ran with the first layer's weights)."""
    checkpoint = reference_checkpoints("rotary", "EsmForSequenceClassification", num_labels=2)
    result = _run_script(TRACED_ONCE_SCRIPT, checkpoint, tmp_path)

    assert result["traced_under_strategy"]
    traced, unrolled, single = result["mirrored_traced"], result["mirrored_unrolled"], result["single_traced"]
    for name in ("evaluate", "loss", "val_loss"):
        assert traced[name] == pytest.approx(unrolled[name], abs=1e-6), name
        assert traced[name] == pytest.approx(single[name], abs=1e-6), name
