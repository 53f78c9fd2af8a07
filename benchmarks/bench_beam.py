"""`tf-esm embed --runner DirectRunner` with two worker processes vs the one-process `tf-esm embed`, same records.

Input: `--num-records` short random proteins (lengths uniform in [30, 100]) in two FASTA shards; the one-process
command reads the same records from one file (the shards concatenated). Model: a random-weight checkpoint of the
esm2_t6_8M shape (bench_embed.py's `build_checkpoint`). Each command runs as a whole process (interpreter, imports,
model loading, embedding, writing): the one-process command writes the means to HDF5, the Beam pipeline Parquet
shards. Reported: wall seconds, records/s and residues/s of each, their ratio, and two checks: every record exactly
once in the Beam output, and the max abs difference of the means between the two.

    flock /tmp/bench.lock python benchmarks/bench_beam.py --num-records 3000
    flock /tmp/bench.lock python benchmarks/bench_beam.py --num-records 3000 --write benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_embed import RESIDUES, build_checkpoint  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_shards(directory, num_records):
    rng = np.random.default_rng(0)
    letters = np.array(list(RESIDUES))
    records = [(f"p{i:06d}", "".join(rng.choice(letters, int(rng.integers(30, 101))))) for i in range(num_records)]
    half = num_records // 2
    os.makedirs(os.path.join(directory, "shards"))
    for index, part in enumerate((records[:half], records[half:])):
        with open(os.path.join(directory, "shards", f"shard{index}.fasta"), "w") as handle:
            handle.writelines(f">{name}\n{sequence}\n" for name, sequence in part)
    with open(os.path.join(directory, "all.fasta"), "w") as handle:
        handle.writelines(f">{name}\n{sequence}\n" for name, sequence in records)
    return dict(records)


def timed(command, env):
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr[-4000:]}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-records", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--write", metavar="RESULTS_MD", help="append the table to this Markdown file")
    args = parser.parse_args()

    import h5py
    import pyarrow.parquet as pq

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
               TF_CPP_MIN_LOG_LEVEL="3")
    tf_esm = [sys.executable, "-m", "tf_esm.cli"]
    with tempfile.TemporaryDirectory() as work:
        checkpoint = os.path.join(work, "esm2_t6")
        build_checkpoint("t6", checkpoint)
        records = write_shards(work, args.num_records)
        residues = sum(len(sequence) for sequence in records.values())

        one = timed([*tf_esm, "embed", checkpoint, os.path.join(work, "all.fasta"), os.path.join(work, "one.h5"),
                     "-q"], env)
        beam_command = [*tf_esm, "embed", checkpoint, os.path.join(work, "shards", "*.fasta"),
                        os.path.join(work, "beam"), "--runner", "DirectRunner", "-q", "--",
                        f"--direct_num_workers={args.workers}", "--direct_running_mode=multi_processing"]
        beam = timed(beam_command, env)

        table = pq.read_table(os.path.join(work, "beam"))
        ids = table.column("id").to_pylist()
        exactly_once = sorted(ids) == sorted(records) and len(ids) == len(set(ids))
        means = dict(zip(ids, np.asarray(table.column("mean_6").to_pylist(), np.float32)))
        with h5py.File(os.path.join(work, "one.h5"), "r") as handle:
            diff = max(float(np.max(np.abs(handle[name]["mean/6"][()] - means[name]))) for name in records)
        shards = len([name for name in os.listdir(os.path.join(work, "beam")) if name.endswith(".parquet")])

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"### Beam DirectRunner, {args.workers} worker processes, vs one-process `tf-esm embed` (CPU, {cores} cores): "
        f"esm2_t6_8M shape, {args.num_records} records in 2 shards, {residues} residues",
        "",
        f"Command: `flock /tmp/bench.lock python benchmarks/bench_beam.py --num-records {args.num_records}`. Whole "
        "processes (imports, model loading, embedding, writing); one run each; the one-process command reads the "
        "same records from one file and writes HDF5, the pipeline writes Parquet shards.",
        "",
        "| | wall s | records/s | residues/s |",
        "|---|---|---|---|",
        f"| `tf-esm embed` (one process) | {one:.1f} | {args.num_records / one:,.0f} | {residues / one:,.0f} |",
        f"| `tf-esm embed --runner DirectRunner` ({args.workers} workers, multi_processing) | {beam:.1f} | "
        f"{args.num_records / beam:,.0f} | {residues / beam:,.0f} |",
        "",
        f"**Beam / one process: {one / beam:.2f}x** records/s. Every record exactly once in the Beam output: "
        f"{'yes' if exactly_once else 'NO'} ({len(ids)} rows in {shards} shards); max abs diff of the means "
        f"(last layer) between the two: {diff:.1e}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open(args.write, "a") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
