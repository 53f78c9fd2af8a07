"""`tf-esm embed` as a whole process vs an HF transformers (PyTorch, eager) script as a whole process.

What a user waits for: start the interpreter, import, load the checkpoint, embed a FASTA file, write the means to an
HDF5 file, exit. Both run on the same random-weight checkpoint, saved the way the hub's are (transformers
`save_pretrained` of the model and its tokenizer in one directory), and the same workload FASTA (bench_embed.py's:
256 proteins, lognormal lengths, median 300). Each repeat runs the two processes back to back, alternating which goes
first; the table reports the best of the repeats (and every time), each process's memory as
`shared/tools/memwatch.py` measures it (peak anonymous memory, the machine's unreclaimable-memory rise, VmHWM), the
CPU, and the max abs difference of their mean embeddings.

The PyTorch script is what a careful HF user writes: `EsmTokenizer` / `EsmModel.from_pretrained`, the records sorted
by length and batched under the same token budget as `tf-esm embed` (4096 tokens with the special ones), each batch
padded to its longest (dynamic padding), `torch.inference_mode`, transformers' default attention (SDPA), means over
residues, one HDF5 dataset in file order (`--hf-batching naive`: batches of 8 in file order instead).

Where tf_esm's fixed costs go is measured in one more process that runs the command's steps one by one
(`--phases`): interpreter start, imports, reading the FASTA, loading the model, the first batch (tracing the graph),
the rest of the embedding, writing.

    python benchmarks/bench_cli.py                            # t6 shape, 256 sequences, 3 repeats
    python benchmarks/bench_cli.py --shape t12 --repeats 2 --write benchmarks/RESULTS.md
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_embed import SHAPE_NAMES, build_checkpoint, workload  # noqa: E402

HF_SCRIPT = r'''
import sys
import h5py, numpy as np, torch, transformers

checkpoint, fasta, output = sys.argv[1:4]
records, name = [], None
with open(fasta) as handle:
    for line in handle:
        line = line.strip()
        if line.startswith(">"):
            name = line[1:].split()[0]
            records.append([name, ""])
        elif line:
            records[-1][1] += line
batching = sys.argv[4]
tokenizer = transformers.EsmTokenizer.from_pretrained(checkpoint)
model = transformers.EsmModel.from_pretrained(checkpoint, add_pooling_layer=False).eval()
if batching == "naive":
    batches = [list(range(start, min(start + 8, len(records)))) for start in range(0, len(records), 8)]
else:  # longest first, as many as fit 4096 tokens (special tokens included) padded to the batch's longest
    order = sorted(range(len(records)), key=lambda i: -len(records[i][1]))
    batches, current = [], []
    for index in order:
        if current and (len(current) + 1) * (len(records[current[0]][1]) + 2) > 4096:
            batches.append(current)
            current = []
        current.append(index)
    batches.append(current)
means = [None] * len(records)
with torch.inference_mode():
    for batch in batches:
        sequences = [records[i][1] for i in batch]
        encoded = tokenizer(sequences, padding=True, return_tensors="pt")
        hidden = model(**encoded).last_hidden_state
        for row, (index, sequence) in enumerate(zip(batch, sequences)):
            means[index] = hidden[row, 1:len(sequence) + 1].mean(0).numpy()
with h5py.File(output, "w") as handle:
    handle["ids"] = [name for name, _ in records]
    handle["mean"] = np.stack(means)
'''

PHASES_SCRIPT = r'''
import os, sys, time
start = float(sys.argv[4])
marks = [("interpreter start", time.time())]
checkpoint, fasta, output = sys.argv[1:4]
from tf_esm.cli import common, dispatch
from tf_esm.io.hdf5_store import Hdf5Store
dispatch.import_tensorflow_quietly()
import keras, tf_esm.modeling, tf_esm.pipelines.inference
marks.append(("imports (TensorFlow, Keras, tf_esm)", time.time()))
records = common.read_records(fasta)
marks.append(("read FASTA", time.time()))
common.configure_threads()
model = common.load_model(checkpoint, embedding=True)
marks.append(("build model + load weights", time.time()))
results = tf_esm.pipelines.inference.iter_embeddings(model, [r.sequence for r in records], include=("mean",))
first = [next(results)]
marks.append(("first results (trace + first batches)", time.time()))
rest = list(results)
marks.append(("rest of the embedding", time.time()))
store = Hdf5Store(output, {"model": checkpoint}, True, 300.0, ["mean"], [model.config.num_hidden_layers],
                  model.config.hidden_size)
for index, result in first + rest:
    store.add(records[index].id, len(records[index].sequence), result)
store.commit()
marks.append(("write HDF5", time.time()))
previous, phases = start, []
for name, moment in marks:
    phases.append([name, moment - previous])
    previous = moment
print("PHASES " + __import__("json").dumps(phases))
'''


MEMWATCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared", "tools",
                        "memwatch.py")


def run_process(command, env):
    """Wall seconds, memory (`memwatch.py`'s report: anon_peak_gib, used_rise_gib, vmhwm_gib) and stdout of one
    process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, MEMWATCH, "--json", "--"] + command, env=env, stdout=out,
                                   stderr=err)
        process.wait()
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        errors = err.read().decode()
        if process.returncode != 0:
            raise RuntimeError(f"{command[:3]} failed ({process.returncode}):\n{errors[-3000:]}")
        memory = json.loads(errors.strip().splitlines()[-1])
        return seconds, memory, out.read().decode()


