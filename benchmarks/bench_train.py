"""Fine-tuning throughput and memory: tf_esm `model.fit` vs transformers (+ PEFT for LoRA), sequence
classification on a variable-length labelled workload, each framework in its own process.

    python benchmarks/bench_train.py --shape t12                      # full and LoRA, checkpointing off and on
    python benchmarks/bench_train.py --shape t30 --modes lora --checkpointing off on
    python benchmarks/bench_train.py --shape t30 --batching fixed --max-length 512 --batch-size 8 \\
        --modes full --checkpointing off on --curve-steps 0           # activation memory at batch 8 x 512
    python benchmarks/bench_train.py --shape t6 --num-seqs 16 --epochs 1 --curve-steps 3 --max-length 128 \\
        --max-tokens-per-batch 512                                   # smoke test

Workload: the first `--num-seqs` sequences of bench_embed's workload (its length distribution: log-normal around
300 residues, 30-1000), cut to `--max-length` tokens, binary labels from numpy seed 2. A random-weight checkpoint of
the ESM-2 shape `--shape` (transformers' EsmForSequenceClassification, seed 0, no dropout) is the starting point of
both frameworks. AdamW (lr 1e-4, weight decay 0.01, epsilon 1e-8) on the model's built-in loss.

* Modes: `full` fine-tuning, and `lora`: rank 8, alpha 8, on the attention projections `--lora-targets` (default
  query and value, PEFT's default for ESM), the encoder frozen, the classification head trained
  (tf_esm: `model.enable_lora`; PEFT 0.22.0 `LoraConfig(task_type="SEQ_CLS")`, `pip install peft==0.22.0`).
* Gradient checkpointing off / on (tf_esm: `model.gradient_checkpointing_enable()`; transformers: the same call,
  non-reentrant).
* Batching, each framework's best: tf_esm `--batching bucket` (length-bucketed `tf.data` batches of at most
  `--max-tokens-per-batch` padded tokens, `make_dataset`) or `pack` (rows of `--max-length` tokens holding several
  proteins, `make_dataset(pack_length=...)`: no attention across proteins, no padding to speak of); transformers:
  `--batch-size` sequences per batch grouped by length as its Trainer's `group_by_length` does (megabatches of 50
  batches sorted by length) and padded to each batch's longest (`DataCollatorWithPadding`), SDPA attention.
  `--batching fixed` pads every row to `--max-length` in both (the fixed-shape memory measurement); `group` gives
  tf_esm transformers' own batches.
* Timing: one untimed epoch (tracing, compiling, allocator warm-up), then `--epochs` timed epochs; tokens/s counts
  real tokens (special tokens included, padding not). Memory: the peak of the worker process's anonymous resident
  memory (RssAnon, sampled every 10 ms as shared/tools/memwatch.py samples it), model loading included.
* Loss curves (`--curve-steps`, default 50): both frameworks train the same batches in the same order
  (transformers' length-grouped batches), from the same weights (for LoRA, tf_esm takes PEFT's initial adapter
  matrices), and print each step's loss; the table gives their largest difference. Keras' Adam adds epsilon
  after the bias correction (torch's epsilon times sqrt(1 - beta2^t)), so where gradients are tiny (full
  fine-tuning) the two optimisers' steps differ slightly and the curves part a little after the first step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_embed import SHAPE_NAMES, SHAPES, spawn_script, workload  # noqa: E402

VOCAB = {token: index for index, token in enumerate(
    ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>"])}
LEARNING_RATE, WEIGHT_DECAY, EPSILON = 1e-4, 0.01, 1e-8
SGD_LEARNING_RATE, SGD_MOMENTUM = 1e-2, 0.9  # --curve-optimizer sgd: the same update rule in both frameworks
LORA_RANK = LORA_ALPHA = 8


# --------------------------------------------------------------------------------------------------- workload
def labelled_workload(num_seqs, max_length):
    """(token id lists `<cls> residues <eos>`, binary labels)."""
    sequences = workload(num_seqs)
    tokens = [[0, *(VOCAB[c] for c in sequence[:max_length - 2]), 2] for sequence in sequences]
    labels = np.random.default_rng(2).integers(0, 2, size=num_seqs).astype(np.int32)
    return tokens, labels


def length_grouped_batches(lengths, batch_size, seed):
    """transformers' `group_by_length` order: a random permutation cut into megabatches of 50 batches, each sorted
    by length (longest first), then cut into batches."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    megabatch = 50 * batch_size
    indices = []
    for start in range(0, len(order), megabatch):
        chunk = order[start:start + megabatch]
        indices.extend(sorted(chunk.tolist(), key=lambda i: -lengths[i]))
    return [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]


