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

import tf_esm

tf_esm.import_tensorflow_quietly()  # first: TensorFlow prints its C++ start-up lines when it is imported

import sys

from tf_esm import TFEsmForTokenClassification
from tf_esm.pipelines.data import make_dataset, read_table

# examples/_common.py: the script's own folder is on sys.path.
from _common import dataset_options, fine_tune, save_and_report, set_up_run
from _common import parse_training_args, training_parser


def parse_args(argv=None):
    parser = training_parser(
        __doc__, train_help="training table (.csv or .tsv)",
        validation_help="validation table; monitors val_loss and keeps the best epoch",
        output_help="where the fine-tuned model is saved", learning_rate=1e-3, label_column="labels",
        truncation_help="longer sequences: stop with an error naming the record, or cut them and their labels")
    return parse_training_args(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    tokenizer = set_up_run(args)
    columns = dict(sequence_column=args.sequence_column, label_column=args.label_column, task="token")
    train_records = read_table(args.train, **columns)
    if train_records.label_names is not None:
        names = train_records.label_names
    else:  # integer labels
        names = [str(i) for i in range(max(max(labels) for labels in train_records.labels) + 1)]
    model = TFEsmForTokenClassification.from_pretrained(args.model, id2label=dict(enumerate(names)))

    batching = dataset_options(args, tokenizer, model)
    train = make_dataset(train_records, shuffle=True, seed=args.seed, **batching)
    validation = None
    if args.validation:
        records = read_table(args.validation, label_names=train_records.label_names, **columns)
        validation = make_dataset(records, **batching)
    history = fine_tune(model, args, train, validation, metrics=["accuracy"])

    save_and_report(model, args, tokenizer, history, validation, label_names=names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
