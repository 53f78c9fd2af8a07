"""LoRA fine-tuning on a GPU: tf_esm under Keras' JAX backend (bfloat16 mixed precision, gradient checkpointing,
packed rows) against transformers + PEFT (bfloat16 weights, SDPA attention, length-grouped dynamic padding), each
in its own process. Needs no TensorFlow (the GPU machine's image has none: see gpu_run.sh).

    KERAS_BACKEND=jax python benchmarks/gpu_train.py                         # ESM-2 650M shape, on the GPU
    bash benchmarks/gpu_run.sh train                                         # the same through the device script
    KERAS_BACKEND=jax python benchmarks/gpu_train.py --shape t6 --steps 3    # tiny, on a CPU: tests the script

Workload: bench_embed's sequences (cut to `--max-length` tokens) with binary labels (numpy seed 2), sequence
classification from a random-weight checkpoint of the `--shape` (transformers, seed 0, no dropout). LoRA rank 8,
alpha 8 on query and value (PEFT 0.22.0's `LoraConfig(task_type="SEQ_CLS")`, `pip install peft==0.22.0`), the
classification head trained, AdamW lr 1e-4.

* tf_esm: `keras.mixed_precision` "mixed_bfloat16" (float32 master weights, bfloat16 matmuls),
  `model.enable_lora(8)`, `model.gradient_checkpointing_enable()` (`--checkpointing`), rows of `--max-length`
  tokens packed with several proteins (`tf_esm.pipelines.packing.packed_arrays`: one shape, one compiled step),
  `--rows` rows per step, `model.fit` on the arrays.
* transformers + PEFT: bfloat16 weights (`dtype=torch.bfloat16`; PEFT keeps the adapters in float32), SDPA,
  gradient checkpointing as `--checkpointing` (non-reentrant), `--batch-size` sequences per step grouped by length
  as its Trainer's `group_by_length` does and padded to each batch's longest.

Tokens/s counts real tokens (special tokens included) over `--steps` timed steps after `--warmup` untimed ones
(compilation, allocator warm-up). Peak GPU memory: JAX's `peak_bytes_in_use` of the device, torch's
`max_memory_allocated`; on a CPU neither exists and the column says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from bench_embed import SHAPE_NAMES, SHAPES, spawn_script  # noqa: E402
from bench_train import (  # noqa: E402
    LEARNING_RATE,
    LORA_ALPHA,
    LORA_RANK,
    WEIGHT_DECAY,
    build_checkpoint,
    labelled_workload,
    length_grouped_batches,
    padded,
)


def worker_keras(args):
    import jax
    import keras

    from tf_esm import TFEsmForSequenceClassification
    from tf_esm.pipelines.packing import packed_arrays

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    tokens, labels = labelled_workload(args.num_seqs, args.max_length)
    features, packed_labels = packed_arrays(tokens, [int(label) for label in labels], pack_length=args.max_length)
    steps = args.warmup + args.steps
    total_rows = len(features["input_ids"])
    if total_rows < steps * args.rows:  # cycle the rows: every step a full batch of the one compiled shape
        repeat = -(-steps * args.rows // total_rows)
        features = {name: np.concatenate([value] * repeat) for name, value in features.items()}
        packed_labels = np.concatenate([packed_labels] * repeat)
    features = {name: value[:steps * args.rows] for name, value in features.items()}
    packed_labels = packed_labels[:steps * args.rows]

    model = TFEsmForSequenceClassification.from_pretrained(args.checkpoint)
    model.enable_lora(rank=LORA_RANK, lora_alpha=LORA_ALPHA, targets=("query", "value"))
    if args.checkpointing == "on":
        model.gradient_checkpointing_enable()
    model.compile(optimizer=keras.optimizers.AdamW(LEARNING_RATE, weight_decay=WEIGHT_DECAY))
    stamps = []

    class Stamps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            float((logs or {}).get("loss", 0.0))  # waits for the step (Keras' JAX state is synced per epoch)
            stamps.append(time.perf_counter())

    start = time.perf_counter()
    history = model.fit(features, packed_labels, batch_size=args.rows, epochs=1, shuffle=False, verbose=0,
                        callbacks=[Stamps()])
    real = features["attention_mask"].reshape(steps, args.rows, -1).sum(axis=(1, 2))
    timed = stamps[args.warmup:]
    seconds = timed[-1] - stamps[args.warmup - 1] if args.warmup else timed[-1] - start
    stats = jax.devices()[0].memory_stats() or {}
    return {"tokens_per_s": float(real[args.warmup:].sum()) / seconds,
            "first_steps_s": (stamps[args.warmup - 1] - start) if args.warmup else None,
            "padding": 1 - float(features["attention_mask"].mean()),
            "peak_gpu_mb": stats["peak_bytes_in_use"] / 2 ** 20 if "peak_bytes_in_use" in stats else None,
            "last_loss": float(history.history["loss"][-1]), "device": str(jax.devices()[0])}


def worker_torch(args):
    import peft
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokens, labels = labelled_workload(args.num_seqs, args.max_length)
    model = transformers.EsmForSequenceClassification.from_pretrained(
        args.checkpoint, attn_implementation="sdpa", dtype=torch.bfloat16).to(device)
    if args.checkpointing == "on":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=LORA_RANK, lora_alpha=LORA_ALPHA,
                                                       lora_dropout=0.0, target_modules=["query", "value"]))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE,
                                  weight_decay=WEIGHT_DECAY)
    lengths = [len(t) for t in tokens]
    batches = []
    epoch = 0
    while len(batches) < args.warmup + args.steps:
        batches += length_grouped_batches(lengths, args.batch_size, seed=epoch)
        epoch += 1
    batches = batches[:args.warmup + args.steps]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    real, cells, start = 0, 0, None
    for step, rows in enumerate(batches):
        if step == args.warmup:
            sync()
            start = time.perf_counter()
        input_ids, attention_mask = padded(tokens, rows)
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=torch.as_tensor(input_ids, dtype=torch.long, device=device),
                     attention_mask=torch.as_tensor(attention_mask, device=device),
                     labels=torch.as_tensor(labels[rows], dtype=torch.long, device=device)).loss
        loss.backward()
        optimizer.step()
        if step >= args.warmup:
            real += int(attention_mask.sum())
            cells += attention_mask.size
    sync()
    seconds = time.perf_counter() - (start if start is not None else time.perf_counter())
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else None
    return {"tokens_per_s": real / seconds, "padding": 1 - real / cells, "peak_gpu_mb": peak,
            "last_loss": float(loss.item()), "device": device}


WORKERS = {"keras": worker_keras, "torch": worker_torch}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="t33", choices=list(SHAPES))
    parser.add_argument("--num-seqs", type=int, default=1024)
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per sequence and per packed row")
    parser.add_argument("--rows", type=int, default=8, help="tf_esm: packed rows per step")
    parser.add_argument("--batch-size", type=int, default=16, help="transformers: sequences per step")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--checkpointing", nargs="+", default=["on"], choices=("on", "off"),
                        help="gradient checkpointing settings to run (both frameworks)")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--result-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.checkpointing = args.checkpointing[0]  # one per worker
        with open(args.result_out, "w") as handle:
            json.dump(WORKERS[args.worker](args), handle)
        return

    out = os.environ.get("OUT")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        build_checkpoint(args.shape, scratch)
        common = dict(checkpoint=scratch, num_seqs=args.num_seqs, max_length=args.max_length, rows=args.rows,
                      batch_size=args.batch_size, steps=args.steps, warmup=args.warmup)
        for checkpointing in args.checkpointing:
            for kind in ("torch", "keras"):
                try:
                    result = spawn_script(__file__, kind, checkpointing=checkpointing, **common)
                except Exception as error:  # report and go on: one failure should not lose the other numbers
                    result = {"error": str(error)}
                result.update(framework=kind, checkpointing=checkpointing)
                print(kind, checkpointing, json.dumps(result), flush=True)
                results.append(result)
    lines = [f"### LoRA fine-tuning on the GPU: {SHAPE_NAMES[args.shape]} sequence classification, bfloat16",
             "", "Command: `KERAS_BACKEND=jax python benchmarks/gpu_train.py " + " ".join(sys.argv[1:]) + "`.", "",
             "| framework | gradient checkpointing | tokens/s | vs transformers | padding | peak GPU MB |",
             "|---|---|---|---|---|---|"]
    baseline = {r["checkpointing"]: r for r in results if r["framework"] == "torch" and "error" not in r}
    for result in results:
        name = ("transformers + PEFT, bf16 weights, SDPA" if result["framework"] == "torch"
                else "tf_esm (JAX), mixed_bfloat16, packed")
        if "error" in result:
            lines.append(f"| {name} | {result['checkpointing']} | failed: {result['error'][:80]} | | | |")
            continue
        base = baseline.get(result["checkpointing"])
        ratio = f"{result['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "n/a"
        peak = f"{result['peak_gpu_mb']:,.0f}" if result["peak_gpu_mb"] is not None else "n/a (no GPU)"
        lines.append(f"| {name} | {result['checkpointing']} | {result['tokens_per_s']:,.0f} | {ratio} | "
                     f"{result['padding']:.1%} | {peak} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if out:
        with open(os.path.join(out, "gpu_train.json"), "w") as handle:
            json.dump(results, handle, indent=1)
        with open(os.path.join(out, "gpu_train.md"), "w") as handle:
            handle.write(table)


if __name__ == "__main__":
    main()