def padded(tokens, rows, width=None):
    """input_ids and attention_mask of `rows`, padded to `width` (default: the longest row)."""
    width = width or max(len(tokens[row]) for row in rows)
    input_ids = np.ones((len(rows), width), np.int32)
    for out, row in enumerate(rows):
        input_ids[out, :len(tokens[row])] = tokens[row]
    return input_ids, (input_ids != 1).astype(np.int32)


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


# ----------------------------------------------------------------------------------------------------- memory
class AnonPeak:
    """The peak RssAnon of this process, sampled every 10 ms on a thread (as shared/tools/memwatch.py does)."""

    def __init__(self):
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def current_kib():
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.current_kib())
            time.sleep(0.01)

    def peak_mb(self):
        self.peak_kib = max(self.peak_kib, self.current_kib())
        return self.peak_kib / 1024.0


# ---------------------------------------------------------------------------------------------------- tf_esm
def keras_model(args):
    import keras

    from tf_esm import TFEsmForSequenceClassification

    model = TFEsmForSequenceClassification.from_pretrained(args.checkpoint)
    if args.mode == "lora":
        model.enable_lora(rank=LORA_RANK, lora_alpha=LORA_ALPHA, targets=tuple(args.lora_targets.split(",")))
    if args.gradient_checkpointing == "on":
        model.gradient_checkpointing_enable()
    if getattr(args, "curve_optimizer", "adamw") == "sgd" and args.worker == "keras_curve":
        optimizer = keras.optimizers.SGD(SGD_LEARNING_RATE, momentum=SGD_MOMENTUM)
    else:
        optimizer = keras.optimizers.AdamW(LEARNING_RATE, weight_decay=WEIGHT_DECAY, epsilon=EPSILON)
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    model.compile(optimizer=optimizer, jit_compile=jit)  # the model's built-in loss
    return model


def keras_dataset(args, tokens, labels):
    import tensorflow as tf

    from tf_esm.pipelines.data import make_dataset, records_from_lists

    if args.batching == "fixed":
        input_ids, attention_mask = padded(tokens, range(len(tokens)), args.max_length)
        data = ({"input_ids": input_ids, "attention_mask": attention_mask}, labels)
        return tf.data.Dataset.from_tensor_slices(data).shuffle(len(tokens), seed=0).batch(args.batch_size)
    if args.batching == "group":
        batches = length_grouped_batches([len(t) for t in tokens], args.batch_size, seed=0)
        return [(dict(zip(("input_ids", "attention_mask"), padded(tokens, rows))), labels[rows]) for rows in batches]
    inverse = {index: token for token, index in VOCAB.items()}
    sequences = ["".join(inverse[i] for i in row[1:-1]) for row in tokens]
    records = records_from_lists(sequences, [int(label) for label in labels])
    options = dict(max_tokens_per_batch=args.max_tokens_per_batch, shuffle=True, seed=0)
    if args.batching == "pack":
        options["pack_length"] = args.max_length
    return make_dataset(records, **options)


