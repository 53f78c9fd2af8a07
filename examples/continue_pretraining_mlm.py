"""Continue the masked-language-model pre-training of an ESM model on your own proteins, with `model.fit`.

Input: FASTA files. Each epoch draws a new mask (`tf_esm.pipelines.data.MlmMasking`): 15% of the residues are selected; of
those 80% become `<mask>`, 10% a random amino acid and 10% stay unchanged; the loss is the cross-entropy at the
selected positions (labels -100 elsewhere), the model's built-in loss. Reported: loss, masked-token accuracy and,
with `--validation`, the validation perplexity exp(loss). The model is saved with `save_pretrained` (`--format
safetensors` also loads in PyTorch transformers).

Usage:

    python examples/continue_pretraining_mlm.py --model facebook/esm2_t6_8M_UR50D \
        --train examples/data/mlm_toy.fasta --output-dir esm_continued --epochs 5
"""

from __future__ import annotations

import tf_esm

tf_esm.import_tensorflow_quietly()  # first: TensorFlow prints its C++ start-up lines when it is imported

import math
import sys

from tf_esm import TFEsmForMaskedLM
from tf_esm.pipelines.data import MlmMasking, make_dataset, read_fasta_records

# examples/_common.py: the script's own folder is on sys.path.
from _common import dataset_options, evaluate, fit, save_and_report, set_up_run
from _common import parse_training_args, training_parser


def parse_args(argv=None):
    parser = training_parser(__doc__, train_help="training FASTA file",
                             validation_help="validation FASTA file (masked with a fixed seed)",
                             output_help="where the model is saved", learning_rate=1e-4)
    parser.add_argument("--max-tokens-per-batch", type=int, help="instead of --batch-size: padded tokens per batch")
    parser.add_argument("--mlm-probability", type=float, default=0.15, help="fraction of residues selected")
    args = parse_training_args(parser, argv)
    if args.max_tokens_per_batch is not None:
        args.batch_size = None
    return args


def perplexity(model, validation):
    """Validation loss, masked-token accuracy and perplexity exp(loss)."""
    results = evaluate(model, validation)
    return {"loss": results["loss"], "accuracy": results["accuracy"], "perplexity": math.exp(results["loss"])}


def main(argv=None):
    args = parse_args(argv)
    tokenizer = set_up_run(args)
    model = TFEsmForMaskedLM.from_pretrained(args.model)
    batching = dataset_options(args, tokenizer, model, max_tokens_per_batch=args.max_tokens_per_batch)
    masking = MlmMasking(tokenizer, probability=args.mlm_probability, seed=args.seed)
    train = make_dataset(read_fasta_records(args.train), shuffle=True, seed=args.seed, mlm=masking, **batching)
    validation = None
    if args.validation:
        # A fixed mask for validation: cache the first masked pass.
        fixed = MlmMasking(tokenizer, probability=args.mlm_probability, seed=args.seed + 1)
        validation = make_dataset(read_fasta_records(args.validation), mlm=fixed, **batching).cache()
    history = fit(model, args, train, validation, metrics=["accuracy"])

    save_and_report(model, args, tokenizer, history, validation, validation_summary=perplexity)
    return 0


if __name__ == "__main__":
    sys.exit(main())
