"""Embed the proteins of a FASTA file with an ESM model through a `tf.data` pipeline.

FASTA -> `tf_esm.pipelines.data` (validation, tokenization, length-bucketed batches) -> `TFEsmModel` -> per-sequence
embeddings (mean over residues, `<cls>`/`<eos>`/padding excluded), written in FASTA order as

* `.npy`: a float32 array `[records, hidden]`, with the record ids in `<output stem>.ids.txt` next to it;
* `.h5`: datasets `ids`, `sequence_embeddings` `[records, hidden]` and, with `--per-residue`,
  `residue_embeddings` `[total residues, hidden]` with `residue_offsets` `[records + 1]` (record `i` is
  `residue_embeddings[residue_offsets[i]:residue_offsets[i + 1]]`).

Usage:

    python examples/embed_in_tf_data.py --model facebook/esm2_t6_8M_UR50D \
        --fasta examples/data/proteins.fasta --output embeddings.h5 --per-residue
"""

from __future__ import annotations

import tf_esm

tf_esm.import_tensorflow_quietly()  # first: TensorFlow prints its C++ start-up lines when it is imported

import argparse
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

from tf_esm import TFEsmModel
from tf_esm.pipelines.data import make_dataset, read_fasta_records
from tf_esm.pipelines.export import default_max_length, mean_over_residues, residue_mask


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="hub id or local model directory (with vocab.txt)")
    parser.add_argument("--fasta", required=True, help="input FASTA file")
    parser.add_argument("--output", required=True, help="output file: .npy or .h5")
    batching = parser.add_mutually_exclusive_group()
    batching.add_argument("--batch-size", type=int, help="sequences per batch (default 8)")
    batching.add_argument("--max-tokens-per-batch", type=int, help="at most this many padded tokens per batch")
    parser.add_argument("--max-length", type=int, default=None,
                        help="longest input in tokens, <cls>/<eos> included (default: the model's limit)")
    parser.add_argument("--truncation", choices=("error", "warn"), default="error",
                        help="longer sequences: stop with an error naming the record, or truncate with a warning")
    parser.add_argument("--per-residue", action="store_true", help="also write per-residue embeddings (.h5 only)")
    parser.add_argument("--in-graph-tokenizer", action="store_true", help="tokenize with TensorFlow ops")
    args = parser.parse_args(argv)
    extension = os.path.splitext(args.output)[1].lower()
    if extension not in (".npy", ".h5", ".hdf5"):
        parser.error(f"--output must end in .npy or .h5, got {args.output!r}")
    if args.per_residue and extension == ".npy":
        parser.error("--per-residue needs an .h5 output")
    return args


def embed(model, dataset, special_ids, count, per_residue):
    """Run `model` over `dataset` (features carry `record_index`); return embeddings in record order."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2)
    def forward(input_ids, attention_mask):
        hidden = tf.cast(model(input_ids, attention_mask=attention_mask).last_hidden_state, tf.float32)
        mask = residue_mask(input_ids, attention_mask, special_ids)
        return mean_over_residues(hidden, mask), hidden, mask

    sequence_embeddings = np.zeros((count, model.config.hidden_size), np.float32)
    residues = [None] * count
    for features in dataset:
        index = features.pop("record_index").numpy()
        pooled, hidden, mask = forward(features["input_ids"], features["attention_mask"])
        sequence_embeddings[index] = pooled.numpy()
        if per_residue:
            for row, record in enumerate(index):
                residues[record] = hidden[row].numpy()[mask[row].numpy().astype(bool)]
    return sequence_embeddings, residues


def write_output(path, ids, sequence_embeddings, residues):
    """Write through a temporary file in the output directory and a rename."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    extension = os.path.splitext(path)[1].lower()
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=extension, dir=directory)
    os.close(fd)
    try:
        if extension == ".npy":
            np.save(temporary, sequence_embeddings)
            ids_path = os.path.splitext(path)[0] + ".ids.txt"
            with open(ids_path + ".tmp", "w", encoding="utf-8") as handle:
                handle.write("\n".join(ids) + "\n")
            os.replace(ids_path + ".tmp", ids_path)
        else:
            import h5py

            with h5py.File(temporary, "w") as handle:
                handle.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
                handle.create_dataset("sequence_embeddings", data=sequence_embeddings)
                if residues[0] is not None:
                    offsets = np.cumsum([0] + [len(item) for item in residues]).astype(np.int64)
                    handle.create_dataset("residue_embeddings", data=np.concatenate(residues, axis=0))
                    handle.create_dataset("residue_offsets", data=offsets)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def main(argv=None):
    args = parse_args(argv)
    from tf_esm.pipelines.data import resolve_tokenizer

    tokenizer = resolve_tokenizer(args.model)
    model = TFEsmModel.from_pretrained(args.model, add_pooling_layer=False)
    max_length = args.max_length if args.max_length is not None else default_max_length(model.config)
    records = read_fasta_records(args.fasta)
    dataset = make_dataset(records, tokenizer=tokenizer, in_graph=args.in_graph_tokenizer, max_length=max_length,
                           truncation=args.truncation, batch_size=args.batch_size,
                           max_tokens_per_batch=args.max_tokens_per_batch, return_index=True)
    special_ids = [tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    sequence_embeddings, residues = embed(model, dataset, special_ids, len(records), args.per_residue)
    write_output(args.output, records.ids, sequence_embeddings, residues)
    print(f"Wrote {len(records)} embeddings of size {sequence_embeddings.shape[1]} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