def worker_keras(args):
    memory = AnonPeak()
    import keras

    from tf_esm.pipelines import inference

    if keras.backend.backend() == "tensorflow":
        inference.configure_cpu_threads(intra_op=None, inter_op=1)  # one step at a time on all cores
    tokens, labels = labelled_workload(args.num_seqs, args.max_length)
    model = keras_model(args)
    data = keras_dataset(args, tokens, labels)
    if isinstance(data, list):  # the same batches every epoch: a generator-free tf.data of them
        import tensorflow as tf

        batches = data
        data = tf.data.Dataset.from_generator(
            lambda: iter(batches), output_signature=(
                {"input_ids": tf.TensorSpec((None, None), tf.int32),
                 "attention_mask": tf.TensorSpec((None, None), tf.int32)}, tf.TensorSpec((None,), tf.int32)))
    epoch_times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.start)

    history = model.fit(data, epochs=1 + args.epochs, verbose=0, callbacks=[Timer()])
    real_tokens = sum(len(row) for row in tokens)
    cells = 0
    for features, _ in data:
        cells += int(np.prod(features["input_ids"].shape))
    seconds = sum(epoch_times[1:])
    return {"tokens_per_s": args.epochs * real_tokens / seconds, "padding": 1 - real_tokens / cells,
            "last_loss": float(history.history["loss"][-1]), "backend": keras.backend.backend(),
            "peak_anon_mb": memory.peak_mb()}


def worker_keras_curve(args):
    import keras

    tokens, labels = labelled_workload(args.num_seqs, args.max_length)
    model = keras_model(args)
    if args.mode == "lora":  # PEFT's initial adapter matrices (B starts at zero in both)
        initial = np.load(os.path.join(args.scratch, "lora_init.npz"))
        for target in args.lora_targets.split(","):
            stacked = model.esm.encoder.layer.stacked_weight(f"attention.self.{target}.lora_kernel_a")
            stacked.assign(initial[target])
    batches = length_grouped_batches([len(t) for t in tokens], args.batch_size, seed=0)[:args.curve_steps]
    losses = []
    for rows in batches:
        input_ids, attention_mask = padded(tokens, rows)
        model.reset_metrics()  # the logged loss is then this batch's, not a running mean
        logs = model.train_on_batch({"input_ids": input_ids, "attention_mask": attention_mask}, labels[rows],
                                    return_dict=True)
        losses.append(float(logs["loss"]))
    return {"losses": losses, "backend": keras.backend.backend()}


# ------------------------------------------------------------------------------------------------ transformers
def torch_model(args):
    import torch
    import transformers

    model = transformers.EsmForSequenceClassification.from_pretrained(args.checkpoint, attn_implementation="sdpa")
    if args.gradient_checkpointing == "on":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.mode == "lora":
        import peft

        config = peft.LoraConfig(task_type="SEQ_CLS", r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                 target_modules=args.lora_targets.split(","))
        model = peft.get_peft_model(model, config)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    if getattr(args, "curve_optimizer", "adamw") == "sgd" and args.worker == "torch_curve":
        optimizer = torch.optim.SGD(parameters, lr=SGD_LEARNING_RATE, momentum=SGD_MOMENTUM)
    else:
        optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, eps=EPSILON)
    return model, optimizer


def torch_step(model, optimizer, tokens, labels, rows, width=None):
    import torch

    input_ids, attention_mask = padded(tokens, rows, width)
    optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=torch.as_tensor(input_ids, dtype=torch.long),
                 attention_mask=torch.as_tensor(attention_mask),
                 labels=torch.as_tensor(labels[rows], dtype=torch.long)).loss
    loss.backward()
    optimizer.step()
    return loss.item(), input_ids.size


