"""`fit` under `tf.distribute.MultiWorkerMirroredStrategy`: two worker processes on 127.0.0.1 (TF_CONFIG, collective
ops over gRPC on CPU) train a tiny classifier on halves of each global batch; both must end with the same weights,
and with the weights one process gets training on the whole global batches (tests/_multi_worker_train.py).

Keras 3.15 cannot run `fit` with two workers out of the box (keras-team/keras#20329, tensorflow/tensorflow#72388);
tf_esm's task models work around it (tf_esm/modeling/distribute_tf.py), and this test fails without that.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

TIMEOUT_S = 240
WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_multi_worker_train.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_loopback_ports(count):
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def run_processes(commands, timeout):
    """Start every (argv, env) at once and wait for all; kill them all on a timeout or when one fails."""
    processes, logs = [], []
    try:
        for argv, env in commands:
            log = open(env["TF_ESM_TEST_LOG"], "w+")
            logs.append(log)
            processes.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log, text=True))
        deadline = time.monotonic() + timeout
        while any(process.poll() is None for process in processes):
            failed = [process for process in processes if process.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        outputs = []
        for process, log in zip(processes, logs):
            if process.poll() is None:
                outputs.append(None)
                continue
            log.seek(0)
            outputs.append((process.returncode, process.stdout.read(), log.read()))
        return outputs
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()
        for log in logs:
            log.close()


def test_two_workers_train_like_one_process_on_the_global_batch(reference_checkpoints, tmp_path):
    checkpoint = reference_checkpoints("rotary", "EsmForSequenceClassification", num_labels=2).path
    ports = free_loopback_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    base_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
                    TF_CPP_MIN_LOG_LEVEL="3")
    base_env.pop("TF_CONFIG", None)
    commands = []
    for index in range(2):
        env = dict(base_env, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   TF_ESM_TEST_LOG=str(tmp_path / f"worker{index}.log"))
        commands.append(([sys.executable, WORKER_SCRIPT, checkpoint, str(tmp_path / f"worker{index}.npz"), "multi"],
                         env))
    commands.append(([sys.executable, WORKER_SCRIPT, checkpoint, str(tmp_path / "single.npz"), "single"],
                     dict(base_env, TF_ESM_TEST_LOG=str(tmp_path / "single.log"))))

    outputs = run_processes(commands, TIMEOUT_S)
    names = ["worker 0", "worker 1", "one process"]
    for name, output in zip(names, outputs):
        if output is None:
            pytest.fail(f"{name} did not finish within {TIMEOUT_S} s (or another process failed first)")
        returncode, _, stderr = output
        assert returncode == 0, f"{name} failed:\n{stderr[-3000:]}"
    reports = [json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in outputs]
    assert [report["replicas"] for report in reports] == [2, 2, 1]
    assert [report["task"] for report in reports[:2]] == [{"type": "worker", "index": 0},
                                                          {"type": "worker", "index": 1}]

    weights = [np.load(tmp_path / f"{name}.npz") for name in ("worker0", "worker1", "single")]
    worker0, worker1, single = ([w[key] for key in w.files] for w in weights)
    assert len(worker0) == len(single) > 0
    # Both workers hold the same (all-reduced) weights, bit for bit on this machine.
    for a, b in zip(worker0, worker1):
        np.testing.assert_array_equal(a, b)
    # Two workers on half batches = one process on the global batch, to fp32 rounding (measured: 1.2e-7 max).
    moved = 0.0
    initial = _initial_weights(checkpoint)
    for a, b, start in zip(worker0, single, initial):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
        moved = max(moved, float(np.max(np.abs(b - start))))
    assert moved > 1e-2  # training changed the weights: the comparison is not between two untouched models
    # The logged history is the one-process history too.
    for name in ("loss", "accuracy"):
        assert reports[0]["history"][name] == pytest.approx(reports[2]["history"][name], rel=1e-5, abs=1e-6)
    assert reports[0]["history"]["loss"][-1] < 0.5 * reports[0]["history"]["loss"][0]


def _initial_weights(checkpoint):
    from tf_esm import TFEsmForSequenceClassification

    return [np.asarray(weight.numpy()) for weight in TFEsmForSequenceClassification.from_pretrained(checkpoint).weights]
