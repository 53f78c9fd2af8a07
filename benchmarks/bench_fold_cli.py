"""`tf-esm fold` on a FASTA file as a whole process vs a transformers script doing the same job, start to exit.

What a user pays to fold a small set of proteins: start the interpreter, import, load the downloaded checkpoint,
fold every protein with the model's default recycling, write one PDB per protein, exit. Both read the same
checkpoint directory (transformers' layout, e.g. `benchmarks/full_esmfold.py`'s random-weight esmfold_v1; tf_esm maps
its converted copy from the weights cache, filled once before the timed runs and reported apart). The transformers
script is its best CPU setting: float32 (its `fp16_esm` stem is slower on a CPU), `torch.inference_mode`, one
protein per call, longest first (ESMFold's padded batches cost more than they save on a CPU), all cores.
`--stem bfloat16` runs both with the ESM-2 stem in bfloat16 (`tf-esm fold --stem-precision bfloat16`; the script
casts `model.esm` as transformers' own `fp16_esm` does with float16, which is slower than bfloat16 on a CPU with
AVX512_BF16 and than float32 on one without); `--stem float16` the same in float16.
Each process runs under `shared/tools/memwatch.py`: wall time, peak anonymous memory, unreclaimable-memory rise.

    python benchmarks/bench_fold_cli.py --checkpoint /work/bench_cache/esmfold_full --lengths 50 100 150 200 250 300 350 400
    python benchmarks/bench_fold_cli.py --checkpoint /work/bench_cache/esmfold_full --stem bfloat16

Compare positions: the PDB coordinates of the two are compared atom by atom (max abs difference, Angstrom).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MEMWATCH = os.path.join(HERE, os.pardir, os.pardir, "shared", "tools", "memwatch.py")
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"

HF_SCRIPT = r'''
import os, sys, torch, transformers
checkpoint, fasta, outdir, stem = sys.argv[1:5]
records, name = [], None
for line in open(fasta):
    line = line.strip()
    if line.startswith(">"):
        records.append([line[1:].split()[0], ""])
    elif line:
        records[-1][1] += line
torch.set_num_threads(os.cpu_count())
model = transformers.EsmForProteinFolding.from_pretrained(checkpoint).eval()
if stem != "float32":  # the ESM-2 stem in half precision (transformers' fp16_esm halves it the same way)
    model.esm.to(getattr(torch, stem))
os.makedirs(outdir, exist_ok=True)
with torch.inference_mode():
    for name, sequence in sorted(records, key=lambda record: -len(record[1])):
        with open(os.path.join(outdir, name + ".pdb"), "w") as handle:
            handle.write(model.infer_pdb(sequence))
'''


def sequences(lengths, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [(f"p{i}_{length}", "".join(rng.choice(list(RESIDUES), length))) for i, length in enumerate(lengths)]


def measured(command, env):
    start = time.perf_counter()
    result = subprocess.run([sys.executable, MEMWATCH, "--json", "--"] + command, env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stderr.strip().splitlines()[-1])
    report["wall_s"] = round(time.perf_counter() - start, 1)
    return report


def ca_coordinates(path):
    import numpy as np

    rows = [line for line in open(path) if line.startswith("ATOM")]
    return np.array([[float(line[30:38]), float(line[38:46]), float(line[46:54])] for line in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="transformers' ESMFold directory")
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 150, 200, 250, 300, 350, 400])
    parser.add_argument("--frameworks", nargs="+", default=["tf_esm", "torch"])
    parser.add_argument("--stem", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="precision of the ESM-2 stem, both frameworks")
    parser.add_argument("--cache", default=None, help="tf_esm's weights cache (default: <checkpoint>_weights_cache, "
                                                     "filled first, untimed, where it has no entry for this code)")
    args = parser.parse_args()

    sys.path.insert(0, HERE)
    from bench_cli import cpu_name

    tf_esm_command = os.path.join(os.path.dirname(sys.executable), "tf-esm")
    cache = args.cache or args.checkpoint.rstrip("/") + "_weights_cache"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1",
               TF_ESM_CACHE=cache)
    if "tf_esm" in args.frameworks:  # fill the cache entry of this code's variables (or read it once): untimed
        fill = measured([sys.executable, "-c", "import sys; from tf_esm import TFEsmForProteinFolding; "
                         "TFEsmForProteinFolding.from_pretrained(sys.argv[1])", args.checkpoint], env)
        print(f"weights cache filled or read first (not in the table): {fill['wall_s']} s, anon peak "
              f"{fill['anon_peak_gib']} GiB", flush=True)
    records = sequences(args.lengths)
    print(f"CPU: {cpu_name()}; {len(records)} proteins, lengths {args.lengths}, default recycling, stem "
          f"{args.stem}", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench_fold_cli_") as work:
        fasta = os.path.join(work, "proteins.fasta")
        with open(fasta, "w") as handle:
            handle.writelines(f">{name}\n{sequence}\n" for name, sequence in records)
        hf_script = os.path.join(work, "hf_fold.py")
        with open(hf_script, "w") as handle:
            handle.write(HF_SCRIPT)
        commands = {
            "tf_esm": [tf_esm_command, "fold", args.checkpoint, fasta, os.path.join(work, "tf_esm"), "-q"]
            + ([] if args.stem == "float32" else ["--stem-precision", args.stem]),
            "torch": [sys.executable, hf_script, args.checkpoint, fasta, os.path.join(work, "torch"), args.stem],
        }
        for framework in args.frameworks:
            started = time.time()
            rows[framework] = measured(commands[framework], env)
            print(framework, json.dumps(rows[framework]), flush=True)
            # Per protein: each PDB is written when its fold ends (the first interval includes start-up and loading).
            written = sorted((os.path.getmtime(os.path.join(work, framework, name + ".pdb")), name)
                             for name, _ in records)
            ends = [started] + [when for when, _ in written]
            print(framework, "seconds per protein, in folding order:",
                  ", ".join(f"{name} {end - begin:.0f}" for (end, name), begin in zip(written, ends)), flush=True)
        difference = None
        if set(args.frameworks) >= {"tf_esm", "torch"}:
            import numpy as np

            difference = max(float(np.max(np.abs(ca_coordinates(os.path.join(work, "tf_esm", name + ".pdb"))
                                                 - ca_coordinates(os.path.join(work, "torch", name + ".pdb")))))
                             for name, _ in records)
    print()
    print("| | whole process s | anon peak GiB | unreclaimable rise GiB | VmHWM GiB |")
    print("|---|---|---|---|---|")
    labels = {"tf_esm": f"`tf-esm fold` (default: eager), {args.stem} stem",
              "torch": f"transformers script, {args.stem} stem"}
    for framework, row in rows.items():
        print(f"| {labels[framework]} | {row['wall_s']} | {row['anon_peak_gib']} | {row['used_rise_gib']} | "
              f"{row['vmhwm_gib']} |")
    if "tf_esm" in rows and "torch" in rows:
        print(f"\ntf_esm / transformers: {rows['tf_esm']['wall_s'] / rows['torch']['wall_s']:.2f}x the time; "
              f"max |d position| over the PDBs' atoms {difference:.1e} A")


if __name__ == "__main__":
    main()