def worker_torch(args):
    memory = AnonPeak()
    import torch

    tokens, labels = labelled_workload(args.num_seqs, args.max_length)
    model, optimizer = torch_model(args)
    lengths = [len(t) for t in tokens]
    fixed = args.batching == "fixed"

    def epoch(seed):
        if fixed:
            order = np.random.default_rng(seed).permutation(len(tokens)).tolist()
            batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        else:
            batches = length_grouped_batches(lengths, args.batch_size, seed)
        cells = 0
        for rows in batches:
            loss, size = torch_step(model, optimizer, tokens, labels, rows, args.max_length if fixed else None)
            cells += size
        return loss, cells

    epoch(0)
    start = time.perf_counter()
    cells = 0
    for index in range(args.epochs):
        last_loss, epoch_cells = epoch(1 + index)
        cells += epoch_cells
    seconds = time.perf_counter() - start
    real_tokens = sum(lengths)
    return {"tokens_per_s": args.epochs * real_tokens / seconds, "padding": 1 - args.epochs * real_tokens / cells,
            "last_loss": last_loss, "threads": torch.get_num_threads(), "peak_anon_mb": memory.peak_mb()}


def worker_torch_curve(args):
    tokens, labels = labelled_workload(args.num_seqs, args.max_length)
    model, optimizer = torch_model(args)
    if args.mode == "lora":  # hand PEFT's initial adapters to the tf_esm run: (layers, in, rank) per target
        initial = {}
        for target in args.lora_targets.split(","):
            per_layer = [module.lora_A["default"].weight.detach().numpy().T
                         for name, module in model.named_modules()
                         if name.endswith(f"attention.self.{target}") and hasattr(module, "lora_A")]
            initial[target] = np.stack(per_layer)
        np.savez(os.path.join(args.scratch, "lora_init.npz"), **initial)
    batches = length_grouped_batches([len(t) for t in tokens], args.batch_size, seed=0)[:args.curve_steps]
    return {"losses": [torch_step(model, optimizer, tokens, labels, rows)[0] for rows in batches]}


WORKERS = {"torch": worker_torch, "keras": worker_keras, "torch_curve": worker_torch_curve,
           "keras_curve": worker_keras_curve}


