"""What the training examples share: their common command-line options, the run set-up, `fit`, saving and the
JSON summary. Not an example itself; the scripts beside it import it (`python examples/X.py` puts this folder on
`sys.path`, from any working directory).
"""

from __future__ import annotations

import argparse
import json
import os

import keras

from tf_esm.pipelines.data import resolve_tokenizer
from tf_esm.pipelines.export import default_max_length


def training_parser(doc, *, train_help, validation_help, output_help, learning_rate, label_column=None,
                    truncation_help=None):
    """The options every training example takes. With `label_column` (its default) the fine-tuning options are
    added too: the table's columns, `--freeze-encoder` and `--lora-rank`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="hub id or local model directory (with vocab.txt)")
    parser.add_argument("--train", required=True, help=train_help)
    parser.add_argument("--validation", help=validation_help)
    parser.add_argument("--output-dir", required=True, help=output_help)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the model files in a non-empty --output-dir (refused otherwise)")
    if label_column is not None:
        parser.add_argument("--sequence-column", default="sequence")
        parser.add_argument("--label-column", default=label_column)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=learning_rate)
    parser.add_argument("--max-length", type=int, default=None,
                        help="longest input in tokens, <cls>/<eos> included (default: the model's limit)")
    parser.add_argument("--truncation", choices=("error", "warn"), default="error", help=truncation_help)
    if label_column is not None:
        parser.add_argument("--freeze-encoder", action="store_true", help="train only the classification head")
        parser.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (0: off)")
    parser.add_argument("--mixed-precision", choices=("mixed_bfloat16", "mixed_float16"),
                        help="Keras dtype policy for training")
    parser.add_argument("--jit-compile", action="store_true", help="compile the train step with XLA")
    parser.add_argument("--format", choices=("h5", "safetensors"), default="h5", help="weights file format")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def parse_training_args(parser, argv=None):
    """Parse; refuse a non-empty --output-dir now rather than after training, and --freeze-encoder with
    --lora-rank."""
    args = parser.parse_args(argv)
    from tf_esm.storage.atomic import check_target

    check_target(args.output_dir, args.overwrite)
    if getattr(args, "freeze_encoder", False) and getattr(args, "lora_rank", 0):
        parser.error("--freeze-encoder and --lora-rank are exclusive (LoRA already freezes the encoder)")
    return args


def set_up_run(args):
    """Seed everything, set the dtype policy; return the model's tokenizer."""
    keras.utils.set_random_seed(args.seed)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(args.mixed_precision)
    return resolve_tokenizer(args.model)


def dataset_options(args, tokenizer, model, **options):
    """`make_dataset` arguments: the tokenizer, --max-length (default: the model's limit), --truncation and
    --batch-size, plus `options`."""
    max_length = args.max_length if args.max_length is not None else default_max_length(model.config)
    return dict(tokenizer=tokenizer, max_length=max_length, truncation=args.truncation, batch_size=args.batch_size,
                **options)


def fine_tune(model, args, train, validation, metrics):
    """--freeze-encoder / --lora-rank, then `fit` (early stopping on val_loss with validation data)."""
    if args.freeze_encoder:
        model.esm.trainable = False
    if args.lora_rank:
        model.enable_lora(args.lora_rank)
    callbacks = []
    if validation is not None:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True))
    return fit(model, args, train, validation, metrics, callbacks)


def fit(model, args, train, validation, metrics, callbacks=()):
    """Compile with AdamW and no Keras loss (the model's built-in loss; labels come as the dataset's targets)."""
    model.compile(optimizer=keras.optimizers.AdamW(args.learning_rate), metrics=metrics,
                  jit_compile=args.jit_compile)
    return model.fit(train, validation_data=validation, epochs=args.epochs, callbacks=list(callbacks), verbose=2)


def save(model, args, tokenizer):
    """`save_pretrained` into --output-dir; with --lora-rank the merged model, and the adapter on its own."""
    os.makedirs(args.output_dir, exist_ok=True)
    if getattr(args, "lora_rank", 0):
        from tf_esm.modeling.lora import merge_lora

        merge_lora(model).save_pretrained(args.output_dir, format=args.format, tokenizer=tokenizer,
                                          overwrite=args.overwrite)
        model.save_lora_weights(os.path.join(args.output_dir, "lora_adapter.safetensors"))
    else:
        model.save_pretrained(args.output_dir, format=args.format, tokenizer=tokenizer, overwrite=args.overwrite)


def evaluate(model, dataset):
    """`model.evaluate` as a dict of floats."""
    return {name: float(value) for name, value in model.evaluate(dataset, verbose=0, return_dict=True).items()}


def save_and_report(model, args, tokenizer, history, validation, validation_summary=evaluate, **summary):
    """Save the model (`save`), then print one JSON line: `summary`'s items, the per-epoch history, the output
    directory and, with validation data, `validation_summary(model, validation)`."""
    save(model, args, tokenizer)
    summary.update(history={name: [float(value) for value in values] for name, values in history.history.items()},
                   output_dir=args.output_dir)
    if validation is not None:
        summary["validation"] = validation_summary(model, validation)
    print(json.dumps(summary))
