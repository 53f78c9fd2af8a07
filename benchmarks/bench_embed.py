"""Embedding throughput: tf_esm's default path (`tf_esm.pipelines.inference.embed_sequences`) vs HF transformers (PyTorch).

One run builds a random-weight checkpoint per shape with transformers, loads the same weights into tf_esm, and times
both frameworks on the same workload, each in its own process (so peak RSS is each framework's own, imports
included). Reported: residues/s, ratios, the fraction of the measured GEMM rate ("of GEMM rate": real-residue
matmul FLOPs / time / the fp32 GEMM rate measured in this run; not MFU, which would be against the CPU's peak), peak RSS, trace counts, and the max abs difference of the mean embeddings against PyTorch.

    python benchmarks/bench_embed.py                      # full workload: 256 sequences, t6, t12, t30
    python benchmarks/bench_embed.py --shapes t6 --num-seqs 64   # quick
    python benchmarks/bench_embed.py --write benchmarks/RESULTS.md
    KERAS_BACKEND=jax python benchmarks/bench_embed.py --device gpu --precisions float32 mixed_bfloat16 mixed_float16

The legacy HF TF port (transformers<5, tf-keras) can be timed in the same run from an environment that has it:

    python -m venv /tmp/legacy && /tmp/legacy/bin/pip install torch==2.13.0 \
        && /tmp/legacy/bin/pip install tensorflow==2.21.0 tf-keras==2.21.0 transformers==4.46.3
    python benchmarks/bench_embed.py --legacy-python /tmp/legacy/bin/python

Workload: 256 sequences of the 20 standard residues, lengths lognormal (median 300, sigma 0.6) clipped to
[30, 1000] (numpy seed 0), residues drawn with numpy seed 1; `--num-seqs N` takes the first N (past 256, more of
the same distribution, seeds 2 and 3).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SHAPES = {  # name: (layers, hidden, heads, ffn)
    "t6": (6, 320, 20, 1280),
    "t12": (12, 480, 20, 1920),
    "t30": (30, 640, 20, 2560),
    "t33": (33, 1280, 20, 5120),
}
SHAPE_NAMES = {"t6": "esm2_t6_8M", "t12": "esm2_t12_35M", "t30": "esm2_t30_150M", "t33": "esm2_t33_650M"}
RESIDUES = "LAGVSERTIDPKQNFYMHWC"
# Peers' sorted-batching figures from the issue (residues/s, CPU fp32), for the 1.1x target.
PEERS = {
    "HF PyTorch sorted (issue)": {"t6": 5440, "t12": 1306, "t30": 289},
    "legacy TF port sorted": {"t6": 4890, "t12": 1414, "t30": 426},
    "keras-hub": {"t6": 5087, "t12": 1130},
    "esm.cpp": {"t6": 2986, "t12": 735, "t30": 197},
}


def workload(num_seqs=256):
    """The first 256 sequences are always the same (seeds 0 and 1); more are drawn from the same distribution
    with seeds 2 and 3, so a longer workload starts with the shorter one."""
    letters = np.array(list(RESIDUES))
    sequences = []
    for length_seed, residue_seed in ((0, 1), (2, 3)):
        count = 256 if length_seed == 0 else max(0, num_seqs - 256)
        lengths = np.random.default_rng(length_seed).lognormal(np.log(300.0), 0.6, size=count)
        lengths = np.clip(np.round(lengths), 30, 1000).astype(int)
        residue_rng = np.random.default_rng(residue_seed)
        sequences += ["".join(residue_rng.choice(letters, size=n)) for n in lengths]
    return sequences[:num_seqs]


def matmul_flops(lengths, layers, hidden, ffn):
    """Matmul FLOPs over real residues: Q/K/V/O and FFN projections plus QK^T and PV (2 FLOPs per MAC)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    per_layer = 2 * lengths * (4 * hidden * hidden + 2 * hidden * ffn) + 2 * 2 * lengths ** 2 * hidden
    return float(layers * per_layer.sum())


