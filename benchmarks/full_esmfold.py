"""Full-size ESMFold (ESM-2 3B stem + 48-block trunk, 3.5B parameters): tf_esm vs HF PyTorch, load to last fold.

Run through `python benchmarks/bench_fold.py --size full` (options there). The random-weight checkpoint is built
once into `--cache` (default `~/.cache/tf_esm_bench/esmfold_full`, 14.1 GB of float32 safetensors in 2 GB shards,
with transformers' `model.safetensors.index.json`): the parameter names and shapes come from transformers'
`EsmForProteinFolding` built on the `meta` device, so building never holds the model in memory. Weights are drawn
as an initialiser would (normal, std 0.02 for matrices; ones plus noise for norm scales; small biases), which keeps
the activations finite; the numbers of a random model mean nothing, its speed and memory are the real model's.

Each framework runs in its own process, which loads the checkpoint once (timed) and then folds every (length,
chunk size) in turn: a first fold (trace / page-in at a new length), then `--repeats` more folds (the second
compiles tf_esm's program for that length; "warm" is the fastest of the folds after it). Peak RSS is
measured per step (the kernel's high-water mark is reset before each step through /proc/self/clear_refs), so the
table shows each length's own peak; "time to first structure" is load + the first fold at the first length.
Before each framework's process starts, the page cache is emptied (as root; said in the output) and its checkpoint
is read once into it (not timed): both then start as on a second run of the same model, with only their own file
cached. This machine's page cache cannot hold both 14 GB checkpoints: without the priming whichever framework's file
was read last would start with an advantage, and without emptying it first the kernel kept the previous
framework's file (read, then mapped: used twice) and evicted part of the one just read (session 12, RESULTS).

Framework `tf_esm_native` loads the checkpoint converted once by `tf-esm convert` (into `<cache>_tf_esm`, another
14.1 GB; the conversion's time is printed): tf_esm's own file, which loading maps instead of reading, as
transformers maps its safetensors. `tf_esm` loads the HF checkpoint itself. With `--stem bfloat16` (or fp16) the
conversion stores the stem in that precision (`tf-esm convert --stem-precision`, `<cache>_tf_esm_bfloat16stem`,
8.4 GB), which loading maps as it is instead of casting 2.8B float32 parameters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from bench_fold import _status_bytes, sequence  # bench_fold.py puts this folder on sys.path before importing us

MEMWATCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared", "tools",
                        "memwatch.py")
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "tf_esm_bench", "esmfold_full")
SHARD_BYTES = 2 * 10**9


def full_config(fp16_esm=False):
    """transformers' `EsmConfig` of facebook/esmfold_v1 (its defaults for the trunk and structure module)."""
    import transformers

    from tf_esm.configuration import ESM2_VOCAB

    return transformers.EsmConfig(
        vocab_size=33, hidden_size=2560, num_hidden_layers=36, num_attention_heads=40, intermediate_size=10240,
        max_position_embeddings=1026, pad_token_id=1, mask_token_id=32, position_embedding_type="rotary",
        token_dropout=True, emb_layer_norm_before=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-5, is_folding_model=True, vocab_list=list(ESM2_VOCAB),
        esmfold_config=dict(fp16_esm=fp16_esm))


def _random_value(name, shape, rng):
    if len(shape) >= 2:
        return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if name.endswith("weight"):  # norm scales
        return (1.0 + 0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)


def build_full_checkpoint(directory):
    """Write the random-weight full checkpoint shard by shard (peak memory: one shard). Idempotent."""
    import torch
    import transformers
    from safetensors.numpy import save_file

    index_path = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index_path):
        return directory
    os.makedirs(directory, exist_ok=True)
    config = full_config()
    with torch.device("meta"):
        model = transformers.EsmForProteinFolding(config)
    parameters = dict(model.named_parameters())
    buffers = {
        "af2_to_esm": model._af2_to_esm_from_vocab_list(config.vocab_list).numpy(),
    }
    head_dim = config.hidden_size // config.num_attention_heads
    buffers["esm.rotary_embeddings.inv_freq"] = (
        1.0 / 10000 ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)).astype(np.float32)
    names = list(model.state_dict())
    unknown = [name for name in names if name not in parameters and name not in buffers]
    if unknown:
        raise SystemExit(f"buffers this builder does not know how to fill: {unknown}")
    rng = np.random.default_rng(0)
    weight_map, shard, shard_bytes, total, files = {}, {}, 0, 0, []

    def flush():
        nonlocal shard, shard_bytes
        if shard:
            file_name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, os.path.join(directory, file_name + ".partial"), metadata={"format": "pt"})
            os.replace(os.path.join(directory, file_name + ".partial"), os.path.join(directory, file_name))
            files.append(file_name)
            for name in shard:
                weight_map[name] = file_name
            shard, shard_bytes = {}, 0

    for name in names:
        value = buffers[name] if name in buffers else _random_value(name, tuple(parameters[name].shape), rng)
        if shard_bytes + value.nbytes > SHARD_BYTES:
            flush()
        shard[name] = np.ascontiguousarray(value)
        shard_bytes += value.nbytes
        total += value.nbytes
    flush()
    # transformers names shards model-0000i-of-0000n; the index is what readers follow, so plain numbering is fine.
    config.save_pretrained(directory)
    with open(index_path + ".partial", "w") as handle:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, handle)
    os.replace(index_path + ".partial", index_path)
    return directory


