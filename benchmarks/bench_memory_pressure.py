"""Full-size ESMFold under a memory limit: does each framework fold, and at what cost, when only N GiB are free?

A balloon process takes all of the machine's available memory but N GiB (anonymous pages it writes, so they are
never reclaimable; the folding process sets its own `oom_score_adj` to 1000, and the balloon its own to -1000 where
it may, so the kernel's OOM killer picks the folding process; a run during which the balloon died is an error). Then,
one process per (framework, source), each framework loads the model and folds one protein with the model's default
recycling (4 passes), measured by `shared/tools/memwatch.py`: finished or killed, wall time from the process's
start (imports, load, fold), peak anonymous memory (RssAnon, what nothing but the process's exit gives back), peak
file-backed memory (RssFile, pages the kernel can drop under pressure), VmHWM, and the machine's unreclaimable
memory rise (MemTotal - MemAvailable). Sources:

* `hf`: the directory a user downloads (transformers' sharded safetensors). transformers maps it; tf_esm, by
  default, maps its converted copy from the weights cache (`tf_esm/io/weights_cache.py`), which this script writes
  first, outside the timed runs (its time and memory are printed), and tf_esm with `weights_cache=False` reads and
  transposes every tensor into its own memory (`hf-direct`).
* `converted`: tf_esm's own file from `tf-esm convert` (tf_esm only); `converted-paged` the same with the opt-in
  `page_weights = True`.

    python benchmarks/bench_memory_pressure.py --checkpoint /work/bench_cache/esmfold_full --free-gib 8 4

Linux, and nothing else running. The checkpoint: `benchmarks/full_esmfold.py`
(`build_full_checkpoint`). Run with one framework's file in the page cache at a time or not: the balloon evicts
what it needs, as a real memory limit would.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MEMWATCH = os.path.join(HERE, os.pardir, os.pardir, "shared", "tools", "memwatch.py")
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def sequence(length, seed=0):
    import numpy as np

    return "".join(np.random.default_rng(seed).choice(list(RESIDUES), length))


def worker(framework, path, length, weights_cache, page_weights=False):
    """One fold, in this process: prints a JSON line with the load and fold times. This process is the OOM
    killer's first choice (oom_score_adj 1000, which needs no privilege), never the balloon."""
    with open("/proc/self/oom_score_adj", "w") as handle:
        handle.write("1000")
    start = time.perf_counter()
    if framework == "torch":
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count())
        model = transformers.EsmForProteinFolding.from_pretrained(path).eval()
        loaded = time.perf_counter()
        with torch.no_grad():
            output = model.infer(sequence(length))
        plddt = float(output["plddt"].mean())
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from tf_esm import TFEsmForProteinFolding

        model = TFEsmForProteinFolding.from_pretrained(path, weights_cache=weights_cache)
        model.page_weights = page_weights
        loaded = time.perf_counter()
        output = model.infer(sequence(length))
        plddt = float(output["plddt"].mean())
    done = time.perf_counter()
    print(json.dumps({"load_s": round(loaded - start, 1), "fold_s": round(done - loaded, 1),
                      "plddt": round(plddt, 4)}), flush=True)