# ------------------------------------------------------------------------------------------------------- main
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="t12", choices=list(SHAPES))
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per sequence (and per packed row)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs, after one untimed")
    parser.add_argument("--modes", nargs="+", default=["full", "lora"], choices=("full", "lora"))
    parser.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=("off", "on"),
                        help="gradient checkpointing settings to run")
    parser.add_argument("--batching", nargs="+", default=["bucket", "pack"],
                        choices=("bucket", "pack", "group", "fixed"),
                        help="tf_esm batchings to run ('group': transformers' batches); transformers runs "
                             "length-grouped batches, or fixed ones when this is only 'fixed'")
    parser.add_argument("--batch-size", type=int, default=8, help="transformers' sequences per batch")
    parser.add_argument("--max-tokens-per-batch", type=int, default=4096, help="tf_esm's padded tokens per batch")
    parser.add_argument("--lora-targets", default="query,value")
    parser.add_argument("--jit-compile", default="false", choices=("auto", "true", "false"),
                        help="tf_esm model.compile(jit_compile=...)")
    parser.add_argument("--curve-steps", type=int, default=50, help="steps of the loss curves (0: none)")
    parser.add_argument("--curve-batch-size", type=int, help="sequences per step of the loss curves "
                        "(default --batch-size); the curves draw as many sequences of the workload as they need")
    parser.add_argument("--curve-optimizer", default="adamw", choices=("adamw", "sgd"),
                        help="the loss curves' optimizer: AdamW as the throughput runs (Keras and torch place Adam's "
                        "epsilon differently), or SGD with momentum (lr 1e-2, momentum 0.9), whose update is the same "
                        "formula in both, so the curves compare the models' gradients alone")
    parser.add_argument("--frameworks", nargs="+", default=["transformers", "tf_esm"],
                        choices=("transformers", "tf_esm", "none"), help="which frameworks' throughput runs "
                        "(none: the loss curves only, which always compare both)")
    parser.add_argument("--write", help="append the markdown tables to this file")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--gradient-checkpointing", help=argparse.SUPPRESS)
    parser.add_argument("--result-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.batching = args.batching[0]  # one per worker
        with open(args.result_out, "w") as handle:
            json.dump(WORKERS[args.worker](args), handle)
        return

    common = dict(num_seqs=args.num_seqs, max_length=args.max_length, epochs=args.epochs,
                  batch_size=args.batch_size, max_tokens_per_batch=args.max_tokens_per_batch,
                  lora_targets=args.lora_targets, jit_compile=args.jit_compile, curve_steps=args.curve_steps)
    rows, curves = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = os.path.join(scratch, "checkpoint")
        build_checkpoint(args.shape, checkpoint)
        common.update(checkpoint=checkpoint, scratch=scratch)
        torch_batching = "fixed" if args.batching == ["fixed"] else "group"
        for mode in args.modes:
            for checkpointing in args.checkpointing:
                setting = dict(common, mode=mode, gradient_checkpointing=checkpointing)
                torch_result = None
                if "transformers" in args.frameworks:
                    torch_result = spawn_script(__file__, "torch", batching=torch_batching, **setting)
                    print("transformers", mode, checkpointing, json.dumps(torch_result), flush=True)
                    rows.append(("transformers" + (" + PEFT" if mode == "lora" else ""), mode, checkpointing,
                                 "length-grouped" if torch_batching == "group" else "fixed", torch_result,
                                 torch_result))
                for batching in args.batching if "tf_esm" in args.frameworks else ():
                    result = spawn_script(__file__, "keras", batching=batching, **setting)
                    print("tf_esm", mode, checkpointing, batching, json.dumps(result), flush=True)
                    rows.append(("tf_esm model.fit", mode, checkpointing, batching, result, torch_result))
            if args.curve_steps:
                curve_batch = args.curve_batch_size or args.batch_size
                setting = dict(common, mode=mode, gradient_checkpointing="off", batching="group",
                               curve_optimizer=args.curve_optimizer,
                               batch_size=curve_batch, num_seqs=max(args.num_seqs, args.curve_steps * curve_batch))
                theirs = spawn_script(__file__, "torch_curve", **setting)["losses"]
                ours = spawn_script(__file__, "keras_curve", **setting)["losses"]
                curves[mode] = (theirs, ours)

    lines = [
        f"### Fine-tuning, CPU fp32: {SHAPE_NAMES[args.shape]} sequence classification, {args.num_seqs} sequences "
        f"of bench_embed's workload (at most {args.max_length} tokens)",
        "",
        "Command: `python benchmarks/bench_train.py " + " ".join(sys.argv[1:]) + "`. transformers: batches of "
        f"{args.batch_size} sequences, SDPA; tf_esm: at most {args.max_tokens_per_batch} padded tokens per batch "
        "(bucket), or rows of max-length tokens (pack). Tokens/s over real tokens; peak anonymous memory of each "
        "worker process.",
        "",
        "| framework | mode | gradient checkpointing | batching | tokens/s | vs transformers | padding | "
        "peak anon MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, mode, checkpointing, batching, result, baseline in rows:
        ratio = f"{result['tokens_per_s'] / baseline['tokens_per_s']:.2f}x" if baseline else "-"
        lines.append(f"| {name} | {mode} | {checkpointing} | {batching} | {result['tokens_per_s']:,.0f} | {ratio} | "
                     f"{result['padding']:.1%} | {result['peak_anon_mb']:,.0f} |")
    for mode, (theirs, ours) in curves.items():
        difference = max(abs(a - b) for a, b in zip(theirs, ours))
        optimizer = "SGD, lr 1e-2, momentum 0.9" if args.curve_optimizer == "sgd" else "AdamW as above"
        lines += ["", f"Loss curve, {mode}, first {len(theirs)} steps (same batches and initial weights, no "
                      f"dropout; {optimizer}): largest difference {difference:.2e}", "",
                  "| step | transformers | tf_esm |", "|---|---|---|"]
        lines += [f"| {step} | {a:.6f} | {b:.6f} |" for step, (a, b) in enumerate(zip(theirs, ours), start=1)]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        with open(args.write, "a") as handle:
            handle.write("\n" + table)


if __name__ == "__main__":
    main()
