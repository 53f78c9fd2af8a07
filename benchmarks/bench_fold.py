"""ESMFold inference: tf_esm's default (compiled, length-bucketed) `infer` vs HF transformers' `EsmForProteinFolding`
(PyTorch, eager), on one tiny random-weight checkpoint that both load.

Each (framework, length, chunk size) runs in its own process, so peak RSS is that run's own (imports included);
"fold RSS" is the peak minus the RSS just before the first fold, i.e. what folding itself added. Times are the
best and the median of `--repeats` folds after one warm-up fold (on a shared machine the best is the steadier
figure; the ratio uses it); tf_esm's warm-up (trace + graph optimisation + first run) is reported separately as
"first call". Ratios are against PyTorch measured in the same run.

    python benchmarks/bench_fold.py                                   # lengths 64 and 256
    python benchmarks/bench_fold.py --lengths 384 --chunk-sizes none 32 --frameworks tf_esm --repeats 1
    python benchmarks/bench_fold.py --eager                           # also tf_esm's op-by-op eager path
    python benchmarks/bench_fold.py --size full --lengths 64 256 --repeats 1              # the real model's size
    python benchmarks/bench_fold.py --size full --lengths 384 --chunk-sizes 64 --stem bfloat16
    python benchmarks/bench_fold.py --backend jax --lengths 40 64     # tf_esm under KERAS_BACKEND=jax (jax.jit)

The checkpoint (`--size tiny`): stem 2 layers x 32, trunk 2 blocks (sequence 32, pair 16), structure module 2
blocks, 2 recycling passes (the HF default `num_recycles=None`), every weight perturbed so nothing is a no-op.
`--size small` doubles the trunk widths (pair 32) for the memory comparison. `--size full` is esmfold_v1's
architecture (3.5B parameters; benchmarks/full_esmfold.py: built once into `--cache`, one process per framework). Sequences: the 20 standard residues,
numpy seed 0, batch of one.
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

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
SIZES = {  # name: (stem hidden, stem layers, sequence dim, pair dim, trunk blocks)
    "tiny": (32, 2, 32, 16, 2),
    "small": (64, 2, 64, 32, 2),
}


def make_checkpoint(directory, size):
    import torch
    import transformers

    from tf_esm.configuration import ESM2_VOCAB

    hidden, layers, c_s, c_z, blocks = SIZES[size]
    structure = dict(sequence_dim=c_s, pairwise_dim=c_z, ipa_dim=8, resnet_dim=16, num_heads_ipa=2,
                     num_qk_points=2, num_v_points=3, num_blocks=2)
    trunk = dict(num_blocks=blocks, sequence_state_dim=c_s, pairwise_state_dim=c_z, sequence_head_width=8,
                 pairwise_head_width=8, position_bins=8, max_recycles=2, chunk_size=None, structure_module=structure)
    stem = dict(vocab_size=33, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                intermediate_size=2 * hidden, max_position_embeddings=1026, pad_token_id=1, mask_token_id=32,
                position_embedding_type="rotary", token_dropout=True, emb_layer_norm_before=False,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    config = transformers.EsmConfig(**stem, is_folding_model=True, vocab_list=list(ESM2_VOCAB),
                                    esmfold_config=dict(fp16_esm=False, lddt_head_hid_dim=16, trunk=trunk))
    model = transformers.EsmForProteinFolding(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(directory)


def sequence(length):
    return "".join(np.random.default_rng(0).choice(list(RESIDUES), size=length))


def _status_bytes(field):
    # VmHWM, unlike getrusage's ru_maxrss, starts afresh at exec: it does not inherit the parent's peak.
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_bytes():
    return _status_bytes("VmRSS")


def peak_rss_bytes():
    return _status_bytes("VmHWM")


def worker(args):
    """One framework, one length, one chunk size: prints a JSON line."""
    chunk_size = None if args.chunk_size == "none" else int(args.chunk_size)
    text = sequence(args.length)
    result = dict(framework=args.framework, length=args.length, chunk_size=chunk_size)
    if args.framework == "torch":
        import torch
        import transformers

        model = transformers.EsmForProteinFolding.from_pretrained(args.checkpoint).eval()
        model.trunk.set_chunk_size(chunk_size)

        def fold():
            with torch.no_grad():
                return model.infer(text)["positions"].numpy()
        result["threads"] = torch.get_num_threads()
    else:
        from tf_esm.folding import TFEsmForProteinFolding

        model = TFEsmForProteinFolding.from_pretrained(args.checkpoint)
        model.compiled_inference = args.framework in ("tf_esm", "tf_esm_jax")

        def fold():
            return model.infer(text, chunk_size=chunk_size)["positions"]
    rss_before = rss_bytes()
    start = time.perf_counter()
    positions = fold()
    result["first_s"] = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        positions = fold()
        times.append(time.perf_counter() - start)
    result["median_s"] = float(np.median(times)) if times else None
    result["best_s"] = float(np.min(times)) if times else None
    result["peak_rss"] = peak_rss_bytes()
    result["fold_rss"] = max(0, result["peak_rss"] - rss_before)
    result["traces"] = getattr(model, "inference_trace_count", None)
    np.save(args.positions, np.asarray(positions)[-1])
    print(json.dumps(result))


def run_worker(checkpoint, framework, length, chunk_size, repeats, directory):
    positions = os.path.join(directory, f"{framework}_{length}_{chunk_size}.npy")
    command = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--checkpoint", checkpoint,
               "--length", str(length), "--chunk-size", str(chunk_size), "--repeats", str(repeats),
               "--positions", positions]
    # Keras picks its backend at import: each worker process sets its own.
    environment = dict(os.environ, KERAS_BACKEND="jax" if framework.endswith("_jax") else "tensorflow")
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-4000:])
        raise SystemExit(f"worker failed: {' '.join(command)}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["positions"] = np.load(positions)
    return result


def mib(value):
    return f"{value / 2**20:.0f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--chunk-sizes", nargs="+", default=["none"], help="'none' or integers")
    parser.add_argument("--frameworks", nargs="+", default=["torch", "tf_esm"],
                        choices=["torch", "tf_esm", "tf_esm_eager", "tf_esm_jax", "tf_esm_eager_jax", "tf_esm_hybrid",
                                 "tf_esm_native"])
    parser.add_argument("--backend", choices=["tensorflow", "jax"], default="tensorflow",
                        help="Keras backend of the tf_esm workers (jax: the jax.jit path)")
    parser.add_argument("--eager", action="store_true", help="also time tf_esm's eager path")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", choices=sorted(SIZES) + ["full"], default="tiny")
    parser.add_argument("--cache", default=None, help="--size full: where the checkpoint is built once")
    parser.add_argument("--stem", default="fp32", help="--size full: the stem's precision: fp32; fp16 (HF's "
                        "fp16_esm default; tf_esm then runs its stem in float16), or a tf_esm esm_dtype "
                        "(bfloat16, ...) with HF in fp16")
    parser.add_argument("--num-recycles", type=lambda text: None if text.lower() == "none" else int(text), default=None,
                        help="--size full: extra trunk passes, both frameworks ('none', the default: the model's "
                        "max_recycles, 4 passes; 0: one pass, as the issue's table)")
    parser.add_argument("--steps-list", nargs="+", metavar="L:CHUNK", default=None,
                        help="--size full: these (length, chunk size) steps instead of --lengths x --chunk-sizes, "
                        "e.g. 64:none 256:none 384:64 (the issue's table)")
    parser.add_argument("--full-worker", help=argparse.SUPPRESS)
    parser.add_argument("--steps", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--positions", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if "tf_esm_native" in args.frameworks and args.size != "full" and not args.worker:
        parser.error("tf_esm_native (the checkpoint converted by `tf-esm convert`) is for --size full")
    if args.full_worker or args.size == "full":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import full_esmfold

        if args.full_worker:
            steps = [tuple(step) for step in json.loads(args.steps)]
            return full_esmfold.worker(args.full_worker, args.checkpoint, steps, args.repeats, args.stem,
                                       args.num_recycles)
        args.cache = args.cache or full_esmfold.DEFAULT_CACHE
        args.frameworks = [name for name in args.frameworks if name != "tf_esm_eager"]
        return full_esmfold.run(args, os.path.abspath(__file__))
    if args.worker:
        args.framework = args.worker
        return worker(args)

    frameworks = list(args.frameworks) + (["tf_esm_eager"] if args.eager else [])
    if args.backend == "jax":
        frameworks = [name + "_jax" if name in ("tf_esm", "tf_esm_eager") else name for name in frameworks]
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = os.path.join(directory, "esmfold")
        make_checkpoint(checkpoint, args.size)
        rows = []
        for length in args.lengths:
            for chunk_size in args.chunk_sizes:
                results = {name: run_worker(checkpoint, name, length, chunk_size, args.repeats, directory)
                           for name in frameworks}
                rows.append((length, chunk_size, results))
    print(f"\nESMFold `infer`, checkpoint '{args.size}', batch 1, {args.repeats} folds after a warm-up, "
          f"{os.cpu_count()} CPUs, tf_esm on Keras backend {args.backend}\n")
    print("| L | chunk | framework | fold best (s) | fold median (s) | best vs torch | first call (s) | traces "
          "| peak RSS (MiB) | fold RSS (MiB) | max \\|dpos\\| vs torch (A) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for length, chunk_size, results in rows:
        torch_result = results.get("torch")
        for name, result in results.items():
            ratio = diff = "-"
            if torch_result is not None and result["best_s"] and torch_result["best_s"]:
                ratio = f"{result['best_s'] / torch_result['best_s']:.2f}x"
            if torch_result is not None and name != "torch":
                diff = f"{np.max(np.abs(result['positions'] - torch_result['positions'])):.1e}"
            best, median = (f"{result[key]:.3f}" if result[key] is not None else "-" for key in ("best_s", "median_s"))
            traces = "-" if result["traces"] is None else str(result["traces"])
            print(f"| {length} | {chunk_size} | {name} | {best} | {median} | {ratio} | {result['first_s']:.2f} "
                  f"| {traces} | {mib(result['peak_rss'])} | {mib(result['fold_rss'])} | {diff} |")


if __name__ == "__main__":
    main()
