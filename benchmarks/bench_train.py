"""Training-step speed: `model.fit` of tf_esm's TFEsmForSequenceClassification vs a plain PyTorch training loop
over HF transformers' EsmForSequenceClassification, same weights, same data, same optimiser, in one run.

    python benchmarks/bench_train.py                       # esm2_t12_35M shape
    python benchmarks/bench_train.py --shape t6 --num-seqs 32   # quick

Data: the first `--num-seqs` sequences of bench_embed's workload, truncated to `--max-length` tokens and padded to
it (fixed shapes for both frameworks), binary labels from numpy seed 2. Adam (lr 1e-4), no dropout, batch size 8.
The first epoch (tracing/compiling, allocator warm-up) is not timed; the next `--epochs` are. Each framework runs
in its own process (peak RSS is its own). The loss of the first batch before any update is printed for both: the
same weights and data must give the same loss.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_embed import SHAPE_NAMES, SHAPES, peak_rss_mb, spawn_script, workload  # noqa: E402


def dataset(num_seqs, max_length):
    vocab = {token: index for index, token in enumerate(
        ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>"])}
    sequences = workload(num_seqs)
    input_ids = np.ones((num_seqs, max_length), dtype=np.int32)
    for row, sequence in enumerate(sequences):
        residues = [vocab[c] for c in sequence[:max_length - 2]]
        input_ids[row, :len(residues) + 2] = [0, *residues, 2]
    labels = np.random.default_rng(2).integers(0, 2, size=num_seqs).astype(np.int32)
    return input_ids, (input_ids != 1).astype(np.int32), labels


def build_checkpoint(shape, directory):
    import torch
    import transformers

    layers, hidden, heads, ffn = SHAPES[shape]
    config = transformers.EsmConfig(
        vocab_size=33, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=1026, position_embedding_type="rotary", token_dropout=True,
        emb_layer_norm_before=False, pad_token_id=1, mask_token_id=32, layer_norm_eps=1e-5, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    transformers.EsmForSequenceClassification(config).save_pretrained(directory)


def worker_torch(args):
    import torch
    import transformers

    model = transformers.EsmForSequenceClassification.from_pretrained(args.checkpoint)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    input_ids, attention_mask, labels = (torch.as_tensor(a, dtype=torch.long) for a in dataset(args.num_seqs,
                                                                                              args.max_length))
    with torch.no_grad():
        first_loss = model(input_ids[:8], attention_mask=attention_mask[:8], labels=labels[:8]).loss.item()

    def epoch():
        for start in range(0, args.num_seqs, 8):
            optimizer.zero_grad(set_to_none=True)
            batch = slice(start, start + 8)
            loss = model(input_ids[batch], attention_mask=attention_mask[batch], labels=labels[batch]).loss
            loss.backward()
            optimizer.step()
        return loss.item()

    epoch()
    start = time.perf_counter()
    for _ in range(args.epochs):
        last_loss = epoch()
    seconds = time.perf_counter() - start
    return {"steps_per_s": args.epochs * (args.num_seqs // 8) / seconds, "first_loss": first_loss,
            "last_loss": last_loss, "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb()}


def worker_keras(args):
    import keras

    from tf_esm import TFEsmForSequenceClassification
    from tf_esm.pipelines import inference

    inference.configure_cpu_threads(intra_op=None, inter_op=1)  # one step at a time on all cores
    model = TFEsmForSequenceClassification.from_pretrained(args.checkpoint)
    input_ids, attention_mask, labels = dataset(args.num_seqs, args.max_length)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    first_loss = float(model({k: v[:8] for k, v in inputs.items()}, labels=labels[:8]).loss)
    setting = args.jit_compile[0]
    jit = {"auto": "auto", "true": True, "false": False}[setting]
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit)  # the model's built-in loss

    epoch_times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.start)

    import tensorflow as tf

    # A tf.data pipeline, as tf_esm.pipelines.data.make_dataset gives; fit turns its autotuning off (see
    # tf_esm.pipelines.data.without_autotune_stall), so no epoch starts with TensorFlow's ~15 s iterator-deletion stall.
    data = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(8)
    history = model.fit(data, epochs=1 + args.epochs, verbose=0, callbacks=[Timer()])
    seconds = sum(epoch_times[1:])
    return {"steps_per_s": args.epochs * (args.num_seqs // 8) / seconds, "first_loss": first_loss,
            "last_loss": float(history.history["loss"][-1]), "jit_compile": setting,
            "backend": keras.backend.backend(), "peak_rss_mb": peak_rss_mb()}


WORKERS = {"torch": worker_torch, "keras": worker_keras}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="t12", choices=list(SHAPES))
    parser.add_argument("--num-seqs", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs, after one untimed")
    parser.add_argument("--jit-compile", nargs="+", default=["false", "auto"], choices=("auto", "true", "false"),
                        help="model.compile(jit_compile=...) settings to time")
    parser.add_argument("--write", help="append the markdown table to this file")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--result-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with open(args.result_out, "w") as handle:
            json.dump(WORKERS[args.worker](args), handle)
        return

    import tempfile

    common = dict(num_seqs=args.num_seqs, max_length=args.max_length, epochs=args.epochs)
    with tempfile.TemporaryDirectory() as scratch:
        build_checkpoint(args.shape, scratch)
        torch_result = spawn_script(__file__, "torch", checkpoint=scratch, **common)
        print("torch", json.dumps(torch_result), flush=True)
        keras_results = []
        for jit in args.jit_compile:
            keras_results.append(spawn_script(__file__, "keras", checkpoint=scratch, jit_compile=jit, **common))
            print("keras", json.dumps(keras_results[-1]), flush=True)
    lines = [
        f"### Training steps, CPU fp32: {SHAPE_NAMES[args.shape]} sequence classification, batch 8 x "
        f"{args.max_length} tokens, Adam",
        "",
        f"Command: `python benchmarks/bench_train.py --shape {args.shape} --num-seqs {args.num_seqs} --max-length "
        f"{args.max_length} --epochs {args.epochs} --jit-compile {' '.join(args.jit_compile)}`. tf_esm: "
        f"`model.fit` with the built-in loss on a `tf.data` pipeline; PyTorch: a plain loop (zero_grad, forward, "
        f"backward, step). Whole epochs are timed (the first, with tracing, is not).",
        "",
        "| run | steps/s | vs PyTorch | loss of batch 1 before training | peak RSS MB |",
        "|---|---|---|---|---|",
        f"| PyTorch eager ({torch_result['threads']} threads) | {torch_result['steps_per_s']:.3f} | 1.00x | "
        f"{torch_result['first_loss']:.6f} | {torch_result['peak_rss_mb']:,.0f} |",
    ]
    for result in keras_results:
        lines.append(
            f"| tf_esm model.fit (jit_compile={result['jit_compile']}) | {result['steps_per_s']:.3f} | "
            f"{result['steps_per_s'] / torch_result['steps_per_s']:.2f}x | {result['first_loss']:.6f} | "
            f"{result['peak_rss_mb']:,.0f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        with open(args.write, "a") as handle:
            handle.write("\n" + table)


if __name__ == "__main__":
    main()