def available_kib():
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def balloon(free_gib):
    """A process holding all available memory but `free_gib` GiB, protected from the OOM killer."""
    hold_kib = available_kib() - int(free_gib * 2**20)
    code = (
        "import mmap, os, sys\n"
        "try:\n"
        "    descriptor = os.open('/proc/self/oom_score_adj', os.O_WRONLY)\n"
        "    os.write(descriptor, b'-1000')\n"
        "except OSError:\n"
        "    pass  # lowering it needs CAP_SYS_RESOURCE; the worker raises its own instead\n"
        f"size = {hold_kib} * 1024\n"
        "block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n"
        "for offset in range(0, size, 4096):\n"
        "    block[offset] = 1\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError("the balloon did not start")
    return process, hold_kib


def measured(framework, path, length, weights_cache, page_weights=False):
    command = [sys.executable, MEMWATCH, "--json", "--", sys.executable, os.path.abspath(__file__), "--worker",
               framework, "--path", path, "--length", str(length), "--weights-cache", json.dumps(weights_cache)]
    command += ["--page-weights"] if page_weights else []
    result = subprocess.run(command, capture_output=True, text=True)
    report = json.loads(result.stderr.strip().splitlines()[-1])
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    report.update(json.loads(lines[-1]) if lines else {})
    report["finished"] = report["status"] == 0 and bool(lines)
    if not report["finished"]:
        report["tail"] = result.stderr.strip().splitlines()[-3:-1]
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=os.path.expanduser("~/.cache/tf_esm_bench/esmfold_full"))
    parser.add_argument("--converted", default=None, help="tf-esm convert's copy (default: <checkpoint>_tf_esm)")
    parser.add_argument("--free-gib", type=float, nargs="+", default=[8, 4])
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--runs", nargs="+", default=["torch:hf", "tf_esm:hf", "tf_esm:converted", "tf_esm:hf-direct"])
    parser.add_argument("--cache", default=None, help="tf_esm's weights cache (default: <checkpoint>_weights_cache)")
    parser.add_argument("--worker", default=None)
    parser.add_argument("--path", default=None)
    parser.add_argument("--weights-cache", default='"auto"')
    parser.add_argument("--page-weights", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.path, args.length, json.loads(args.weights_cache), args.page_weights)

    converted = args.converted or args.checkpoint.rstrip("/") + "_tf_esm"
    cache = args.cache or args.checkpoint.rstrip("/") + "_weights_cache"
    os.environ["TF_ESM_CACHE"] = cache
    print(f"CPU: {_cpu_model()}; MemTotal {_meminfo('MemTotal') / 2**20:.1f} GiB; length {args.length}, "
          "default recycling (4 passes)", flush=True)
    if any(run.startswith("tf_esm:hf") and not run.endswith("direct") for run in args.runs):
        # Fill the weights cache once (its one-time cost, reported, not part of the runs below).
        filled = os.path.isdir(os.path.join(cache, "converted"))
        report = measured("tf_esm", args.checkpoint, 8, "auto")
        print(f"weights cache {'already filled: a load' if filled else 'filled (first load from the HF directory'} "
              f"+ a tiny fold{'' if filled else ')'}: {report['wall_s']} s, "
              f"anon peak {report['anon_peak_gib']} GiB, unreclaimable rise {report['used_rise_gib']} GiB",
              flush=True)
    rows = []
    for free in args.free_gib:
        for run in args.runs:
            framework, source = run.split(":")
            path = converted if source.startswith("converted") else args.checkpoint
            weights_cache = False if source == "hf-direct" else "auto"
            process, hold = balloon(free)
            try:
                report = measured(framework, path, args.length, weights_cache, source == "converted-paged")
                balloon_alive = process.poll() is None
            finally:
                process.stdin.close()
                process.wait()
            if not balloon_alive:
                raise RuntimeError(f"the balloon was killed during {run} at {free} GiB free: the run is not valid")
            row = dict(free_gib=free, framework=framework, source=source, **report)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| free GiB | framework | source | finished | wall s | load s | fold s | anon peak GiB | file peak GiB | "
          "VmHWM GiB | unreclaimable rise GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['free_gib']:g} | {row['framework']} | {row['source']} | "
              f"{'yes' if row['finished'] else 'killed' if row['status'] in (-9, 137) else row['status']} | "
              f"{row['wall_s']} | {row.get('load_s', '-')} | {row.get('fold_s', '-')} | {row['anon_peak_gib']} | "
              f"{row['file_peak_gib']} | {row['vmhwm_gib']} | {row['used_rise_gib']} |")


def _meminfo(key):
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _cpu_model():
    flags, model = "", "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    isa = [name for name in ("avx512f", "avx512_bf16", "amx_bf16") if f" {name}" in flags]
    return f"{model} ({', '.join(isa) or 'no AVX-512'}), {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