def build_checkpoint(shape, directory):
    import torch
    import transformers

    layers, hidden, heads, ffn = SHAPES[shape]
    config = transformers.EsmConfig(
        vocab_size=33, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=1026, position_embedding_type="rotary", token_dropout=True,
        emb_layer_norm_before=False, pad_token_id=1, mask_token_id=32, layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    transformers.EsmModel(config, add_pooling_layer=False).eval().save_pretrained(directory)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb():
    """Resident memory now (Linux), or None."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# ------------------------------------------------------------------------------------------------------ workers
def best_time(run, repeats, warmup=3):
    """Seconds per call of `run`: `warmup` calls, then the best of 3 timings of `repeats` calls."""
    for _ in range(warmup):
        run()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def gemm_rate(run, size, repeats):
    """FLOP/s of `run` (one size^3 matmul)."""
    return 2 * size ** 3 / best_time(run, repeats)


def worker_gemm(args):
    """Matmul rates of this machine now: fp32 (best of torch and TensorFlow) on CPU; fp32/bf16/fp16 on a GPU."""
    import torch

    rate = gemm_rate
    if args.device == "gpu":
        torch.backends.cuda.matmul.allow_tf32 = False
        rates = {}
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
            a, b = (torch.randn(8192, 8192, device="cuda", dtype=dtype) for _ in range(2))
            rates[name] = rate(lambda: (a @ b, torch.cuda.synchronize()), 8192, 10)
        return {"gemm_flops": rates["float32"], "gemm_bf16_flops": rates["bfloat16"], "gemm_by_dtype": rates,
                "gpu": torch.cuda.get_device_name()}
    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)
    rates = {"torch": rate(lambda: a @ b, size, 10)}
    import tensorflow as tf

    ta, tb = tf.constant(a.numpy()), tf.constant(b.numpy())
    rates["tensorflow"] = rate(lambda: tf.matmul(ta, tb).numpy(), size, 10)
    # bfloat16 (AMX / AVX512_BF16 where the CPU has them): the rate the bfloat16 rows' GEMM fraction is taken against.
    a16, b16 = a.bfloat16(), b.bfloat16()
    ta16, tb16 = tf.cast(ta, tf.bfloat16), tf.cast(tb, tf.bfloat16)
    bf16 = {"torch": rate(lambda: a16 @ b16, size, 10), "tensorflow": rate(lambda: tf.matmul(ta16, tb16).numpy(),
                                                                             size, 10)}
    return {"gemm_flops": max(rates.values()), "gemm_by_framework": rates, "gemm_bf16_flops": max(bf16.values()),
            "gemm_bf16_by_framework": bf16}


def torch_tokens(sequences, batch, device):
    import torch

    vocab = {token: index for index, token in enumerate(
        ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>"])}
    ids = torch.full((len(batch), max(len(sequences[i]) for i in batch) + 2), 1, dtype=torch.long)
    for row, index in enumerate(batch):
        sequence = sequences[index]
        ids[row, 0] = 0
        ids[row, 1:len(sequence) + 1] = torch.tensor([vocab[c] for c in sequence])
        ids[row, len(sequence) + 1] = 2
    return ids.to(device)


def worker_torch(args):
    """HF transformers' EsmModel, eager PyTorch (default attention: sdpa), batches of 8: input order, then sorted."""
    import contextlib

    import torch
    import transformers

    imports_rss = current_rss_mb()
    device = "cuda" if args.device == "gpu" else "cpu"
    model = transformers.EsmModel.from_pretrained(args.checkpoint, add_pooling_layer=False).eval().to(device)
    autocast = contextlib.nullcontext()
    if args.precision != "float32":  # the counterpart of Keras mixed policies and of bfloat16 storage: autocast
        dtype = torch.float16 if args.precision == "mixed_float16" else torch.bfloat16
        autocast = torch.autocast(device, dtype=dtype)
    sequences = workload(args.num_seqs)

    def run(batches):
        means = [None] * len(sequences)
        with torch.inference_mode(), autocast:
            for batch in batches:
                ids = torch_tokens(sequences, batch, device)
                hidden = model(ids, attention_mask=(ids != 1).long()).last_hidden_state.float()
                for row, index in enumerate(batch):
                    means[index] = hidden[row, 1:len(sequences[index]) + 1].mean(0).cpu().numpy()
        return means

    run([[0]])  # warm-up
    naive = [list(range(i, min(i + 8, len(sequences)))) for i in range(0, len(sequences), 8)]
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    sorted_batches = [order[i:i + 8] for i in range(0, len(order), 8)]
    result = {"attn_implementation": model.config._attn_implementation, "threads": torch.get_num_threads(),
              "imports_rss_mb": imports_rss}
    for name, batches in (("naive", naive), ("sorted", sorted_batches)):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            means = run(batches)
            times.append(time.perf_counter() - start)
        result[f"{name}_s"] = min(times)
    np.save(args.embeddings_out, np.stack(means))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def worker_keras(args):
    """tf_esm's default path, `embed_sequences`, under the Keras backend of the environment (TensorFlow here)."""
    import keras

    if args.precision.startswith("mixed_"):
        keras.mixed_precision.set_global_policy(args.precision)
    elif keras.backend.backend() == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")  # true fp32, not TF32, as PyTorch's default
    from tf_esm import TFEsmModel
    from tf_esm.pipelines import inference

    imports_rss = current_rss_mb()
    inference.configure_cpu_threads()
    dtype = "bfloat16" if args.precision == "bfloat16" else "float32"  # bfloat16: weights stored in bfloat16
    model = TFEsmModel.from_pretrained(args.checkpoint, add_pooling_layer=False, dtype=dtype)
    sequences = workload(args.num_seqs)
    result = {"backend": keras.backend.backend(), "imports_rss_mb": imports_rss}
    passes = ["cold"] + ["warm"] * args.repeats  # cold: includes tracing/compiling
    for name in passes:
        start = time.perf_counter()
        results = inference.embed_sequences(model, sequences, include=("mean",), max_tokens_per_batch=args.toks_per_batch)
        seconds = time.perf_counter() - start
        result[f"{name}_s"] = min(seconds, result.get(f"{name}_s", float("inf")))
        result[f"traces_after_{name}"] = inference.trace_count(model)
    last = model.config.num_hidden_layers  # result keys are absolute layer indices
    np.save(args.embeddings_out, np.stack([r["mean_representations"][last] for r in results]))
    result["buckets"] = len({inference.bucket_length(len(s) + 2, inference.TOKEN_LENGTH_BUCKETS) for s in sequences})
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def worker_legacy(args):
    """The legacy HF TF port (transformers<5 `TFEsmModel`, tf-keras) in one tf.function, batches of 8 sorted by
    length: the issue's "legacy HF TFEsmModel in tf.function" peer. Needs its own environment (`--legacy-python`)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import transformers

    imports_rss = current_rss_mb()
    model = transformers.TFEsmModel.from_pretrained(args.checkpoint, add_pooling_layer=False, from_pt=True)
    signature = [tf.TensorSpec((None, None), tf.int32)] * 2
    forward = tf.function(lambda ids, mask: model(ids, attention_mask=mask).last_hidden_state,
                          input_signature=signature)
    sequences = workload(args.num_seqs)

    def run(batches):
        means = [None] * len(sequences)
        for batch in batches:
            ids = torch_tokens(sequences, batch, "cpu").numpy().astype(np.int32)
            hidden = forward(ids, (ids != 1).astype(np.int32)).numpy()
            for row, index in enumerate(batch):
                means[index] = hidden[row, 1:len(sequences[index]) + 1].mean(0)
        return means

    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    batches = [order[i:i + 8] for i in range(0, len(order), 8)]
    run(batches[:1])  # warm-up (traces the one graph)
    start = time.perf_counter()
    means = run(batches)
    result = {"sorted_s": time.perf_counter() - start, "imports_rss_mb": imports_rss,
              "versions": f"transformers {transformers.__version__}, TensorFlow {tf.__version__}"}
    np.save(args.embeddings_out, np.stack(means))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


WORKERS = {"gemm": worker_gemm, "torch": worker_torch, "keras": worker_keras, "legacy": worker_legacy}


def spawn_script(script, kind, python=None, **options):
    """Run `script --worker kind --option value ...` in a fresh process (of `python`, default this interpreter);
    return the JSON it wrote."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    command = [python or sys.executable, os.path.abspath(script), "--worker", kind, "--result-out", out]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    subprocess.run(command, check=True, env=env)
    try:
        with open(out) as handle:
            return json.load(handle)
    finally:
        os.unlink(out)


def best_of(runs):
    """Merge repeated worker results: the shortest time of each kind, the largest peak RSS."""
    merged = dict(runs[0])
    for run in runs[1:]:
        for key, value in run.items():
            if key.endswith("_s"):
                merged[key] = min(merged[key], value)
            elif key == "peak_rss_mb":
                merged[key] = max(merged[key], value)
            elif key == "gemm_flops_around":
                merged[key] = merged[key] + value
    return merged


def spawn(kind, python=None, **options):
    return spawn_script(__file__, kind, python=python, **options)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--toks-per-batch", type=int, default=4096)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--precisions", nargs="+", default=["float32"],
                        choices=("float32", "bfloat16", "mixed_bfloat16", "mixed_float16"),
                        help="bfloat16: tf_esm with weights stored in bfloat16 (from_pretrained(dtype=...)); "
                        "mixed_*: Keras mixed policies (float32 weights). PyTorch runs under autocast for all three")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of (PyTorch process, tf_esm process), alternating; the best time is kept")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds; skip what would start later")
    parser.add_argument("--write", help="write the markdown table to this file (rewritten after each row)")
    parser.add_argument("--legacy-python", help="a Python with transformers<5, tf-keras and TensorFlow: also time "
                        "the legacy HF TF port (sorted batches) in the same run, instead of quoting the issue")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--embeddings-out", help=argparse.SUPPRESS)
    parser.add_argument("--result-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with open(args.result_out, "w") as handle:
            json.dump(WORKERS[args.worker](args), handle)
        return

    began = time.perf_counter()
    sequences = workload(args.num_seqs)
    lengths = [len(s) for s in sequences]
    gemm = spawn("gemm", device=args.device)
    print("matmul rates:", json.dumps(gemm), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for shape in args.shapes:
            checkpoint = os.path.join(scratch, shape)
            build_checkpoint(shape, checkpoint)
            for precision in args.precisions:
                if args.time_limit and time.perf_counter() - began > args.time_limit:
                    print(f"time limit reached: skipping {shape} {precision}", flush=True)
                    continue
                common = dict(checkpoint=checkpoint, num_seqs=args.num_seqs, device=args.device,
                              precision=precision, repeats=1)
                torch_out, keras_out = (os.path.join(scratch, f"{shape}_{precision}_{k}.npy") for k in ("t", "k"))
                torch_runs, keras_runs = [], []
                for _ in range(args.repeats):  # alternate the frameworks: the machine's load drifts
                    torch_runs.append(spawn("torch", embeddings_out=torch_out, **common))
                    keras_runs.append(spawn("keras", embeddings_out=keras_out, toks_per_batch=args.toks_per_batch,
                                            **common))
                    if args.device == "cpu":  # the machine is shared: sample the GEMM rate again, in its own process
                        keras_runs[-1]["gemm_flops_around"] = [spawn("gemm", device="cpu")["gemm_flops"]]
                torch_result, keras_result = best_of(torch_runs), best_of(keras_runs)
                diff = float(np.max(np.abs(np.load(torch_out) - np.load(keras_out))))
                layers, hidden, _, ffn = SHAPES[shape]
                rows.append(dict(shape=shape, precision=precision, torch=torch_result, keras=keras_result,
                                 diff=diff, flops=matmul_flops(lengths, layers, hidden, ffn)))
                if precision != "float32" and "float32" in args.precisions:  # accuracy against each one's fp32
                    rows[-1]["vs_float32"] = {
                        framework: agreement(np.load(os.path.join(scratch, f"{shape}_float32_{k}.npy")),
                                             np.load(out))
                        for framework, k, out in (("tf_esm", "k", keras_out), ("torch", "t", torch_out))}
                if args.legacy_python and args.device == "cpu" and precision == "float32":
                    legacy_out = os.path.join(scratch, f"{shape}_legacy.npy")
                    rows[-1]["legacy"] = spawn("legacy", python=args.legacy_python, embeddings_out=legacy_out,
                                               **common)
                    rows[-1]["legacy"]["diff"] = float(np.max(np.abs(np.load(torch_out) - np.load(legacy_out))))
                print(json.dumps(rows[-1]), flush=True)
                table = render(rows, gemm, args, sum(lengths))
                if args.write:
                    with open(args.write, "w") as handle:
                        handle.write(table)
    print(table)


def agreement(reference, means):
    """Max abs difference and cosine similarity (lowest and mean over sequences) of mean embeddings."""
    cosine = np.sum(reference * means, axis=1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(means, axis=1))
    return {"max_abs_diff": float(np.max(np.abs(reference - means))), "cosine_min": float(np.min(cosine)),
            "cosine_mean": float(np.mean(cosine))}


def render_precision(rows, rate):
    """Reduced-precision rows against float32: speed-ups and the mean embeddings' agreement with float32."""
    fp32 = {row["shape"]: row for row in rows if row["precision"] == "float32"}
    reduced = [row for row in rows if row["precision"] != "float32" and row["shape"] in fp32 and "vs_float32" in row]
    if not reduced:
        return []
    lines = ["", "Reduced precision against float32 (same run; HF under `torch.autocast`, sorted batches; cosine "
             "similarity of each sequence's mean embedding to the same framework's float32 one, lowest / mean "
             "over sequences):", "",
             "| shape | precision | tf_esm fp32 res/s | tf_esm res/s | / own fp32 | HF fp32 sorted res/s "
             "| HF autocast sorted res/s | / HF autocast | tf_esm cosine min / mean | tf_esm max abs diff "
             "| HF autocast cosine min / mean | HF max abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in reduced:
        base = fp32[row["shape"]]
        own, hf = rate(base["keras"]["warm_s"]), rate(base["torch"]["sorted_s"])
        warm, hf_low = rate(row["keras"]["warm_s"]), rate(row["torch"]["sorted_s"])
        k, t = row["vs_float32"]["tf_esm"], row["vs_float32"]["torch"]
        lines.append(
            f"| {SHAPE_NAMES[row['shape']]} | {row['precision']} | {own:,.0f} | {warm:,.0f} | {warm / own:.2f}x | "
            f"{hf:,.0f} | {hf_low:,.0f} | {warm / hf_low:.2f}x | {k['cosine_min']:.5f} / {k['cosine_mean']:.5f} | "
            f"{k['max_abs_diff']:.1e} | {t['cosine_min']:.5f} / {t['cosine_mean']:.5f} | {t['max_abs_diff']:.1e} |")
    return lines


def render(rows, gemm, args, residues):
    import platform

    gpu = args.device == "gpu"
    rate = lambda seconds: residues / seconds  # noqa: E731
    command = (f"python benchmarks/bench_embed.py --shapes {' '.join(dict.fromkeys(r['shape'] for r in rows))} "
               f"--num-seqs {args.num_seqs} --toks-per-batch {args.toks_per_batch} --repeats {args.repeats}")
    if args.precisions != ["float32"]:
        command += f" --precisions {' '.join(args.precisions)}"
    if gpu:
        command += " --device gpu"
        machine = (f"{gemm['gpu']}; matmul rates measured in this run (8192^3, PyTorch): fp32 "
                   f"{gemm['gemm_by_dtype']['float32'] / 1e12:.0f}, bf16 {gemm['gemm_bf16_flops'] / 1e12:.0f}, "
                   f"fp16 {gemm['gemm_by_dtype']['float16'] / 1e12:.0f} TFLOP/s; fraction of fp32 rows against the "
                   f"fp32 rate, of mixed rows against the bf16 rate")
    else:
        around = [g for r in rows for g in r["keras"].get("gemm_flops_around", [])]
        machine = (f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs; fp32 GEMM (2048^3) "
                   f"measured in this run at the start ({gemm['gemm_flops'] / 1e9:.0f} GFLOP/s, best of "
                   f"PyTorch/TensorFlow) and again after each tf_esm timing ({min(around or [0]) / 1e9:.0f}-"
                   f"{max(around or [0]) / 1e9:.0f} GFLOP/s, own process); the GEMM fraction uses the highest of them; "
                   f"bf16 GEMM at the start {gemm.get('gemm_bf16_flops', 0) / 1e9:.0f} GFLOP/s (GEMM fraction of the "
                   f"reduced-precision rows)")
    backend = rows[0]["keras"]["backend"] if rows else "?"
    lines = [
        f"### Embedding throughput, {'GPU' if gpu else 'CPU'}: {args.num_seqs} sequences, {residues} residues",
        "",
        f"Machine: {machine}. tf_esm ran on the Keras `{backend}` backend, toks_per_batch {args.toks_per_batch}; "
        f"HF = transformers EsmModel in eager PyTorch, batches of 8. Best of {args.repeats} alternating "
        f"round(s) of one process per framework. "
        f"Command: `{command}`",
        "",
        "| shape | precision | HF naive res/s | HF sorted res/s | tf_esm res/s (warm) | tf_esm cold res/s "
        "| / HF naive | / HF sorted | of GEMM rate | graphs traced (bucket lengths) | peak RSS MB HF / tf_esm "
        "| of which imports MB HF / tf_esm | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fp32_peak = max([gemm["gemm_flops"]] + [g for r in rows for g in r["keras"].get("gemm_flops_around", [])])
    for row in rows:
        t, k = row["torch"], row["keras"]
        naive, sorted_, warm, cold = (rate(t["naive_s"]), rate(t["sorted_s"]), rate(k["warm_s"]), rate(k["cold_s"]))
        peak = fp32_peak if row["precision"] == "float32" else gemm.get("gemm_bf16_flops", 0)
        mfu = row["flops"] / k["warm_s"] / peak if peak else float("nan")
        lines.append(
            f"| {SHAPE_NAMES[row['shape']]} | {row['precision']} | {naive:,.0f} | {sorted_:,.0f} | {warm:,.0f} | "
            f"{cold:,.0f} | {warm / naive:.2f}x | {warm / sorted_:.2f}x | {mfu:.0%} | "
            f"{k['traces_after_warm']} ({k['buckets']}) | {t['peak_rss_mb']:,.0f} / {k['peak_rss_mb']:,.0f} | "
            f"{t.get('imports_rss_mb') or 0:,.0f} / {k.get('imports_rss_mb') or 0:,.0f} | {row['diff']:.1e} |"
        )
    lines += render_precision(rows, rate)
    if not gpu:
        lines += ["", "Peers (issue figures, sorted batching, res/s), scaled to this machine by HF sorted here / HF "
                  "sorted in the issue, and tf_esm's ratio to each:", ""]
        for row in (row for row in rows if row["precision"] == "float32"):
            shape = row["shape"]
            scale = rate(row["torch"]["sorted_s"]) / PEERS["HF PyTorch sorted (issue)"][shape]
            warm = rate(row["keras"]["warm_s"])
            legacy = row.get("legacy")
            cells = [f"{name} {figures[shape] * scale:,.0f} ({warm / (figures[shape] * scale):.2f}x)"
                     for name, figures in PEERS.items()
                     if shape in figures and not (legacy and name == "legacy TF port sorted")]
            if legacy:
                cells.append(f"**legacy TF port sorted, measured in this run** ({legacy['versions']}) "
                             f"{rate(legacy['sorted_s']):,.0f} ({warm / rate(legacy['sorted_s']):.2f}x; its peak "
                             f"RSS {legacy['peak_rss_mb']:,.0f} MB, max abs diff to HF {legacy['diff']:.1e})")
            lines.append(f"- {SHAPE_NAMES[shape]}: " + "; ".join(cells))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
