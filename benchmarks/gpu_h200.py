"""The GPU measurement in one run (an NVIDIA H200 machine: torch CUDA, transformers, jax CUDA; no TensorFlow):
tf_esm on Keras' JAX backend against HF transformers (PyTorch), printed as a short table, full JSON in $OUT.

    KERAS_BACKEND=jax python benchmarks/gpu_h200.py --budget-seconds 500     # on the GPU (benchmarks/gpu_run.sh)
    KERAS_BACKEND=jax python benchmarks/gpu_h200.py --tiny                   # every part at tiny sizes, on CPU

Parts, each in its own processes and guarded (a failure is reported and the next part runs):
  a. ceilings: bf16 and fp32 matmul rates (8192^3, torch, random data, 3 warm-ups, median of 10) and the
     device-to-device copy bandwidth (bytes read + written, median of 10).
  d. fp32 parity on the GPU (run second: it is short and it is the requirement): tiny random HF checkpoints
     (MLM logits, hidden states, contacts, embed_sequences means; ESMFold positions) by tf_esm on JAX against HF
     torch on the CPU in fp32, once with tf_esm's defaults, once with JAX's default matmul precision set
     explicitly ("default": TensorFloat-32 on a GPU), once with "highest".
  b. ESM-2 650M shape (33 layers, 1280 hidden, 20 heads, 5120 ffn), random weights built once with transformers
     and saved as safetensors, loaded by tf_esm; 1,024 sequences of bench_embed's workload. HF PyTorch: bf16
     weights, sdpa attention, length-sorted token-budget batches (several budgets), and fp32. tf_esm on JAX:
     mixed_bfloat16 and float32 (tf_esm's GPU default: float32 products at "highest"). Residues/s, ratios, the
     fraction of the measured bf16 (or fp32) GEMM rate (not MFU: not against the GPU's peak), programs compiled and compile seconds apart from the warm pass,
     max abs diff and cosine of the means against HF fp32.
  c. ESMFold, esmfold_v1's architecture (48-block trunk, 3B stem, random weights made on the GPU by torch and
     handed to tf_esm's loader as a numpy state dict: nothing written to disk), 256 and 512 residues: HF with its
     defaults (fp16 stem) against tf_esm's compiled JAX path (fp16 stem too): first call, warm call, peak GPU
     memory, max |dpos|.

`--budget-seconds` stops starting work once that much wall time is spent (running workers get the time left as
their timeout). `--tiny` runs on the CPU with tiny shapes so the whole script can be tested without a GPU.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

ESM2_650M = (33, 1280, 20, 5120)  # layers, hidden, heads, ffn
TINY_ESM = (2, 64, 4, 128)
RESERVE = {"a": 15, "d": 40, "b": 120, "c": 150}  # seconds a later part is guaranteed (see main)
TOLERANCES = {"logits": 1e-4, "hidden_states": 1e-4, "contacts": 1e-4, "embed_means": 1e-4, "positions": 1e-3}


def emit(**values):
    """A partial result: the parent merges every RESULT line, so a worker killed at its timeout still reports."""
    print("RESULT " + json.dumps(values, default=float), flush=True)


def settings(tiny):
    if tiny:
        return dict(matmul=512, copy_bytes=16 << 20, shape=TINY_ESM, num_seqs=16, hf_budgets=[1024, 2048],
                    hf_fp32_budget=1024, toks_per_batch=1024, fold_lengths=[24, 40], fold_size="tiny")
    return dict(matmul=8192, copy_bytes=2 << 30, shape=ESM2_650M, num_seqs=1024, hf_budgets=[8192, 16384, 32768],
                hf_fp32_budget=16384, toks_per_batch=16384, fold_lengths=[256, 512], fold_size="full")


def _timed(run, repeats, warmup, sync):
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# ------------------------------------------------------------------------------------------------ a. ceilings
def worker_ceilings(args):
    import torch

    s = settings(args.tiny)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    emit(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__)
    torch.backends.cuda.matmul.allow_tf32 = False
    n = s["matmul"]
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        pair = [torch.randn(n, n, device=device, dtype=dtype) for _ in range(2)]
        seconds = _timed(lambda: pair[0] @ pair[1], 10, 3, sync)
        emit(**{f"matmul_{name}_tflops": 2 * n ** 3 / seconds / 1e12, "matmul_size": n})
        pair.clear()
    source = torch.empty(s["copy_bytes"] // 4, device=device, dtype=torch.float32).normal_()
    target = torch.empty_like(source)
    seconds = _timed(lambda: target.copy_(source), 10, 3, sync)
    emit(copy_tb_per_s=2 * s["copy_bytes"] / seconds / 1e12, copy_bytes=s["copy_bytes"])


# ------------------------------------------------------------------------------------------------ d. parity
def worker_parity(args):
    """tf_esm on JAX (GPU, or CPU in --tiny) against HF torch on the CPU, fp32, in three precision modes: tf_esm's
    defaults, JAX's "default" set explicitly (TensorFloat-32 products on a GPU), and "highest". The mode is a
    `jax.default_matmul_precision` context around the calls; jax.jit re-traces per mode (the precision is part
    of its cache key), so one process serves all three."""
    import contextlib

    import jax
    import torch
    import transformers

    from bench_fold import make_checkpoint, sequence
    from tests._reference import make_reference_checkpoint
    from tf_esm import TFEsmForMaskedLM
    from tf_esm.folding import TFEsmForProteinFolding
    from tf_esm.pipelines.inference import embed_sequences

    emit(jax_device=str(jax.devices()[0]))
    torch.set_grad_enabled(False)
    scratch = tempfile.mkdtemp(prefix="parity_")
    reference = make_reference_checkpoint(os.path.join(scratch, "mlm"), "rotary", "EsmForMaskedLM")
    rng = np.random.default_rng(0)
    lengths = (40, 23, 9)
    ids = np.ones((len(lengths), max(lengths) + 2), dtype=np.int64)
    for row, length in enumerate(lengths):
        ids[row, 0], ids[row, length + 1] = 0, 2
        ids[row, 1:length + 1] = rng.integers(4, 24, size=length)
    mask = (ids != 1).astype(np.int64)
    theirs = reference.model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True)
    their_contacts = reference.model.predict_contacts(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    last = theirs.hidden_states[-1].numpy()
    letters = "LAGVSERTIDPKQNFYMHWC"  # ids 4..23 of the ESM-2 vocabulary
    sequences = ["".join(letters[i - 4] for i in ids[row, 1:length + 1]) for row, length in enumerate(lengths)]
    fold_dir = os.path.join(scratch, "fold")
    make_checkpoint(fold_dir, "tiny")
    text = sequence(40)
    their_fold = transformers.EsmForProteinFolding.from_pretrained(fold_dir).eval().infer(text)
    keep = mask[..., None].astype(bool)
    ids32, mask32 = ids.astype(np.int32), mask.astype(np.int32)
    for mode in ("tf_esm_default", "default", "highest"):
        context = contextlib.nullcontext() if mode == "tf_esm_default" else jax.default_matmul_precision(mode)
        with context:
            model = TFEsmForMaskedLM.from_pretrained(reference.path)
            ours = model(ids32, attention_mask=mask32, output_hidden_states=True)
            contacts = np.asarray(model.predict_contacts(ids32, mask32))
            means = embed_sequences(model, sequences, include=("mean",))
            diffs = {
                "logits": float(np.max(np.abs(np.where(keep, np.asarray(ours.logits) - theirs.logits.numpy(), 0)))),
                "hidden_states": max(float(np.max(np.abs(np.where(keep, np.asarray(a) - b.numpy(), 0))))
                                     for a, b in zip(ours.hidden_states, theirs.hidden_states)),
                "contacts": float(np.max(np.abs(contacts - their_contacts))),
                "embed_means": max(float(np.max(np.abs(result["mean_representations"][model.config.num_hidden_layers]
                                                      - last[row, 1:lengths[row] + 1].mean(0))))
                                   for row, result in enumerate(means)),
            }
            emit(**{mode: dict(jax_precision=jax.config.jax_default_matmul_precision, diffs=dict(diffs))})
            our_fold = TFEsmForProteinFolding.from_pretrained(fold_dir).infer(text)
            diffs["positions"] = float(np.max(np.abs(np.asarray(our_fold["positions"])
                                                     - their_fold["positions"].numpy())))
            emit(**{mode: dict(jax_precision=jax.config.jax_default_matmul_precision, diffs=diffs,
                               within=all(diffs[k] <= TOLERANCES[k] for k in diffs))})


# ------------------------------------------------------------------------------------------------ b. embedding
def _hf_config(shape):
    import transformers

    layers, hidden, heads, ffn = shape
    return transformers.EsmConfig(
        vocab_size=33, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=1026, position_embedding_type="rotary", token_dropout=True,
        emb_layer_norm_before=False, pad_token_id=1, mask_token_id=32, layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _sorted_budget_batches(lengths, budget):
    """Longest first; a batch grows while rows x (its longest + 2 tokens) stays within `budget`."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for index in order:
        if current and (len(current) + 1) * (lengths[current[0]] + 2) > budget:
            batches.append(current)
            current = []
        current.append(index)
    return batches + [current] if current else batches


