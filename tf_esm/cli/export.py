"""`tf-esm export`: a model as a TensorFlow SavedModel for TF Serving."""

from __future__ import annotations

import argparse
import os

from tf_esm.cli.common import EXIT_FAILURE, CliError, add_model_argument, check_model_packages, load_model, positive_int

NAME = "export"
HELP = "Export a model as a TensorFlow SavedModel for TF Serving."
EPILOG = """\
Writes a TensorFlow SavedModel for TF Serving with two signatures: serving_default (a string tensor of protein
sequences, tokenized in the graph) and token_ids (input_ids, attention_mask). Outputs: sequence_embedding,
residue_embeddings, residue_mask, plus logits/probabilities for task models. DIR is written to a temporary
directory and renamed. See tf_esm.pipelines.export.

examples:
  tf-esm export facebook/esm2_t6_8M_UR50D serving/esm2/1
  tf-esm export ./my_classifier serving/classifier/1 --max-length 1024 --overwrite
"""


def check_arguments(args, console):
    """Before TensorFlow starts: torch, where MODEL is read with it."""
    check_model_packages(args.model)


def add_arguments(parser):
    add_model_argument(parser)
    parser.add_argument("dir", metavar="DIR", help="SavedModel directory, e.g. serving/esm2/1")
    parser.add_argument("--max-length", default="auto", metavar="N|auto|none",
                        help="longest request in tokens; auto: the position table's limit for absolute "
                             "positions, none for rotary ones")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")


def _max_length(value):
    text = str(value).lower()
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise CliError(f"--max-length: expected a positive integer, 'auto' or 'none', got {value!r}.") from None


def run(args, console):
    try:
        from tf_esm.pipelines.export import export_saved_model
    except ImportError as error:
        raise CliError(f"'export' needs tf_esm.pipelines.export, which cannot be imported here: {error}",
                       code=EXIT_FAILURE) from None
    max_length = _max_length(args.max_length)
    model = args.model
    if model.endswith((".pt", ".pth")) and os.path.isfile(model):
        model = load_model(model)
    try:
        path = export_saved_model(model, args.dir, max_length=max_length, overwrite=args.overwrite)
    except FileExistsError as error:
        raise CliError(str(error).replace("overwrite=True", "--overwrite")) from None
    console.info(f"exported {args.model} as a SavedModel to {path}.")
    return 0
