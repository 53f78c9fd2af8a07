"""Continue the masked-language-model pre-training of an ESM model on your own proteins, with `model.fit`.

Input: FASTA files. Each epoch draws a new mask (`tf_esm.data.MlmMasking`): 15% of the residues are selected; of
those 80% become `<mask>`, 10% a random amino acid and 10% stay unchanged; the loss is the cross-entropy at the
selected positions (labels -100 elsewhere), the model's built-in loss. Reported: loss, masked-token accuracy and,
with `--validation`, the validation perplexity exp(loss). The model is saved with `save_pretrained` (`--format
safetensors` also loads in PyTorch transformers).

Usage:

    python examples/continue_pretraining_mlm.py --model facebook/esm2_t6_8M_UR50D \
        --train examples/data/mlm_toy.fasta --output-dir esm_continued --epochs 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import keras

from tf_esm import TFEsmForMaskedLM
from tf_esm.data import MlmMasking, make_dataset, read_fasta_records, resolve_tokenizer
from tf_esm.export import default_max_length


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="hub id or local model directory (with vocab.txt)")
    parser.add_argument("--train", required=True, help="training FASTA file")
    parser.add_argument("--validation", help="validation FASTA file (masked with a fixed seed)")
    parser.add_argument("--output-dir", required=True, help="where the model is saved")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the model files in a non-empty --output-dir (refused otherwise)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--token-budget", type=int, help="instead of --batch-size: padded tokens per batch")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--mlm-probability", type=float, default=0.15, help="fraction of residues selected")
    parser.add_argument("--max-length", type=int, default=None,
                        help="longest input in tokens, <cls>/<eos> included (default: the model's limit)")
    parser.add_argument("--truncation", choices=("error", "warn"), default="error")
    parser.add_argument("--mixed-precision", choices=("mixed_bfloat16", "mixed_float16"))
    parser.add_argument("--jit-compile", action="store_true", help="compile the train step with XLA")
    parser.add_argument("--format", choices=("h5", "safetensors"), default="h5", help="weights file format")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from tf_esm.atomic import check_target

    check_target(args.output_dir, args.overwrite)  # refuse now rather than after training
    if args.token_budget is not None:
        args.batch_size = None
    return args


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(args.mixed_precision)

    tokenizer = resolve_tokenizer(args.model)
    model = TFEsmForMaskedLM.from_pretrained(args.model)
    max_length = args.max_length if args.max_length is not None else default_max_length(model.config)
    batching = dict(tokenizer=tokenizer, max_length=max_length, truncation=args.truncation,
                    batch_size=args.batch_size, token_budget=args.token_budget)
    masking = MlmMasking(tokenizer, probability=args.mlm_probability, seed=args.seed)
    train = make_dataset(read_fasta_records(args.train), shuffle=True, seed=args.seed, mlm=masking, **batching)
    validation = None
    if args.validation:
        # A fixed mask for validation: cache the first masked pass.
        fixed = MlmMasking(tokenizer, probability=args.mlm_probability, seed=args.seed + 1)
        validation = make_dataset(read_fasta_records(args.validation), mlm=fixed, **batching).cache()

    model.compile(optimizer=keras.optimizers.AdamW(args.learning_rate), metrics=["accuracy"],
                  jit_compile=args.jit_compile)
    history = model.fit(train, validation_data=validation, epochs=args.epochs, verbose=2)

    os.makedirs(args.output_dir, exist_ok=True)
    model.save_pretrained(args.output_dir, format=args.format, tokenizer=tokenizer, overwrite=args.overwrite)
    summary = {"history": {name: [float(value) for value in values] for name, values in history.history.items()},
               "output_dir": args.output_dir}
    if validation is not None:
        results = model.evaluate(validation, verbose=0, return_dict=True)
        summary["validation"] = {"loss": float(results["loss"]), "accuracy": float(results["accuracy"]),
                                 "perplexity": math.exp(float(results["loss"]))}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
