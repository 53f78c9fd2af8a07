"""The embedding stores of `tf-esm embed` at scale: many short records through the real command.

A tiny random ESM-2 (hidden 64, 2 layers, saved with transformers `save_pretrained`) embeds N short records
(8..40 residues, ids `rec0000001`...) with `--include mean`, once per output format. Per format the table gives
records/s over the embedding loop, the file's bytes per record against the raw bytes (float32 values + UTF-8 id),
and the process's resident memory (VmRSS) when 10 %, 40 %, 50 % and 100 % of the records were stored and after the
final write, plus the growth from 40 % to the end (the issue-14 target: <= 10 MB at 50,000 records).

The command runs in a child process (`tf_esm.cli.main`), with the store's `add` wrapped to read /proc/self/status
at those record counts: nothing else is patched.

    flock /tmp/bench.lock python benchmarks/bench_store.py --records 100000
    flock /tmp/bench.lock python benchmarks/bench_store.py --records 50000 --formats h5 --write benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HIDDEN, LAYERS = 64, 2
MARKS = (0.1, 0.4, 0.5, 1.0)
CHILD = r'''
import json, sys, time
from tf_esm.cli import main
from tf_esm.io import embedding_stores, hdf5_store, parquet_store

total, report = int(sys.argv[1]), sys.argv[2]
marks = {max(1, int(round(total * fraction))): fraction for fraction in %r}
state = {"count": 0, "rss": {}, "first": None, "last": None}

def rss_mb():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

def counting(add):
    def add_and_count(self, *args, **kwargs):
        add(self, *args, **kwargs)
        state["count"] += 1
        now = time.perf_counter()
        state["first"] = state["first"] or now
        state["last"] = now
        if state["count"] in marks:
            state["rss"][str(marks[state["count"]])] = rss_mb()
    return add_and_count

for store in (hdf5_store.Hdf5Store, parquet_store.ParquetStore, embedding_stores.NpzStore):
    store.add = counting(store.add)
code = main(sys.argv[3:])
state["rss"]["end"] = rss_mb()
with open(report, "w") as handle:
    json.dump({"code": code, "count": state["count"], "rss": state["rss"],
               "seconds": (state["last"] or 0) - (state["first"] or 0)}, handle)
''' % (MARKS,)


def build_checkpoint(directory):
    import torch
    import transformers

    config = transformers.EsmConfig(
        vocab_size=33, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=1026, position_embedding_type="rotary", token_dropout=True,
        emb_layer_norm_before=False, pad_token_id=1, mask_token_id=32, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    transformers.EsmModel(config, add_pooling_layer=False).eval().save_pretrained(directory)


def write_fasta(path, count):
    rng = np.random.default_rng(0)
    residues = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    ids = []
    with open(path, "w") as handle:
        for index, length in enumerate(rng.integers(8, 41, size=count)):
            record_id = f"rec{index:07d}"
            ids.append(record_id)
            handle.write(f">{record_id}\n{''.join(rng.choice(residues, size=length))}\n")
    return ids


def size_of(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
    return os.path.getsize(path)


def run(checkpoint, fasta, output, count, extra, workdir):
    report = os.path.join(workdir, "report.json")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, str(count), report, "embed", checkpoint, fasta, output,
                    "--include", "mean", "--quiet", *extra], check=True, env=env)
    wall = time.perf_counter() - start
    with open(report) as handle:
        result = json.load(handle)
    result["wall"] = wall
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--formats", nargs="+", default=["h5", "parquet"], choices=["h5", "parquet", "npz"])
    parser.add_argument("--write", help="append the table to this Markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        checkpoint = os.path.join(workdir, "tiny")
        build_checkpoint(checkpoint)
        fasta = os.path.join(workdir, "records.fasta")
        ids = write_fasta(fasta, args.records)
        raw = args.records * HIDDEN * 4 + sum(len(record_id.encode()) for record_id in ids)
        rows = []
        for fmt in args.formats:
            output = os.path.join(workdir, {"h5": "out.h5", "parquet": "out_parquet", "npz": "out_npz"}[fmt])
            extra = ["--format", "parquet"] if fmt == "parquet" else []
            result = run(checkpoint, fasta, output, args.records, extra, workdir)
            assert result["code"] == 0 and result["count"] == args.records, result
            from tf_esm.io import read_embeddings

            read_ids, means = read_embeddings(output)
            assert len(read_ids) == args.records and means.shape == (args.records, HIDDEN)
            size = size_of(output)
            rss = result["rss"]
            rows.append(f"| {fmt} | {args.records:,} | {args.records / result['seconds']:,.0f} | "
                        f"{result['wall']:.1f} | {size / args.records:.1f} | {raw / args.records:.1f} | "
                        f"{size / raw:.3f} | " + " | ".join(f"{rss[str(mark)]:.1f}" for mark in MARKS)
                        + f" | {rss['end']:.1f} | {rss['end'] - rss['0.4']:+.1f} |")
    header = ("| format | records | records/s (embedding loop) | wall s (process) | file B/record | "
              "raw B/record (float32 + id) | file / raw | RSS MB at 10 % | 40 % | 50 % | 100 % | after write | "
              "growth 40 % -> end MB |\n|" + "---|" * 14)
    command = f"flock /tmp/bench.lock python benchmarks/bench_store.py --records {args.records} --formats " \
              + " ".join(args.formats)
    table = f"{header}\n" + "\n".join(rows)
    print(command)
    print(table)
    if args.write:
        with open(args.write, "a") as handle:
            handle.write(f"\n`{command}` (tiny ESM-2: hidden {HIDDEN}, {LAYERS} layers; `--include mean`, last "
                         f"layer; 8..40 residues a record)\n\n{table}\n")


if __name__ == "__main__":
    main()
