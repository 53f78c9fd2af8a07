"""ESM C: whole-process `tf-esm embed` vs a transformers `EsmcModel` script, and the 6B model on one machine.

    python benchmarks/bench_esmc.py speed --shape 300m               # float32 and bfloat16, 256 proteins
    python benchmarks/bench_esmc.py big --checkpoint /data/esmc_6b   # ESMC-6B's shape in bfloat16 (built if absent)
    python benchmarks/bench_esmc.py speed --shape tiny --num-seqs 8  # smoke test

`speed`: both frameworks embed the embedding benchmark's workload (bench_embed.workload: lognormal lengths, median
300) from a FASTA file and write the means to HDF5, each as a whole process (interpreter start to exit, every load
and compile included), on the same random-weight checkpoint saved the way the hub's are (transformers
`save_pretrained` of the model, its tokenizer beside it). The transformers script is what a careful user writes:
records sorted by length, batches of at most 4096 tokens padded to their longest, `torch.inference_mode`, SDPA
attention; in bfloat16 the model runs under `torch.autocast("cpu", torch.bfloat16)` (transformers' documented
half-precision route on a CPU) and tf_esm with `--precision bfloat16`. Reported: seconds, residues/s, memory as
`shared/tools/memwatch.py` measures it, and the cosine of each framework's bfloat16 means to its own float32 ones.

`big`: a checkpoint of ESMC-6B's shape (80 layers, hidden 2560, 40 heads, feed-forward 6912; random bfloat16
weights, sharded safetensors with an index, as the hub's) is embedded in bfloat16 by `tf-esm embed --precision
bfloat16` (the first run converts it once into tf_esm's weights cache and maps it; a second run maps the converted
copy) and by the transformers script loading it with `dtype=torch.bfloat16`. Reported per process: load seconds,
residues/s of the embedding, whole-process seconds, peak anonymous memory and the machine's unreclaimable-memory
rise (MemTotal - MemAvailable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cli import cpu_name, run_process  # noqa: E402
from bench_embed import workload  # noqa: E402

SHAPES = {  # name: (layers, hidden, heads, feed-forward)
    "tiny": (2, 64, 4, 256),
    "300m": (30, 960, 15, 2560),
    "600m": (36, 1152, 18, 3072),
    "6b": (80, 2560, 40, 6912),
}

HF_SCRIPT = r'''
import json, sys, time
start = time.time()
import h5py, numpy as np, torch, transformers

checkpoint, fasta, output, precision = sys.argv[1:5]
records = []
with open(fasta) as handle:
    for line in handle:
        line = line.strip()
        if line.startswith(">"):
            records.append([line[1:].split()[0], ""])
        elif line:
            records[-1][1] += line
tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
load_start = time.time()
dtype = torch.bfloat16 if precision == "big-bfloat16" else torch.float32
model = transformers.EsmcModel.from_pretrained(checkpoint, dtype=dtype).eval()
loaded = time.time()
order = sorted(range(len(records)), key=lambda i: -len(records[i][1]))
batches, current = [], []
for index in order:  # longest first, as many as fit 4096 tokens (special tokens included), padded to the longest
    if current and (len(current) + 1) * (len(records[current[0]][1]) + 2) > 4096:
        batches.append(current)
        current = []
    current.append(index)
batches.append(current)
means = [None] * len(records)
autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")
with torch.inference_mode(), autocast:
    for batch in batches:
        sequences = [records[i][1] for i in batch]
        encoded = tokenizer(sequences, padding=True, return_tensors="pt")
        hidden = model(**encoded).last_hidden_state.float()
        for row, (index, sequence) in enumerate(zip(batch, sequences)):
            means[index] = hidden[row, 1:len(sequence) + 1].mean(0).numpy()
embedded = time.time()
with h5py.File(output, "w") as handle:
    handle["ids"] = [name for name, _ in records]
    handle["mean"] = np.stack(means)
print("TIMES " + json.dumps({"load": loaded - load_start, "embed": embedded - loaded}))
'''


def build_checkpoint(shape, directory, dtype="float32"):
    """A random-weight ESM C base model of `shape`, with its tokenizer, as transformers saves a hub checkpoint. The
    6B shape is written tensor by tensor in bfloat16 (shards of about 2 GB and an index), never whole in memory."""
    import torch
    import transformers

    layers, hidden, heads, ffn = SHAPES[shape]
    config = transformers.EsmcConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                     intermediate_size=ffn)
    os.makedirs(directory, exist_ok=True)
    transformers.EsmcTokenizer().save_pretrained(directory)
    if shape != "6b":
        torch.manual_seed(0)
        transformers.EsmcModel(config).eval().to(getattr(torch, dtype)).save_pretrained(directory)
        return
    from safetensors.torch import save_file

    config.architectures = ["EsmcModel"]
    config.dtype = "bfloat16"
    config.save_pretrained(directory)
    generator = torch.Generator().manual_seed(0)

    def matrix(rows, cols):
        return (torch.randn(rows, cols, generator=generator) * 0.02).to(torch.bfloat16)

    def norm(size, bias=False):
        return (1 + 0.1 * torch.randn(size, generator=generator)).to(torch.bfloat16) if not bias else \
            (0.02 * torch.randn(size, generator=generator)).to(torch.bfloat16)

    weight_map, shard, shard_bytes, shard_index, total = {}, {}, 0, 0, 0

    def flush():
        nonlocal shard, shard_bytes, shard_index
        if shard:
            name = f"model-{shard_index:05d}.safetensors"
            save_file(shard, os.path.join(directory, name), metadata={"format": "pt"})
            weight_map.update({key: name for key in shard})
            shard, shard_bytes, shard_index = {}, 0, shard_index + 1

    def add(key, tensor):
        nonlocal shard_bytes, total
        shard[key] = tensor.contiguous()
        shard_bytes += tensor.numel() * 2
        total += tensor.numel() * 2
        if shard_bytes >= 2 << 30:
            flush()

    add("embed_tokens.weight", matrix(64, hidden))
    for layer in range(layers):
        prefix = f"layers.{layer}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            add(prefix + f"self_attn.{name}.weight", matrix(hidden, hidden))
        add(prefix + "self_attn.q_norm.weight", norm(hidden))
        add(prefix + "self_attn.k_norm.weight", norm(hidden))
        add(prefix + "mlp.gate_proj.weight", matrix(ffn, hidden))
        add(prefix + "mlp.up_proj.weight", matrix(ffn, hidden))
        add(prefix + "mlp.down_proj.weight", matrix(hidden, ffn))
        for name in ("input_layernorm", "post_attention_layernorm"):
            add(prefix + f"{name}.weight", norm(hidden))
            add(prefix + f"{name}.bias", norm(hidden, bias=True))
    add("norm.weight", norm(hidden))
    flush()
    count = shard_index
    renamed = {}
    for index in range(count):
        old = f"model-{index:05d}.safetensors"
        new = f"model-{index + 1:05d}-of-{count:05d}.safetensors"
        os.replace(os.path.join(directory, old), os.path.join(directory, new))
        renamed[old] = new
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as handle:
        json.dump({"metadata": {"total_size": total},
                   "weight_map": {key: renamed[name] for key, name in weight_map.items()}}, handle, indent=2)


def write_fasta(path, sequences):
    with open(path, "w") as handle:
        handle.writelines(f">seq{i} benchmark\n{sequence}\n" for i, sequence in enumerate(sequences))


def read_means(path, kind):
    import h5py

    if kind == "hf":
        with h5py.File(path, "r") as handle:
            return dict(zip((name.decode() for name in handle["ids"][()]), handle["mean"][()]))
    from tf_esm.io import read_embeddings

    return dict(zip(*read_embeddings(path, "mean", -1)))


def cosines(first, second):
    values = [float(np.dot(first[k], second[k]) / np.linalg.norm(first[k]) / np.linalg.norm(second[k]))
              for k in first]
    return min(values), float(np.mean(values))


def speed(args, env, work):
    checkpoint = os.path.join(work, f"esmc_{args.shape}")
    build_checkpoint(args.shape, checkpoint)
    sequences = workload(args.num_seqs)
    residues = sum(len(s) for s in sequences)
    fasta = os.path.join(work, "proteins.fasta")
    write_fasta(fasta, sequences)
    hf_script = os.path.join(work, "hf_embed.py")
    with open(hf_script, "w") as handle:
        handle.write(HF_SCRIPT)
    tf_esm = os.path.join(os.path.dirname(sys.executable), "tf-esm")
    rows, means = [], {}
    for precision in args.precisions:
        for name in ("hf", "tf_esm"):
            output = os.path.join(work, f"{name}_{precision}.h5")
            command = ([tf_esm, "embed", checkpoint, fasta, output, "--include", "mean", "--overwrite", "-q",
                        "--precision", precision] if name == "tf_esm" else
                       [sys.executable, hf_script, checkpoint, fasta, output, precision])
            seconds, memory, _ = run_process(command, env)
            means[name, precision] = read_means(output, name)
            rows.append((name, precision, seconds, memory))
            print(f"{name} {precision}: {seconds:.1f} s", file=sys.stderr, flush=True)
    layers, hidden, heads, ffn = SHAPES[args.shape]
    lines = [f"### ESM C embedding as a whole process, CPU: ESMC-{args.shape} shape ({layers} layers, hidden "
             f"{hidden}), {len(sequences)} proteins, {residues} residues", "",
             "Command: `python benchmarks/bench_esmc.py " + " ".join(sys.argv[1:]) + "`. Start to exit of each "
             "process; transformers: `EsmcModel` from a script, length-sorted batches of <= 4096 tokens, SDPA, "
             "bfloat16 under `torch.autocast`; tf_esm: `tf-esm embed --precision P`. CPU: " + cpu_name() + ".", "",
             "| | precision | whole process s | residues/s | anon peak GiB | unreclaimable rise GiB | cosine to own "
             "float32 (min / mean) |", "|---|---|---|---|---|---|---|"]
    best = {}
    for name, precision, seconds, memory in rows:
        best[name, precision] = seconds
        agreement = "" if precision == "float32" or ("float32" not in args.precisions) else \
            "%.6f / %.6f" % cosines(means[name, "float32"], means[name, precision])
        label = "transformers EsmcModel" if name == "hf" else "`tf-esm embed`"
        lines.append(f"| {label} | {precision} | {seconds:.1f} | {residues / seconds:,.0f} | "
                     f"{memory['anon_peak_gib']:.2f} | {memory['used_rise_gib']:.2f} | {agreement} |")
    lines.append("")
    for precision in args.precisions:
        diff = max(float(np.max(np.abs(means["tf_esm", precision][k] - means["hf", precision][k])))
                   for k in means["hf", precision])
        lines.append(f"- {precision}: **tf_esm / transformers {best['hf', precision] / best['tf_esm', precision]:.2f}x** "
                     f"(whole process); max abs diff of the two frameworks' means {diff:.1e}.")
    return lines


def big(args, env, work):
    checkpoint = args.checkpoint or os.path.join(work, "esmc_6b")
    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        started = time.time()
        build_checkpoint("6b", checkpoint)
        print(f"built {checkpoint} in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    sequences = workload(args.num_seqs)
    residues = sum(len(s) for s in sequences)
    fasta = os.path.join(work, "proteins.fasta")
    write_fasta(fasta, sequences)
    hf_script = os.path.join(work, "hf_embed.py")
    with open(hf_script, "w") as handle:
        handle.write(HF_SCRIPT)
    phases_script = os.path.join(work, "tf_phases.py")
    with open(phases_script, "w") as handle:
        handle.write(TF_PHASES)
    cache = os.path.join(work, "weights_cache")
    run_env = dict(env, TF_ESM_CACHE=cache)
    rows = []
    for label, command, kind in (
            ("`tf-esm embed --precision bfloat16`, first run (converts into the weights cache)",
             [sys.executable, phases_script, checkpoint, fasta, os.path.join(work, "tf1.h5")], "tf"),
            ("`tf-esm embed --precision bfloat16`, later runs (the converted copy mapped)",
             [sys.executable, phases_script, checkpoint, fasta, os.path.join(work, "tf2.h5")], "tf"),
            ("transformers `EsmcModel`, `dtype=torch.bfloat16`",
             [sys.executable, hf_script, checkpoint, fasta, os.path.join(work, "hf.h5"), "big-bfloat16"], "hf")):
        seconds, memory, stdout = run_process(command, run_env)
        times = json.loads(stdout.split("TIMES ", 1)[1].splitlines()[0])
        rows.append((label, seconds, times, memory))
        print(f"{label}: {seconds:.1f} s {times}", file=sys.stderr, flush=True)
    ours, theirs = read_means(os.path.join(work, "tf2.h5"), "tf"), read_means(os.path.join(work, "hf.h5"), "hf")
    low, mean = cosines(ours, theirs)
    lines = [f"### ESMC-6B's shape on one CPU machine, bfloat16: {len(sequences)} proteins, {residues} residues", "",
             "Command: `python benchmarks/bench_esmc.py " + " ".join(sys.argv[1:]) + "`. A random-weight checkpoint "
             "of 80 layers, hidden 2560 (sharded bfloat16 safetensors, 12.7 GB). Each row one process, start to exit; "
             "memory as `shared/tools/memwatch.py` measures it. CPU: " + cpu_name() + ".", "",
             "| | load s | embed s | residues/s | whole process s | anon peak GiB | unreclaimable rise GiB | "
             "file-backed peak GiB |", "|---|---|---|---|---|---|---|---|"]
    for label, seconds, times, memory in rows:
        lines.append(f"| {label} | {times['load']:.1f} | {times['embed']:.1f} | {residues / times['embed']:,.1f} | "
                     f"{seconds:.1f} | {memory['anon_peak_gib']:.2f} | {memory['used_rise_gib']:.2f} | "
                     f"{memory.get('file_peak_gib', float('nan')):.2f} |")
    lines += ["", f"Cosine of the mean embeddings, tf_esm vs transformers (both bfloat16): min {low:.5f}, mean "
              f"{mean:.5f}."]
    return lines


TF_PHASES = r'''
import json, sys, time
checkpoint, fasta, output = sys.argv[1:4]
from tf_esm.cli import common, dispatch
from tf_esm.io.hdf5_store import Hdf5Store
dispatch.import_tensorflow_quietly()
import tf_esm.pipelines.inference
records = common.read_records(fasta)
common.configure_threads()
start = time.time()
model = common.load_model(checkpoint, embedding=True, precision="bfloat16")
loaded = time.time()
results = list(tf_esm.pipelines.inference.iter_embeddings(model, [r.sequence for r in records], include=("mean",)))
embedded = time.time()
store = Hdf5Store(output, {"model": checkpoint}, True, 300.0, ["mean"], [model.config.num_hidden_layers],
                  model.config.hidden_size)
for index, result in results:
    store.add(records[index].id, len(records[index].sequence), result)
store.commit()
print("TIMES " + json.dumps({"load": loaded - start, "embed": embedded - loaded}))
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("speed", "big"))
    parser.add_argument("--shape", default="300m", choices=sorted(SHAPES))
    parser.add_argument("--num-seqs", type=int, default=None, help="default: 256 (speed), 8 (big)")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16"))
    parser.add_argument("--checkpoint", help="big: the 6B-shaped checkpoint directory (built there if absent)")
    parser.add_argument("--write", metavar="RESULTS.md", help="append the table to this file")
    args = parser.parse_args()
    args.num_seqs = args.num_seqs or (256 if args.mode == "speed" else 8)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix="bench_esmc_", dir=os.environ.get("BENCH_TMP")) as work:
        lines = speed(args, env, work) if args.mode == "speed" else big(args, env, work)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