def read_means(path, kind):
    import h5py

    if kind == "hf":
        with h5py.File(path, "r") as handle:
            return dict(zip((name.decode() for name in handle["ids"][()]), handle["mean"][()]))
    from tf_esm.io import read_embeddings

    return dict(zip(*read_embeddings(path, "mean", -1)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="t6", choices=sorted(SHAPE_NAMES))
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf-batching", default="sorted", choices=["sorted", "naive"])
    parser.add_argument("--write", metavar="RESULTS.md", help="append the table to this file")
    args = parser.parse_args()

    tf_esm_command = os.path.join(os.path.dirname(sys.executable), "tf-esm")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix="bench_cli_") as work:
        checkpoint = os.path.join(work, SHAPE_NAMES[args.shape])
        build_checkpoint(args.shape, checkpoint)
        import transformers

        from tf_esm.tokenization import write_default_vocab

        transformers.EsmTokenizer(write_default_vocab(os.path.join(work, "vocab.txt"))).save_pretrained(checkpoint)
        sequences = workload(args.num_seqs)
        fasta = os.path.join(work, "proteins.fasta")
        with open(fasta, "w") as handle:
            handle.writelines(f">seq{i} benchmark\n{sequence}\n" for i, sequence in enumerate(sequences))
        hf_script = os.path.join(work, "hf_embed.py")
        with open(hf_script, "w") as handle:
            handle.write(HF_SCRIPT)
        commands = {
            "tf_esm": [tf_esm_command, "embed", checkpoint, fasta, os.path.join(work, "tf_esm.h5"), "--include",
                       "mean", "--overwrite", "-q"],
            "hf": [sys.executable, hf_script, checkpoint, fasta, os.path.join(work, "hf.h5"), args.hf_batching],
        }
        times = {name: [] for name in commands}
        peaks = {name: [] for name in commands}
        for repeat in range(args.repeats):
            for name in (("tf_esm", "hf") if repeat % 2 == 0 else ("hf", "tf_esm")):
                seconds, peak, _ = run_process(commands[name], env)
                times[name].append(seconds)
                peaks[name].append(peak)
                print(f"repeat {repeat + 1}: {name} {seconds:.2f} s", file=sys.stderr, flush=True)
        ours, theirs = read_means(os.path.join(work, "tf_esm.h5"), "tf"), read_means(os.path.join(work, "hf.h5"),
                                                                                      "hf")
        assert sorted(ours) == sorted(theirs), "the two outputs hold different records"
        max_diff = max(float(np.max(np.abs(ours[key] - theirs[key]))) for key in ours)

        phases_script = os.path.join(work, "phases.py")
        with open(phases_script, "w") as handle:
            handle.write(PHASES_SCRIPT)
        _, _, stdout = run_process([sys.executable, phases_script, checkpoint, fasta,
                                    os.path.join(work, "phases.h5"), repr(time.time())], env)
        phases = json.loads(stdout.split("PHASES ", 1)[1])

    residues = sum(len(s) for s in sequences)
    best = {name: min(values) for name, values in times.items()}
    lines = [
        f"### `tf-esm embed` as a whole process, CPU: {SHAPE_NAMES[args.shape]}, {len(sequences)} sequences, "
        f"{residues} residues",
        "",
        "Command: `python benchmarks/bench_cli.py " + " ".join(sys.argv[1:]) + "`. Start to exit of each process "
        "(interpreter, imports, load, embed, write the means to HDF5); HF = transformers EsmModel in eager PyTorch "
        f"from a script, {args.hf_batching} batching. Best of the repeats, every time listed. CPU: {cpu_name()}.",
        "",
        "| | whole process s | all repeats s | residues/s | anon peak GiB | unreclaimable rise GiB | VmHWM GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in (("hf", f"HF PyTorch eager, {args.hf_batching} batching"), ("tf_esm", "`tf-esm embed`")):
        memory = max(peaks[name], key=lambda report: report["anon_peak_gib"])
        lines.append(f"| {label} | {best[name]:.2f} | {', '.join(f'{t:.2f}' for t in times[name])} | "
                     f"{residues / best[name]:,.0f} | {memory['anon_peak_gib']:.2f} | {memory['used_rise_gib']:.2f} | "
                     f"{memory['vmhwm_gib']:.2f} |")
    lines += ["", f"**tf_esm / HF whole process: {best['hf'] / best['tf_esm']:.2f}x** (best of each); "
              f"max abs diff of the mean embeddings {max_diff:.1e}.", "",
              "Where `tf-esm embed`'s time goes (one more process running the command's steps one by one):", "",
              "| phase | s |", "|---|---|"]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in phases]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as handle:
            handle.write("\n" + text)


def cpu_name():
    """The CPU model and whether it has AVX-512 / bfloat16 / AMX instructions (Linux /proc/cpuinfo)."""
    model, flags, family, number = "unknown CPU", "", "?", "?"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and model == "unknown CPU":
                    model = value
                elif key == "cpu family" and family == "?":
                    family = value
                elif key == "model" and number == "?":
                    number = value
                elif key == "flags" and not flags:
                    flags = " " + value
    except OSError:
        pass
    isa = [name for name in ("avx512f", "avx512_bf16", "amx_bf16") if f" {name}" in flags]
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"{model} (family {family}, model {number}), {os.cpu_count()} cores, {', '.join(isa) or 'AVX2 only'}"
            + (f" (capped: ONEDNN_MAX_CPU_ISA={capped}, ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY')})"
               if capped else ""))


if __name__ == "__main__":
    main()