def worker_embed_torch(args):
    """Build the random checkpoint (saved for tf_esm), then HF: bf16 at several token budgets, and fp32."""
    import torch
    import transformers

    from bench_embed import torch_tokens, workload

    s = settings(args.tiny)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(device):
        transformers.EsmModel(_hf_config(s["shape"]), add_pooling_layer=False).save_pretrained(args.checkpoint)
    emit(build_and_save_s=time.perf_counter() - start)
    sequences = workload(s["num_seqs"])
    lengths = [len(x) for x in sequences]

    def run(model, budget):
        means = [None] * len(sequences)
        for batch in _sorted_budget_batches(lengths, budget):
            ids = torch_tokens(sequences, batch, device)
            hidden = model(ids, attention_mask=(ids != 1).long()).last_hidden_state.float()
            keep = (ids != 1) & (ids != 0) & (ids != 2)
            batch_means = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
            for row, index in enumerate(batch):
                means[index] = batch_means[row]
        return torch.stack(means).cpu().numpy()

    def timed(model, budget):
        sync()
        begin = time.perf_counter()
        means = run(model, budget)
        sync()
        return time.perf_counter() - begin, means

    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        model = transformers.EsmModel.from_pretrained(args.checkpoint, add_pooling_layer=False, dtype=dtype,
                                                      attn_implementation="sdpa").eval().to(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        budgets = s["hf_budgets"] if name == "bf16" else [s["hf_fp32_budget"]]
        run(model, budgets[0]) if name == "bf16" else None  # warm-up pass (cuDNN / cuBLAS heuristics)
        for budget in budgets:
            seconds, means = timed(model, budget)
            emit(**{f"hf_{name}_{budget}_s": seconds})
        np.save(os.path.join(args.scratch, f"hf_{name}.npy"), means)
        if device == "cuda":
            emit(**{f"hf_{name}_peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30})
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    emit(residues=sum(lengths), sequences=len(sequences), attn=getattr(_hf_config(s["shape"]), "_attn_implementation",
                                                                          None) or "sdpa")


def _compile_clock():
    """Seconds JAX spends tracing, lowering and compiling (its own monitoring events), summed as they happen."""
    import jax

    totals = {"trace": 0.0, "lower": 0.0, "compile": 0.0, "compiles": 0}
    names = {"/jax/core/compile/jaxpr_trace_duration": "trace",
             "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
             "/jax/core/compile/backend_compile_duration": "compile"}

    def listen(event, duration, **_):
        if event in names:
            totals[names[event]] += duration
            totals["compiles"] += event == "/jax/core/compile/backend_compile_duration"

    jax.monitoring.register_event_duration_secs_listener(listen)
    return totals


def _jax_peak_gib():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", 0) / 2 ** 30 or None


def worker_embed_keras(args):
    """tf_esm's embed_sequences on JAX at `args.precision` (mixed_bfloat16 or float32): cold pass (compiles),
    warm pass, against HF fp32's means."""
    import jax
    import keras

    if args.precision != "float32":
        keras.mixed_precision.set_global_policy(args.precision)
    from bench_embed import workload
    from tf_esm import TFEsmModel, inference
    from tf_esm.backend import matmul_precision

    s = settings(args.tiny)
    clock = _compile_clock()
    model = TFEsmModel.from_pretrained(args.checkpoint, add_pooling_layer=False)
    emit(jax_device=str(jax.devices()[0]), policy=keras.mixed_precision.global_policy().name,
         fp32_products="highest (tf_esm's GPU default)" if not isinstance(
             matmul_precision(), __import__("contextlib").nullcontext) else "JAX default (CPU: float32)")
    sequences = workload(s["num_seqs"])
    last_emit = [time.perf_counter()]

    def progress(done, residues):  # partial figures, should the worker be stopped at its timeout
        if time.perf_counter() - last_emit[0] > 10:
            last_emit[0] = time.perf_counter()
            emit(progress=dict(sequences=done, residues=residues, seconds=last_emit[0] - start,
                               compiles=clock["compiles"] - before["compiles"],
                               compile_s=sum(clock[k] - before[k] for k in ("trace", "lower", "compile"))))

    for name in ("cold", "warm"):
        before = dict(clock)
        start = time.perf_counter()
        results = inference.embed_sequences(model, sequences, include=("mean",), max_tokens_per_batch=s["toks_per_batch"],
                                            progress_callback=progress)
        seconds = time.perf_counter() - start
        emit(**{f"{name}_s": seconds, f"{name}_compiles": clock["compiles"] - before["compiles"],
                f"{name}_compile_s": sum(clock[k] - before[k] for k in ("trace", "lower", "compile")),
                "programs": inference.trace_count(model)})
    last = model.config.num_hidden_layers
    ours = np.stack([r["mean_representations"][last] for r in results])
    reference = np.load(os.path.join(args.scratch, "hf_fp32.npy"))
    cosine = np.sum(ours * reference, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    emit(max_abs_diff_vs_hf_fp32=float(np.max(np.abs(ours - reference))), min_cosine_vs_hf_fp32=float(cosine.min()),
         peak_gib=_jax_peak_gib())
    hf_bf16 = os.path.join(args.scratch, "hf_bf16.npy")
    if os.path.exists(hf_bf16):
        theirs = np.load(hf_bf16)
        cosine = np.sum(theirs * reference, 1) / np.linalg.norm(theirs, axis=1) / np.linalg.norm(reference, axis=1)
        emit(hf_bf16_max_abs_diff_vs_hf_fp32=float(np.max(np.abs(theirs - reference))),
             hf_bf16_min_cosine_vs_hf_fp32=float(cosine.min()))


# ------------------------------------------------------------------------------------------------ c. ESMFold
def _random_fold_weights(model, seed=0):
    """Weights as an initialiser would draw them (full_esmfold's rule), on the model's device: finite activations
    through 48 blocks; a random model's numbers mean nothing, its speed and memory are the real model's."""
    import torch

    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, parameter in model.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator, device=parameter.device, dtype=torch.float32)
        if parameter.ndim >= 2:
            value = 0.02 * noise
        elif name.endswith("weight"):
            value = 1.0 + 0.02 * noise
        else:
            value = 0.02 * noise
        parameter.copy_(value.to(parameter.dtype))


def worker_fold(args):
    import jax
    import torch
    import transformers

    from bench_fold import SIZES, sequence

    s = settings(args.tiny)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.set_grad_enabled(False)
    if s["fold_size"] == "full":
        from full_esmfold import full_config

        config = full_config(fp16_esm=True)
    else:
        from tf_esm.configuration import ESM2_VOCAB

        hidden, layers, c_s, c_z, blocks = SIZES["tiny"]
        structure = dict(sequence_dim=c_s, pairwise_dim=c_z, ipa_dim=8, resnet_dim=16, num_heads_ipa=2,
                         num_qk_points=2, num_v_points=3, num_blocks=2)
        trunk = dict(num_blocks=blocks, sequence_state_dim=c_s, pairwise_state_dim=c_z, sequence_head_width=8,
                     pairwise_head_width=8, position_bins=8, max_recycles=2, chunk_size=None,
                     structure_module=structure)
        config = transformers.EsmConfig(
            vocab_size=33, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
            intermediate_size=2 * hidden, max_position_embeddings=1026, pad_token_id=1, mask_token_id=32,
            position_embedding_type="rotary", token_dropout=True, emb_layer_norm_before=False,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5, is_folding_model=True,
            vocab_list=list(ESM2_VOCAB),
            esmfold_config=dict(fp16_esm=device == "cuda", lddt_head_hid_dim=16, trunk=trunk))
    start = time.perf_counter()
    with torch.device(device):
        model = transformers.EsmForProteinFolding(config).eval()  # HF halves the stem itself when fp16_esm
    _random_fold_weights(model)
    sync()
    stem = str(next(model.esm.parameters()).dtype).replace("torch.", "")
    emit(hf_build_s=time.perf_counter() - start, stem=stem,
         parameters=sum(p.numel() for p in model.parameters()))
    positions = {}
    for length in s["fold_lengths"]:
        text = sequence(length)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(2):
            begin = time.perf_counter()
            output = model.infer(text)
            sync()
            times.append(time.perf_counter() - begin)
        positions[length] = output["positions"][-1].float().cpu().numpy()
        emit(**{f"hf_{length}": dict(first_s=times[0], warm_s=times[1], peak_gib=torch.cuda.max_memory_allocated()
                                     / 2 ** 30 if device == "cuda" else None)})
    state = {name: value.detach().cpu().numpy() for name, value in model.state_dict().items()}
    hf_config = model.config
    del model, output
    if device == "cuda":
        torch.cuda.empty_cache()

    from tf_esm.configuration import EsmConfig
    from tf_esm.folding import TFEsmForProteinFolding
    from tf_esm.io.weights import deferred_initialization, finish_initialization, load_state_dict

    def run_tf_esm(esm_dtype):
        start = time.perf_counter()
        with deferred_initialization():
            ours = TFEsmForProteinFolding(EsmConfig.from_dict(hf_config.to_dict()), stem_precision=esm_dtype)
            ours.build()
        try:
            load_state_dict(ours, state, strict=True, source="HF state dict in memory")
        finally:
            finish_initialization(ours)
        emit(tf_esm_load_s=time.perf_counter() - start, tf_esm_stem=esm_dtype or "float32",
             jax_device=str(jax.devices()[0]))
        clock = _compile_clock()
        for length in s["fold_lengths"]:
            text = sequence(length)
            times, compile_s = [], []
            for _ in range(2):
                before = sum(clock[k] for k in ("trace", "lower", "compile"))
                begin = time.perf_counter()
                output = ours.infer(text)
                times.append(time.perf_counter() - begin)
                compile_s.append(sum(clock[k] for k in ("trace", "lower", "compile")) - before)
            ours_positions = np.asarray(output["positions"])[-1]
            emit(**{f"tf_esm_{length}": dict(first_s=times[0], warm_s=times[1], compile_s=compile_s[0],
                                             peak_gib_so_far=_jax_peak_gib(), traces=ours.inference_trace_count,
                                             max_dpos_vs_hf=float(np.max(np.abs(ours_positions - positions[length]))))})

    if stem == "float16":
        try:
            run_tf_esm("float16")
            return
        except Exception as error:  # noqa: BLE001  (then the float32 stem, so the part still measures something)
            emit(tf_esm_float16_stem_error=f"{type(error).__name__}: {str(error)[:500]}")
    run_tf_esm(None)


WORKERS = {"ceilings": worker_ceilings, "parity": worker_parity, "embed_torch": worker_embed_torch,
           "embed_keras": worker_embed_keras, "fold": worker_fold}


# ------------------------------------------------------------------------------------------------ driver
class Budget:
    def __init__(self, seconds):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self):
        return self.seconds - (time.perf_counter() - self.start)


def spawn(kind, budget, cap, tiny, reserve=0.0, **options):
    """Run one worker in its own process with timeout min(cap, budget left - `reserve` (kept for later parts));
    return (merged RESULT values, error)."""
    timeout = min(cap, budget.left() - reserve)
    if timeout < 5:
        return {}, f"skipped: {budget.left():.0f} s of the budget left"
    command = [sys.executable, os.path.abspath(__file__), "--worker", kind] + (["--tiny"] if tiny else [])
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error",
               HF_HUB_OFFLINE="1", XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(HERE), env.get("PYTHONPATH")]))
    if tiny:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    started = time.perf_counter()
    error = None
    try:
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        stdout, stderr = completed.stdout, completed.stderr
        if completed.returncode != 0:
            error = f"exit {completed.returncode}: " + stderr.strip()[-1500:]
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        error = f"timed out after {timeout:.0f} s"
    merged = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            merged.update(json.loads(line[len("RESULT "):]))
    merged["wall_s"] = round(time.perf_counter() - started, 1)
    print(f"[{kind} {options.get('precision') or ''}] {json.dumps(merged, default=float)}"
          + (f"\n  ERROR {error}" if error else ""), flush=True)
    return merged, error


