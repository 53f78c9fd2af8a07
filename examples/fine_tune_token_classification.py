"""Fine-tune an ESM model to label every residue (secondary structure, binding sites, ...), with `model.fit`.

Input: a CSV/TSV table with a `sequence` column and a `labels` column holding one label per residue, either one
character per residue (`HHHEEC`) or space-separated (`helix helix coil`). Names are numbered in sorted order and
stored in the saved config (`id2label`); `-100` marks a residue to ignore. `<cls>`, `<eos>` and padding get -100
too, and the model's built-in loss (cross-entropy over the labelled residues, as in transformers) is used; the
accuracy metric also skips them.

Usage:

    python examples/fine_tune_token_classification.py --model facebook/esm2_t6_8M_UR50D \
        --train examples/data/token_classification_toy.csv --output-dir esm_token_classifier --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import keras

from tf_esm import TFEsmForTokenClassification
from tf_esm.data import make_dataset, read_table, resolve_tokenizer
from tf_esm.export import default_max_length


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="hub id or local model directory (with vocab.txt)")
    parser.add_argument("--train", required=True, help="training table (.csv or .tsv)")
    parser.add_argument("--validation", help="validation table; monitors val_loss and keeps the best epoch")
    parser.add_argument("--output-dir", required=True, help="where the fine-tuned model is saved")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the model files in a non-empty --output-dir (refused otherwise)")
    parser.add_argument("--sequence-column", default="sequence")
    parser.add_argument("--label-column", default="labels")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=None,
                        help="longest input in tokens, <cls>/<eos> included (default: the model's limit)")
    parser.add_argument("--truncation", choices=("error", "warn"), default="error",
                        help="longer sequences: stop with an error naming the record, or cut them and their labels")
    parser.add_argument("--freeze-encoder", action="store_true", help="train only the classification head")
    parser.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (0: off)")
    parser.add_argument("--mixed-precision", choices=("mixed_bfloat16", "mixed_float16"))
    parser.add_argument("--jit-compile", action="store_true", help="compile the train step with XLA")
    parser.add_argument("--format", choices=("h5", "safetensors"), default="h5", help="weights file format")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from tf_esm.atomic import check_target

    check_target(args.output_dir, args.overwrite)  # refuse now rather than after training
    if args.freeze_encoder and args.lora_rank:
        parser.error("--freeze-encoder and --lora-rank are exclusive (LoRA already freezes the encoder)")
    return args


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(args.mixed_precision)

    tokenizer = resolve_tokenizer(args.model)
    columns = dict(sequence_column=args.sequence_column, label_column=args.label_column, task="token")
    train_records = read_table(args.train, **columns)
    if train_records.label_names is not None:
        names = train_records.label_names
    else:  # integer labels
        names = [str(i) for i in range(max(max(labels) for labels in train_records.labels) + 1)]
    model = TFEsmForTokenClassification.from_pretrained(args.model, id2label=dict(enumerate(names)))

    max_length = args.max_length if args.max_length is not None else default_max_length(model.config)
    batching = dict(tokenizer=tokenizer, max_length=max_length, truncation=args.truncation,
                    batch_size=args.batch_size)
    train = make_dataset(train_records, shuffle=True, seed=args.seed, **batching)
    validation = None
    callbacks = []
    if args.validation:
        records = read_table(args.validation, label_names=train_records.label_names, **columns)
        validation = make_dataset(records, **batching)
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True))

    if args.freeze_encoder:
        model.esm.trainable = False
    if args.lora_rank:
        model.enable_lora(args.lora_rank)
    model.compile(optimizer=keras.optimizers.AdamW(args.learning_rate), metrics=["accuracy"],
                  jit_compile=args.jit_compile)
    history = model.fit(train, validation_data=validation, epochs=args.epochs, callbacks=callbacks, verbose=2)

    os.makedirs(args.output_dir, exist_ok=True)
    if args.lora_rank:
        from tf_esm.training import merge_lora

        merge_lora(model).save_pretrained(args.output_dir, format=args.format, tokenizer=tokenizer,
                                          overwrite=args.overwrite)
        model.save_lora_weights(os.path.join(args.output_dir, "lora_adapter.safetensors"))
    else:
        model.save_pretrained(args.output_dir, format=args.format, tokenizer=tokenizer, overwrite=args.overwrite)
    summary = {"label_names": names,
               "history": {name: [float(value) for value in values] for name, values in history.history.items()},
               "output_dir": args.output_dir}
    if validation is not None:
        summary["validation"] = {name: float(value) for name, value in
                                 model.evaluate(validation, verbose=0, return_dict=True).items()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
