"""Export an ESM model as a SavedModel for TensorFlow Serving, then try it and print example REST requests.

The export has two signatures (see `tf_esm.pipelines.export`): `serving_default` takes raw protein strings, `token_ids` takes
`input_ids` + `attention_mask`; both return `sequence_embedding`, `residue_embeddings`, `residue_mask` and, for
task models, `logits` (and `probabilities` for classifiers).

Usage:

    python examples/export_for_tf_serving.py --model facebook/esm2_t6_8M_UR50D --output serving/esm2/1
    docker run -p 8501:8501 -v "$PWD/serving/esm2:/models/esm2" -e MODEL_NAME=esm2 tensorflow/serving
    curl -d '{"instances": ["MKTAYIAKQR", "GYDPETGTWG"]}' http://localhost:8501/v1/models/esm2:predict
"""

from __future__ import annotations

import tf_esm

tf_esm.import_tensorflow_quietly()  # first: TensorFlow prints its C++ start-up lines when it is imported

import argparse
import json
import sys

from tf_esm.pipelines.export import export_pretrained
from tf_esm.modeling import (
    TFEsmForMaskedLM,
    TFEsmForSequenceClassification,
    TFEsmForTokenClassification,
    TFEsmModel,
)

MODEL_CLASSES = {
    "auto": None,
    "base": TFEsmModel,
    "masked-lm": TFEsmForMaskedLM,
    "sequence-classification": TFEsmForSequenceClassification,
    "token-classification": TFEsmForTokenClassification,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="hub id or local model directory")
    parser.add_argument("--output", required=True, help="export directory, e.g. serving/esm2/1")
    parser.add_argument("--model-class", choices=sorted(MODEL_CLASSES), default="auto",
                        help="which head to export (auto: the architecture named in config.json)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="reject longer requests (tokens, <cls>/<eos> included); default: the model's limit")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty export directory")
    parser.add_argument("--check", nargs="*", default=["MKTAYIAKQR", "GYDPETGTWG"], metavar="SEQUENCE",
                        help="sequences to run through the exported model after writing it")
    return parser.parse_args(argv)


def rest_requests(sequences, tokenizer):
    """The TF Serving REST bodies for both signatures (POST to /v1/models/<name>:predict)."""
    encoded = tokenizer(list(sequences), padding=True)
    return {
        "serving_default": {"instances": list(sequences)},
        "token_ids": {"signature_name": "token_ids",
                      "inputs": {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}},
    }


def main(argv=None):
    args = parse_args(argv)
    kwargs = {"overwrite": args.overwrite}
    if args.max_length is not None:
        kwargs["max_length"] = args.max_length
    path = export_pretrained(args.model, args.output, model_class=MODEL_CLASSES[args.model_class], **kwargs)
    print(f"Exported to {path}")

    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    for name, function in loaded.signatures.items():
        inputs = sorted(function.structured_input_signature[1])
        outputs = {key: spec.shape.as_list() for key, spec in sorted(function.structured_outputs.items())}
        print(f"signature {name}: inputs {inputs} -> outputs {outputs}")
    if args.check:
        results = loaded.signatures["serving_default"](sequences=tf.constant(args.check))
        for key in sorted(results):
            print(f"  {key}: shape {results[key].shape.as_list()}")
    from tf_esm.pipelines.data import resolve_tokenizer
    from tf_esm.storage.hub import ModelNotFoundError

    try:
        tokenizer = resolve_tokenizer(args.model)
    except ModelNotFoundError:  # no vocab.txt: the export used config.vocab_list or the ESM-2 vocabulary
        tokenizer = resolve_tokenizer(None)
    print("Example TF Serving REST request bodies:")
    for name, body in rest_requests(args.check or ["MKTAYIAKQR"], tokenizer).items():
        print(f"  {name}: {json.dumps(body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