def build_native_copy(checkpoint, stem="fp32"):
    """tf_esm's own model directory of `checkpoint` (`tf-esm convert`: tf_esm_model.h5 in the variables' layout,
    which loading maps instead of reading), beside it, once. With a half `stem` (bfloat16, float16) the stem is
    stored in that precision (`--stem-precision`), so that loading maps it too instead of casting it: `<cache>_tf_esm_
    <stem>stem`. Returns (directory, seconds the conversion took or None when it was already there)."""
    half = {"fp16": "float16"}.get(stem, stem)
    half = half if half in ("float16", "bfloat16") else None  # fp32 and mixed stems load the float32 conversion
    directory = checkpoint.rstrip(os.sep) + "_tf_esm" + (f"_{half}stem" if half else "")
    if os.path.isfile(os.path.join(directory, "tf_esm_model.h5")):
        return directory, None
    start = time.perf_counter()
    command = [sys.executable, "-m", "tf_esm.cli", "convert", checkpoint, directory, "--overwrite"]
    subprocess.run(command + (["--stem-precision", half] if half else []), check=True)
    return directory, time.perf_counter() - start


def _reset_peak():
    """Start the kernel's RSS high-water mark (VmHWM) afresh from the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def worker(framework, checkpoint, steps, repeats, stem, num_recycles=None):
    """One process: load, then for each (length, chunk) a first fold and `repeats` warm folds. JSON lines out."""
    start = time.perf_counter()
    if framework == "torch":
        import torch
        import transformers

        torch.set_grad_enabled(False)
        config = transformers.EsmConfig.from_pretrained(checkpoint)
        config.esmfold_config.fp16_esm = stem != "fp32"  # HF's half stem is float16
        model = transformers.EsmForProteinFolding.from_pretrained(checkpoint, config=config).eval()
        if num_recycles is not None:  # HF's `infer` takes no num_recycles: its trunk runs max_recycles passes
            model.trunk.config.max_recycles = num_recycles + 1

        def fold(text, chunk):
            model.trunk.set_chunk_size(chunk)
            return model.infer(text)["positions"].float().numpy()
    else:
        from tf_esm.folding import TFEsmForProteinFolding

        kwargs = {} if stem == "fp32" else {"stem_precision": "float16" if stem == "fp16" else stem}
        model = TFEsmForProteinFolding.from_pretrained(checkpoint, **kwargs)

        if framework == "tf_esm_hybrid":  # eager, each layer stack through one traced function
            from tf_esm.modeling import layers_tf

            def fold(text, chunk):
                with layers_tf.traced_in_eager():
                    return np.asarray(model.infer(text, chunk_size=chunk, num_recycles=num_recycles,
                                                  compiled=False)["positions"])
        else:
            def fold(text, chunk):
                return np.asarray(model.infer(text, chunk_size=chunk, num_recycles=num_recycles)["positions"])
    load_s = time.perf_counter() - start
    print(json.dumps(dict(event="load", framework=framework, load_s=load_s, rss=_status_bytes("VmRSS"),
                          peak_rss=_status_bytes("VmHWM"))), flush=True)
    for length, chunk in steps:
        text = sequence(length)
        _reset_peak()
        start = time.perf_counter()
        positions = fold(text, chunk)
        first_s = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            positions = fold(text, chunk)
            times.append(time.perf_counter() - start)
        print(json.dumps(dict(event="fold", framework=framework, length=length, chunk=chunk, first_s=first_s,
                              second_s=times[0] if times else None,
                              # not the second fold: tf_esm compiles its program there ("auto")
                              warm_s=min(times[1:]) if len(times) > 1 else None, peak_rss=_status_bytes("VmHWM"),
                              positions=np.asarray(positions)[-1].tolist(),
                              traces=getattr(model, "inference_trace_count", None))), flush=True)


def drop_page_cache():
    """Empty the page cache (Linux, as root), so that the next framework's checkpoint is the only file cached. Read
    once into a cache still holding the other framework's file (used twice: read, then mapped by its process), the
    kernel evicts part of the new file instead of the older one, and the next first fold reads from the disk.
    Returns whether it could."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("1")
        return True
    except OSError:
        return False


def prime_page_cache(directory):
    """Read every file under `directory` once, so that its pages are in the page cache. Returns (bytes, seconds)."""
    start, total = time.perf_counter(), 0
    buffer = bytearray(64 << 20)
    for path in sorted(os.path.join(root, name) for root, _, names in os.walk(directory) for name in names):
        if os.path.isfile(path):
            with open(path, "rb", buffering=0) as handle:
                while count := handle.readinto(buffer):
                    total += count
    return total, time.perf_counter() - start