def part_embed(budget, tiny, scratch, caps, results, reserve, precisions=("mixed_bfloat16", "float32")):
    checkpoint = os.path.join(scratch, "esm")
    torch_result, error = spawn("embed_torch", budget, caps["embed_torch"], tiny, reserve=reserve,
                                checkpoint=checkpoint, scratch=scratch)
    results["embed"] = {"hf": torch_result, "errors": [error] if error else []}
    if not os.path.exists(os.path.join(scratch, "hf_fp32.npy")):
        raise RuntimeError(f"HF reference not made: {error}")
    for precision in precisions:
        keras_result, error = spawn("embed_keras", budget, caps["embed_keras"], tiny, reserve=reserve,
                                    checkpoint=checkpoint, scratch=scratch, precision=precision)
        results["embed"][precision] = keras_result
        if error:
            results["embed"]["errors"].append(f"{precision}: {error}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (tests the script)")
    parser.add_argument("--budget-seconds", type=float, default=500.0)
    parser.add_argument("--parts", nargs="+", default=["a", "d", "b", "c"], choices=["a", "b", "c", "d"])
    parser.add_argument("--embed-precisions", nargs="+", default=["mixed_bfloat16", "float32"],
                        choices=["mixed_bfloat16", "float32"], help="tf_esm's runs in part b")
    parser.add_argument("--embed-keras-cap", type=float, help="seconds each tf_esm run of part b may take "
                        "(default 130; float32 programs at full precision compile for ~11 s each on an H200)")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        WORKERS[args.worker](args)
        return

    budget = Budget(args.budget_seconds)
    caps = ({"ceilings": 60, "parity": 240, "embed_torch": 120, "embed_keras": 150, "fold": 300} if args.tiny else
            {"ceilings": 45, "parity": 120, "embed_torch": 90, "embed_keras": 130, "fold": 240})
    if args.embed_keras_cap:
        caps["embed_keras"] = args.embed_keras_cap
    results = {"tiny": args.tiny, "budget_seconds": args.budget_seconds, "errors": {}}
    scratch = tempfile.mkdtemp(prefix="gpu_h200_")
    for position, part in enumerate(args.parts):
        # Seconds kept back for the parts after this one (their smallest useful run), so none starves the rest.
        reserve = sum(RESERVE[later] for later in args.parts[position + 1:]) * (0.2 if args.tiny else 1.0)
        try:
            if part == "a":
                results["ceilings"], error = spawn("ceilings", budget, caps["ceilings"], args.tiny, reserve=reserve)
            elif part == "d":
                results["parity"], error = spawn("parity", budget, caps["parity"], args.tiny, reserve=reserve)
            elif part == "b":
                part_embed(budget, args.tiny, scratch, caps, results, reserve, args.embed_precisions)
                error = "; ".join(results["embed"]["errors"]) or None
            else:
                results["fold"], error = spawn("fold", budget, caps["fold"], args.tiny, reserve=reserve)
        except Exception as exception:  # noqa: BLE001  (a part's failure is reported; the next part runs)
            error = f"{type(exception).__name__}: {exception}"
        if error:
            results["errors"][part] = error
    results["wall_s"] = round(time.perf_counter() - budget.start, 1)
    table = render(results, args.tiny)
    print("\n" + table)
    out = os.environ.get("OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "gpu_h200.json"), "w") as handle:
            json.dump(results, handle, indent=1, default=float)
        with open(os.path.join(out, "gpu_h200.md"), "w") as handle:
            handle.write(table)


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def render(results, tiny):
    from bench_embed import matmul_flops, workload

    s = settings(tiny)
    lines = [f"## gpu_h200 {'(tiny, CPU)' if tiny else ''}: {results['wall_s']} s", ""]
    c = results.get("ceilings") or {}
    bf16 = c.get("matmul_bf16_tflops")
    lines.append(f"a. {c.get('device', '?')}: bf16 matmul {_fmt(bf16, '.0f')} TFLOP/s, fp32 "
                 f"{_fmt(c.get('matmul_fp32_tflops'), '.1f')} TFLOP/s ({c.get('matmul_size')}^3), copy "
                 f"{_fmt(c.get('copy_tb_per_s'), '.2f')} TB/s (read + write)")
    lines += ["", "d. fp32 parity, tf_esm on JAX vs HF torch CPU (max abs diff; tolerance "
              + ", ".join(f"{k} {v:g}" for k, v in TOLERANCES.items()) + ")", "",
              "| mode | jax precision | logits | hidden | contacts | embed means | positions (A) | within |",
              "|---|---|---|---|---|---|---|---|"]
    for mode in ("tf_esm_default", "default", "highest"):
        r = (results.get("parity") or {}).get(mode) or {}
        d = r.get("diffs", {})
        lines.append(f"| {mode} | {r.get('jax_precision')} | " + " | ".join(
            _fmt(d.get(k), ".1e") for k in ("logits", "hidden_states", "contacts", "embed_means", "positions"))
            + f" | {r.get('within', '-')} |")
    e = results.get("embed") or {}
    hf = e.get("hf") or {}
    residues = hf.get("residues") or sum(len(x) for x in workload(s["num_seqs"]))
    flops = matmul_flops([len(x) for x in workload(s["num_seqs"])], s["shape"][0], s["shape"][1], s["shape"][3])
    lines += ["", f"b. embedding, shape {s['shape']}, {s['num_seqs']} sequences, {residues} residues "
              "(res/s; fraction of the measured bf16 rate, fp32 rows against the fp32 rate)", "",
              "| run | res/s | vs HF (best bf16 budget; fp32: HF fp32) | of GEMM rate | programs | compile s (cold) "
              "| max abs / min cos vs HF fp32 |",
              "|---|---|---|---|---|---|---|"]
    hf_best = min([v for k, v in hf.items() if k.startswith("hf_bf16_") and k.endswith("_s")] or [None],
                  key=lambda v: v or float("inf"))
    fp32_rate = c.get("matmul_fp32_tflops")
    hf_bf16_diff = next((r["hf_bf16_max_abs_diff_vs_hf_fp32"] for r in (e.get("float32"), e.get("mixed_bfloat16"))
                         if r and "hf_bf16_max_abs_diff_vs_hf_fp32" in r), None)

    def mfu(seconds, rate):
        return f"{flops / seconds / (rate * 1e12):.0%}" if seconds and rate else "-"

    for key, seconds in hf.items():
        if key.startswith("hf_") and key.endswith("_s") and key != "build_and_save_s":
            rate = bf16 if "bf16" in key else fp32_rate
            versus = hf_best if "bf16" in key else seconds
            lines.append(f"| HF {key[3:-2]} | {residues / seconds:,.0f} | "
                         f"{versus / seconds if versus else 0:.2f}x | {mfu(seconds, rate)} | - | - | "
                         + (_fmt(hf_bf16_diff, ".1e") if "bf16" in key else "0")
                         + " |")
    for precision in ("mixed_bfloat16", "float32"):
        r = e.get(precision) or {}
        warm = r.get("warm_s")
        rate = bf16 if precision != "float32" else fp32_rate
        versus = hf_best if precision != "float32" else next((v for k, v in hf.items() if k.startswith("hf_fp32_")
                                                              and k.endswith("_s")), None)
        lines.append(f"| tf_esm JAX {precision} | {_fmt(residues / warm if warm else None, ',.0f')} | "
                     f"{_fmt(versus / warm if warm and versus else None, '.2f')}x | {mfu(warm, rate)} | "
                     f"{r.get('cold_compiles', '-')} | {_fmt(r.get('cold_compile_s'), '.1f')} | "
                     f"{_fmt(r.get('max_abs_diff_vs_hf_fp32'), '.1e')} / {_fmt(r.get('min_cosine_vs_hf_fp32'), '.6f')} |")
    f = results.get("fold") or {}
    lines += ["", f"c. ESMFold {s['fold_size']} ({f.get('parameters', '?')} parameters, HF stem {f.get('stem')}, "
              f"tf_esm stem {f.get('tf_esm_stem')}; tf_esm load from memory {_fmt(f.get('tf_esm_load_s'), '.1f')} s)",
              "", "| L | framework | first (s) | warm (s) | compile (s) | peak GiB | max dpos vs HF (A) |",
              "|---|---|---|---|---|---|---|"]
    for length in s["fold_lengths"]:
        for name in ("hf", "tf_esm"):
            r = f.get(f"{name}_{length}") or {}
            lines.append(f"| {length} | {name} | {_fmt(r.get('first_s'), '.2f')} | {_fmt(r.get('warm_s'), '.3f')} | "
                         f"{_fmt(r.get('compile_s'), '.1f')} | "
                         f"{_fmt(r.get('peak_gib', r.get('peak_gib_so_far')), '.1f')} | "
                         f"{_fmt(r.get('max_dpos_vs_hf'), '.1e')} |")
    if results["errors"]:
        lines += ["", "Errors:"] + [f"- {part}: {error[-600:]}" for part, error in results["errors"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
