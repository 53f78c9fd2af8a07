"""Where tf_esm's embedding time goes: TensorFlow profiler trace of `embed_sequences`, summed per op type.

    python benchmarks/profile_embed.py --shape t12 --num-seqs 24
    python benchmarks/profile_embed.py --shape t30 --num-seqs 8 --dtype bfloat16

Prints each op type's share of the op time on the CPU threads (oneDNN matmuls, softmax, erf, ...) and the
matmul FLOP rate the trace implies. Uses the workload and random-weight checkpoints of `bench_embed.py`.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_embed  # noqa: E402


def op_times(logdir):
    """{op type: total seconds} from the host plane of the profiler's xplane files."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals = collections.Counter()
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as handle:
            space.ParseFromString(handle.read())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            names = {key: meta.name for key, meta in plane.event_metadata.items()}
            for line in plane.lines:
                if "tf_Compute" not in line.name and "tf_inter" not in line.name and "TF" not in line.name:
                    continue
                for event in line.events:
                    name = names.get(event.metadata_id, "?")
                    if ":" not in name:
                        continue
                    totals[name.rsplit(":", 1)[1]] += event.duration_ps * 1e-12
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="t12", choices=list(bench_embed.SHAPES))
    parser.add_argument("--num-seqs", type=int, default=24)
    parser.add_argument("--toks-per-batch", type=int, default=4096)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="the model's precision (`from_pretrained(dtype=...)`)")
    args = parser.parse_args()

    import tensorflow as tf

    from tf_esm import TFEsmModel, inference

    inference.configure_cpu_threads(intra_op=None, inter_op=1)  # one step at a time on all cores
    sequences = bench_embed.workload(args.num_seqs)
    with tempfile.TemporaryDirectory() as scratch:
        bench_embed.build_checkpoint(args.shape, scratch)
        model = TFEsmModel.from_pretrained(scratch, precision=args.dtype)
        inference.embed_sequences(model, sequences, max_tokens_per_batch=args.toks_per_batch)  # trace + warm up
        logdir = os.path.join(scratch, "profile")
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        inference.embed_sequences(model, sequences, max_tokens_per_batch=args.toks_per_batch)
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        totals = op_times(logdir)
    busy = sum(totals.values())
    layers, hidden, _, ffn = bench_embed.SHAPES[args.shape]
    flops = bench_embed.matmul_flops([len(s) for s in sequences], layers, hidden, ffn)
    print(f"wall {wall:.2f} s, op time summed over threads {busy:.2f} s, "
          f"{flops / wall / 1e9:.1f} real-residue matmul GFLOP/s")
    for name, seconds in totals.most_common(25):
        print(f"{name:40s} {seconds:8.3f} s {seconds / busy:6.1%}")


if __name__ == "__main__":
    main()