def run(args, script):
    checkpoint = build_full_checkpoint(args.cache)
    pairs = ([text.split(":") for text in args.steps_list] if args.steps_list
             else [(length, chunk) for length in args.lengths for chunk in args.chunk_sizes])
    steps = [(int(length), None if chunk == "none" else int(chunk)) for length, chunk in pairs]
    results = {}
    native = None
    if "tf_esm_native" in args.frameworks:
        native, convert_s = build_native_copy(checkpoint, args.stem)
        if convert_s is not None:
            print(f"tf-esm convert {checkpoint} {native}: {convert_s:.1f} s (once)")
    # tf_esm maps the HF checkpoint's converted copy from its weights cache (filled by the first load): that copy,
    # not the HF files, is what its process reads.
    weights_cache = os.environ.get("TF_ESM_CACHE")
    for framework in args.frameworks:
        source = native if framework == "tf_esm_native" else checkpoint
        read = os.path.join(weights_cache, "converted") if framework == "tf_esm" and weights_cache else source
        dropped = drop_page_cache()
        primed, seconds = prime_page_cache(read)
        print(f"{framework}: {primed / 1e9:.1f} GB of {read} read into the page cache in {seconds:.1f} s (not timed)"
              + ("; the page cache was emptied first" if dropped else "; the page cache could not be emptied first"))
        command = [sys.executable, MEMWATCH, "--json", "--", sys.executable, script, "--full-worker", framework, "--checkpoint", source,
                   "--repeats", str(args.repeats), "--stem", args.stem, "--num-recycles", str(args.num_recycles),
                   "--steps", json.dumps(steps)]
        completed = subprocess.run(command, capture_output=True, text=True)
        lines = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
        memory = [json.loads(line) for line in completed.stderr.splitlines() if line.startswith("{")]
        if memory:  # memwatch's line: the whole process's peak anonymous memory and unreclaimable-memory rise
            lines.append(dict(memory[-1], event="memory"))
        if completed.returncode != 0:
            sys.stderr.write(completed.stderr[-4000:])
            print(f"{framework} worker exited {completed.returncode} after {len(lines)} results", file=sys.stderr)
        results[framework] = lines
    render(results, args)


def render(results, args):
    gib = 2 ** 30
    passes = "the model's default passes (4)" if args.num_recycles is None else f"{args.num_recycles + 1} trunk pass(es)"
    print(f"\nFull ESMFold (3.5B parameters, stem {args.stem}), batch 1, {passes}, {args.repeats} more fold(s) per "
          f"step after the first (warm: the fastest after the second, where tf_esm compiles; none with --repeats 1), "
          f"{os.cpu_count()} CPUs\n")
    torch_lines = {(r["length"], r["chunk"]): r for r in results.get("torch", []) if r["event"] == "fold"}
    print("| framework | load (s) | time to first structure (s) | vs torch | whole process s | anon peak GiB | "
          "unreclaimable rise GiB | VmHWM GiB |")
    print("|---|---|---|---|---|---|---|---|")
    first_structure = {}
    for framework, lines in results.items():
        load = next((r for r in lines if r["event"] == "load"), None)
        folds = [r for r in lines if r["event"] == "fold"]
        if load is None or not folds:
            print(f"| {framework} | failed | | |")
            continue
        first_structure[framework] = load["load_s"] + folds[0]["first_s"]
        ratio = (f"{first_structure[framework] / first_structure['torch']:.2f}x"
                 if "torch" in first_structure else "-")
        memory = next((r for r in lines if r["event"] == "memory"), {})
        print(f"| {framework} | {load['load_s']:.1f} | {first_structure[framework]:.1f} | {ratio} | "
              + " | ".join(str(memory.get(key, "-")) for key in ("wall_s", "anon_peak_gib", "used_rise_gib",
                                                                  "vmhwm_gib")) + " |")
    print("\n| L | chunk | framework | first fold (s) | second fold (s) | warm fold (s) | warm vs torch | "
          "peak RSS (GiB) | peak vs torch | max \\|dpos\\| vs torch (A) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for framework, lines in results.items():
        for r in (r for r in lines if r["event"] == "fold"):
            reference = torch_lines.get((r["length"], r["chunk"]))
            warm = "-" if r["warm_s"] is None else f"{r['warm_s']:.1f}"
            ratio = peak_ratio = diff = "-"
            if reference is not None and framework != "torch":
                if r["warm_s"] and reference["warm_s"]:
                    ratio = f"{r['warm_s'] / reference['warm_s']:.2f}x"
                elif r.get("second_s") and reference.get("second_s"):  # --repeats 1: the second folds
                    ratio = f"{r['second_s'] / reference['second_s']:.2f}x (second)"
                peak_ratio = f"{r['peak_rss'] / reference['peak_rss']:.2f}x"
                diff = f"{np.max(np.abs(np.asarray(r['positions']) - np.asarray(reference['positions']))):.1e}"
            second = "-" if r.get("second_s") is None else f"{r['second_s']:.1f}"
            print(f"| {r['length']} | {r['chunk'] or 'none'} | {framework} | {r['first_s']:.1f} | {second} | {warm} | {ratio} "
                  f"| {r['peak_rss'] / gib:.1f} | {peak_ratio} | {diff} |")
