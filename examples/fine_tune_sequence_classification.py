"""Fine-tune an ESM model to classify (or regress on) whole protein sequences, with `model.fit`.

Input: a CSV/TSV table with a `sequence` column and a `label` column. The label kind is read from the values:
class names (`soluble`) or integer ids (`0`, `1`) -> single-label classification; floats (`0.73`) -> regression;
space-separated numbers (`1 0 1`) -> multi-label classification. The model's built-in loss follows from it (as in
transformers: cross-entropy, MSE, binary cross-entropy), so the model is compiled with no Keras loss.

The head is new; the encoder comes from `--model`. `--freeze-encoder` trains only the head; `--lora-rank R` adds
rank-R LoRA adapters to the attention projections and trains those and the head. The result is written with
`save_pretrained` (config.json with the label names, weights, vocab.txt), loadable by `tf_esm` and, with
`--format safetensors`, by PyTorch transformers; with LoRA the adapter is also saved on its own.

Usage:

    python examples/fine_tune_sequence_classification.py --model facebook/esm2_t6_8M_UR50D \
        --train examples/data/classification_toy.csv --output-dir esm_classifier --epochs 5
"""

from __future__ import annotations

import tf_esm

tf_esm.import_tensorflow_quietly()  # first: TensorFlow prints its C++ start-up lines when it is imported

import sys

import keras

from tf_esm import TFEsmForSequenceClassification
from tf_esm.pipelines.data import make_dataset, read_table

# examples/_common.py: the script's own folder is on sys.path.
from _common import dataset_options, fine_tune, save_and_report, set_up_run
from _common import parse_training_args, training_parser


def parse_args(argv=None):
    parser = training_parser(__doc__, train_help="training table (.csv or .tsv)",
                             validation_help="validation table; monitors val_loss and keeps the best epoch",
                             output_help="where the fine-tuned model is saved", learning_rate=1e-3,
                             label_column="label")
    return parse_training_args(parser, argv)


def head_settings(records):
    """num_labels, problem_type and id2label for the labels read from the table."""
    first = records.labels[0]
    if isinstance(first, list):
        return len(first), "multi_label_classification", None
    if isinstance(first, float):
        return 1, "regression", None
    names = records.label_names or [str(i) for i in range(max(records.labels) + 1)]
    return len(names), "single_label_classification", dict(enumerate(names))


def task_metrics(problem_type):
    if problem_type == "single_label_classification":
        return ["accuracy"]
    if problem_type == "multi_label_classification":
        return [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")]  # on logits
    return [keras.metrics.MeanAbsoluteError(name="mae")]


def main(argv=None):
    args = parse_args(argv)
    tokenizer = set_up_run(args)
    columns = dict(sequence_column=args.sequence_column, label_column=args.label_column, task="sequence")
    train_records = read_table(args.train, **columns)
    num_labels, problem_type, id2label = head_settings(train_records)
    overrides = dict(num_labels=num_labels, problem_type=problem_type)
    if id2label is not None:
        overrides["id2label"] = id2label
    model = TFEsmForSequenceClassification.from_pretrained(args.model, **overrides)

    batching = dataset_options(args, tokenizer, model)
    train = make_dataset(train_records, shuffle=True, seed=args.seed, **batching)
    validation = None
    if args.validation:
        label_names = train_records.label_names
        validation = make_dataset(read_table(args.validation, label_names=label_names, **columns), **batching)
    history = fine_tune(model, args, train, validation, metrics=task_metrics(problem_type))

    save_and_report(model, args, tokenizer, history, validation, problem_type=problem_type, num_labels=num_labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
