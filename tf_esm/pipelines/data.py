"""`tf.data` pipelines for ESM models: FASTA, CSV/TSV or Python lists -> batched `(features, labels)` for `fit`.

The flow, one step per function (steps 1 and 2 live in `tf_esm.pipelines.records`, which needs no TensorFlow):

1. **Read** into `SequenceRecords` (`read_fasta_records`, `read_table`, `records_from_lists`). Every sequence goes
   through `tf_esm.io.fasta.clean_sequence` (upper-cased, whitespace and a trailing `*` removed; any other character
   outside the 25 residue letters and `-` `.` is a `FastaError` naming the record, the 1-based position and the
   character). Labels are parsed here, and errors name the record.
2. **Length policy** (`max_length` counts `<cls>` and `<eos>`): a sequence longer than `max_length - 2` residues
   raises `SequenceTooLongError` naming the record (`truncation="error"`, the default), or is cut to its first
   `max_length - 2` residues, per-residue labels included, with one warning naming the truncated records
   (`truncation="warn"`). `max_length=None` means no limit.
3. **Tokenize**: with `EsmTokenizer` in Python (default), or in the graph with `tf_esm.graph_tokenizer` inside
   `Dataset.map` (`in_graph=True`); both give the same ids, `<cls> residues <eos>`.
4. **Align labels** for token tasks: `[-100] + residue labels + [-100]` (the `<cls>` shift), padded with -100.
5. **Shuffle** (optional), **batch by length** (`bucket_by_sequence_length`; a fixed `batch_size` per bucket, or a
   `max_tokens_per_batch` so that batch rows x padded length stays under the budget) or **pack** (`pack_length`:
   several proteins per row, `tf_esm.pipelines.packing`), **mask for MLM** (optional, `MlmMasking`, re-drawn
   every epoch) and **prefetch**.

Packed rows (`pack_length=N`) waste almost nothing on padding: every row is N tokens holding whole proteins (each
`<cls> residues <eos>`, never split), placed by best-fit decreasing; the features gain `sequence_id` (the
protein's number in its row, -1 for padding), which the models read as separate proteins
(`tf_esm.modeling.packing`): each protein gets the logits and loss it gets alone. Labels follow the tokens: per
token for token tasks and masked LM; for sequence tasks each protein's label at its first token (`<cls>`), -100
(class ids) or 0 (float targets) elsewhere, which is where the sequence-classification model puts each
protein's logits.

Elements are `({"input_ids", "attention_mask"}, labels)` with int32 ids and mask (padding: `<pad>` id and 0), or
just the features dict for unlabelled data. Labels are int32 class ids, float32 regression targets or float32
multi-label vectors per sequence, or int32 per-token ids with -100 at `<cls>`, `<eos>` and padding.

Examples:

>>> dataset = sequences_dataset(["MKTAYIAK", "GVL", "MKV"], labels=[1, 0, 1], batch_size=2)
>>> features, labels = next(iter(dataset))
>>> sorted(features)
['attention_mask', 'input_ids']
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tf_esm.backend import require_tensorflow

tf = require_tensorflow("tf_esm.pipelines.data (tf.data pipelines)")

from tf_esm._deprecation import renamed_keywords
from tf_esm.configuration import IGNORE_INDEX
from tf_esm.io.fasta import FastaError
from tf_esm.modeling.dataset_tf import without_autotune_stall
from tf_esm.pipelines.packing import packed_arrays
from tf_esm.pipelines.records import (  # noqa: F401  (the reading half, importable from tf_esm.pipelines.data as before)
    STANDARD_RESIDUES,
    TASKS,
    TRUNCATION_POLICIES,
    LabelError,
    SequenceRecords,
    SequenceTooLongError,
    apply_length_policy,
    read_fasta_records,
    read_table,
    records_from_lists,
)
from tf_esm.tokenization import resolve_tokenizer  # noqa: F401  (tf_esm.pipelines.data.resolve_tokenizer, its older home)

# ---------------------------------------------------------------------------------------------------- tokenizing


def _check_vocabulary(records, tokenizer):
    """Each residue must be one vocabulary token, or token labels would not line up with the ids."""
    vocab = set(tokenizer.get_vocab())
    for sequence, name in zip(records.sequences, records.ids):
        if not sequence:  # hand-built SequenceRecords skip clean_sequence; <cls><eos> alone is no protein
            raise FastaError(f"{name}: the sequence is empty.")
        for position, char in enumerate(sequence, start=1):
            if char not in vocab:
                raise FastaError(f"{name}: character {char!r} at position {position} is not in the tokenizer's "
                                 f"vocabulary ({tokenizer.vocab_file or getattr(tokenizer, 'tokenizer_file', None) or 'ESM C'}).")


def _ragged(rows, dtype):
    lengths = [len(row) for row in rows]
    flat = np.fromiter((value for row in rows for value in row), dtype=dtype, count=sum(lengths))
    return tf.RaggedTensor.from_row_lengths(flat, np.asarray(lengths, dtype=np.int64))


def align_token_labels(residue_labels):
    """Per-residue labels -> per-token labels: -100 for `<cls>`, the residue labels, -100 for `<eos>`."""
    return [IGNORE_INDEX] + [int(label) for label in residue_labels] + [IGNORE_INDEX]


def _label_tensor(records):
    if records.task == "token":
        return _ragged([align_token_labels(row) for row in records.labels], np.int32)
    first = records.labels[0]
    if isinstance(first, list):
        return tf.constant(np.asarray(records.labels, dtype=np.float32))
    if isinstance(first, float):
        return tf.constant(np.asarray(records.labels, dtype=np.float32))
    return tf.constant(np.asarray(records.labels, dtype=np.int32))


# ------------------------------------------------------------------------------------------------------- masking


class MlmMasking:
    """Dynamic masked-language-model masking, for `dataset.map` on batched or single examples.

    Each maskable token (not `<cls>`, `<eos>`, `<pad>`, `<unk>`, `<mask>`, and not padding) is selected with
    probability `probability`; a selected token becomes `<mask>` with probability `mask_fraction`, a random
    residue token with probability `random_fraction`, and stays unchanged otherwise (the 80/10/10 rule). Labels
    hold the original id at selected positions and -100 elsewhere. Draws come from a `tf.random.Generator`, so
    every epoch sees a new mask; with `seed` the sequence of masks is reproducible (map without parallel calls).

    Args:
        tokenizer: an `EsmTokenizer` (or anything `resolve_tokenizer` accepts) giving the special and residue ids.
        probability: fraction of maskable tokens selected.
        mask_fraction, random_fraction: shares of the selected tokens replaced by `<mask>` / a random residue.
        random_tokens: the residues random replacements are drawn from (default: the 20 standard amino acids).
        seed: integer seed for the generator; `None` draws a non-deterministic one.

    Call arguments:
        features: dict with int `input_ids` and optional `attention_mask`.
        labels: ignored (masking makes its own labels); accepted so `(features, labels)` datasets map directly.

    Returns:
        `(features with masked input_ids, labels)`.

    Examples:

    >>> masking = MlmMasking(seed=0)
    >>> dataset = sequences_dataset(["MKTAYIAKQRQISFVKSHFSRQ"] * 4, batch_size=2).map(masking)
    >>> features, labels = next(iter(dataset))
    >>> labels.shape == features["input_ids"].shape
    True
    """

    def __init__(self, tokenizer=None, probability=0.15, mask_fraction=0.8, random_fraction=0.1,
                 random_tokens=STANDARD_RESIDUES, seed=None):
        if not 0.0 < probability <= 1.0:
            raise ValueError(f"probability must be in (0, 1], got {probability}.")
        if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1.0:
            raise ValueError(f"mask_fraction ({mask_fraction}) and random_fraction ({random_fraction}) must be "
                             "non-negative and sum to at most 1.")
        tokenizer = resolve_tokenizer(tokenizer)
        vocab = tokenizer.get_vocab()
        missing = [token for token in random_tokens if token not in vocab]
        if missing:
            raise ValueError(f"random_tokens {missing} are not in the tokenizer's vocabulary.")
        self.probability, self.mask_fraction, self.random_fraction = probability, mask_fraction, random_fraction
        self.mask_token_id = tokenizer.mask_token_id
        self.special_token_ids = tf.constant(sorted(set(tokenizer.all_special_ids)), tf.int32)
        self.random_token_ids = tf.constant([vocab[token] for token in random_tokens], tf.int32)
        self.generator = (tf.random.Generator.from_seed(seed) if seed is not None
                          else tf.random.Generator.from_non_deterministic_state())

    def __call__(self, features, labels=None):
        input_ids = tf.cast(features["input_ids"], tf.int32)
        shape = tf.shape(input_ids)
        maskable = tf.reduce_all(tf.not_equal(input_ids[..., None], self.special_token_ids), axis=-1)
        if "attention_mask" in features:
            maskable = tf.logical_and(maskable, tf.cast(features["attention_mask"], tf.bool))
        selected = tf.logical_and(maskable, self.generator.uniform(shape) < self.probability)
        action = self.generator.uniform(shape)
        to_mask = tf.logical_and(selected, action < self.mask_fraction)
        to_random = tf.logical_and(selected, tf.logical_and(action >= self.mask_fraction,
                                                            action < self.mask_fraction + self.random_fraction))
        picks = self.generator.uniform(shape, maxval=tf.size(self.random_token_ids), dtype=tf.int32)
        random_ids = tf.gather(self.random_token_ids, picks)
        masked = tf.where(to_mask, self.mask_token_id, tf.where(to_random, random_ids, input_ids))
        mlm_labels = tf.where(selected, input_ids, IGNORE_INDEX)
        features = dict(features)
        features["input_ids"] = masked
        return features, mlm_labels


# ------------------------------------------------------------------------------------------------------ batching


def auto_bucket_boundaries(lengths, num_buckets=16):
    """Bucket boundaries at the length quantiles, so each bucket holds about the same number of sequences.

    A boundary `b` separates lengths `< b` from lengths `>= b` (as `bucket_by_sequence_length` reads them).
    """
    lengths = np.asarray(lengths)
    quantiles = np.quantile(lengths, np.arange(1, num_buckets) / num_buckets, method="higher")
    return sorted({int(value) for value in quantiles if lengths.min() < value <= lengths.max()})


@renamed_keywords(token_budget="max_tokens_per_batch")
def bucket_batch_sizes(boundaries, max_length, batch_size=None, max_tokens_per_batch=None):
    """Rows per batch for each bucket: `batch_size`, or as many rows as fit `max_tokens_per_batch` padded tokens."""
    if (batch_size is None) == (max_tokens_per_batch is None):
        raise ValueError("Give exactly one of batch_size and max_tokens_per_batch.")
    if batch_size is not None:
        return [int(batch_size)] * (len(boundaries) + 1)
    widths = [boundary - 1 for boundary in boundaries] + [max_length]
    if max_tokens_per_batch < max_length:
        raise ValueError(f"max_tokens_per_batch={max_tokens_per_batch} is smaller than the longest sequence "
                         f"({max_length} tokens).")
    return [max(1, int(max_tokens_per_batch) // int(width)) for width in widths]


def padding_stats(dataset):
    """Count real and padding tokens over a batched dataset of `(features, ...)` or `features` elements.

    Returns:
        A dict with `batches`, `real_tokens`, `padded_tokens` (all cells) and `padding_fraction`.
    """
    batches = real = cells = 0
    for element in dataset:
        features = element[0] if isinstance(element, tuple) else element
        mask = features["attention_mask"]
        batches += 1
        real += int(tf.reduce_sum(tf.cast(mask, tf.int64)))
        cells += int(tf.size(mask, out_type=tf.int64))
    return {"batches": batches, "real_tokens": real, "padded_tokens": cells,
            "padding_fraction": 1.0 - real / cells if cells else 0.0}


@renamed_keywords(token_budget="max_tokens_per_batch")
def make_dataset(records: SequenceRecords, tokenizer=None, in_graph: bool = False, max_length: int | None = None,
                 truncation: str = "error", batch_size: int | None = None, max_tokens_per_batch: int | None = None,
                 bucket_boundaries: str | Sequence[int] | None = "auto", num_buckets: int = 16,
                 shuffle: bool = False, seed: int | None = None, mlm=None, return_index: bool = False,
                 drop_remainder: bool = False, prefetch: bool = True,
                 pack_length: int | None = None) -> tf.data.Dataset:
    """Turn `SequenceRecords` into a batched `tf.data.Dataset` ready for `model.fit` / `model.predict`.

    Args:
        records: `SequenceRecords` (from `read_fasta_records`, `read_table` or `records_from_lists`).
        tokenizer: an `EsmTokenizer`, a model directory / hub id holding `vocab.txt`, or `None` (ESM-2 vocabulary).
        in_graph: tokenize inside `Dataset.map` with TensorFlow ops (`tf_esm.graph_tokenizer`) instead of in Python.
        max_length, truncation: the length policy (see `apply_length_policy`); `max_length` counts special tokens.
        batch_size: rows per batch (default 8 unless `max_tokens_per_batch` is given).
        max_tokens_per_batch: instead of `batch_size`, at most this many padded tokens per batch (rows x bucket
            width); `token_budget` is its deprecated name.
        bucket_boundaries: `"auto"` (length quantiles, `num_buckets` buckets), a sorted list of token lengths, or
            `None` to batch in order without bucketing (padding to the longest row of each batch).
        num_buckets: number of buckets for `"auto"`.
        shuffle: shuffle the examples (all of them, re-shuffled every epoch) before batching.
        seed: seed for shuffling and MLM masking.
        mlm: `None`, `True` (15% masking, 80/10/10) or an `MlmMasking`; masking labels replace record labels.
        return_index: add `record_index` (the record's position in `records`) to the features, to map outputs back
            to records after bucketing and shuffling; remove it before calling a model.
        drop_remainder: drop incomplete batches.
        prefetch: end with `prefetch(tf.data.AUTOTUNE)`.
        pack_length: pack several proteins into rows of this many tokens (see the module docstring), with
            `sequence_id` in the features; `batch_size` rows per batch, or `max_tokens_per_batch // pack_length`.
            Python tokenization only (not `in_graph`), no `return_index`; no bucketing (every row is as long).

    Returns:
        A `tf.data.Dataset` of `(features, labels)`, or of `features` when there are no labels.
    """
    if len(records) == 0:
        raise ValueError("No records to build a dataset from.")
    if mlm and records.labels is not None:
        raise ValueError("MLM masking makes its own labels; build the dataset from unlabelled records.")
    if pack_length is not None and (in_graph or return_index):
        raise ValueError("pack_length works with Python tokenization and without return_index.")
    if batch_size is None and max_tokens_per_batch is None:
        batch_size = 8
    records = apply_length_policy(records, max_length, truncation)
    tokenizer = resolve_tokenizer(tokenizer)
    _check_vocabulary(records, tokenizer)
    token_lengths = [len(sequence) + 2 for sequence in records.sequences]
    pad_id = tokenizer.pad_token_id

    if pack_length is not None:
        ids = tokenizer(records.sequences, add_special_tokens=True, return_attention_mask=False)["input_ids"]
        return _packed_dataset(records, ids, pad_id, int(pack_length), batch_size, max_tokens_per_batch, shuffle,
                               seed, mlm, tokenizer, drop_remainder, prefetch)
    if in_graph:
        from tf_esm.graph_tokenizer import tokenize_strings

        vocab = list(tokenizer.all_tokens)
        character_level = type(tokenizer).__name__ == "EsmcTokenizer"  # ESM C's rules for unknown characters
        source = {"sequence": tf.constant(records.sequences, tf.string)}

        def tokenize(features):
            encoded = tokenize_strings(features.pop("sequence"), vocab=vocab, unk_token=tokenizer.unk_token,
                                       cls_token=tokenizer.cls_token, pad_token=tokenizer.pad_token,
                                       eos_token=tokenizer.eos_token, character_level=character_level)
            features.update(encoded)
            return features
    else:
        ids = tokenizer(records.sequences, add_special_tokens=True, return_attention_mask=False)["input_ids"]
        source = {"input_ids": _ragged(ids, np.int32)}

        def tokenize(features):
            features["input_ids"] = tf.convert_to_tensor(features["input_ids"])
            features["attention_mask"] = tf.ones_like(features["input_ids"])
            return features

    if return_index:
        source["record_index"] = tf.range(len(records), dtype=tf.int64)
    labelled = records.labels is not None
    dataset = tf.data.Dataset.from_tensor_slices((source, _label_tensor(records)) if labelled else source)
    if shuffle:
        dataset = dataset.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
    if labelled:
        dataset = dataset.map(lambda features, labels: (tokenize(dict(features)), _dense(labels)))
    else:
        dataset = dataset.map(lambda features: tokenize(dict(features)))

    feature_padding = {"input_ids": tf.constant(pad_id, tf.int32), "attention_mask": tf.constant(0, tf.int32)}
    if return_index:
        feature_padding["record_index"] = tf.constant(0, tf.int64)
    padding = feature_padding
    if labelled:
        label_dtype = tf.int32 if records.task == "token" else dataset.element_spec[1].dtype
        label_pad = IGNORE_INDEX if records.task == "token" else 0
        padding = (feature_padding, tf.constant(label_pad, label_dtype))

    if bucket_boundaries == "auto":
        bucket_boundaries = auto_bucket_boundaries(token_lengths, num_buckets)
    if bucket_boundaries:
        boundaries = [int(boundary) for boundary in bucket_boundaries]
        if boundaries != sorted(set(boundaries)) or boundaries[0] < 1:
            raise ValueError(f"bucket_boundaries must be increasing positive lengths, got {bucket_boundaries}.")
        sizes = bucket_batch_sizes(boundaries, max(token_lengths), batch_size, max_tokens_per_batch)
        dataset = dataset.bucket_by_sequence_length(
            element_length_func=lambda features, *rest: tf.shape(features["input_ids"])[0],
            bucket_boundaries=boundaries, bucket_batch_sizes=sizes, padding_values=padding,
            drop_remainder=drop_remainder)
        bucket_counts = np.bincount(np.searchsorted(boundaries, token_lengths, side="right"),
                                    minlength=len(sizes))
    else:
        rows = batch_size if batch_size is not None else max(1, max_tokens_per_batch // max(token_lengths))
        dataset = dataset.padded_batch(rows, padding_values=padding, drop_remainder=drop_remainder)
        sizes, bucket_counts = [rows], [len(token_lengths)]
    # Whatever the shuffle order, each bucket yields the same number of batches; a known count lets Keras show
    # progress in the first epoch and spares its "input ran out of data" warning at the end of it.
    rounding = (lambda n, size: n // size) if drop_remainder else (lambda n, size: -(-n // size))
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(
        sum(rounding(int(n), int(size)) for n, size in zip(bucket_counts, sizes))))

    if mlm:
        masking = mlm if isinstance(mlm, MlmMasking) else MlmMasking(tokenizer, seed=seed)
        dataset = dataset.map(masking)  # sequential: keeps a seeded mask sequence reproducible
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return without_autotune_stall(dataset)


def _packed_dataset(records, ids, pad_id, pack_length, batch_size, max_tokens_per_batch, shuffle, seed, mlm,
                    tokenizer, drop_remainder, prefetch):
    """`make_dataset` with `pack_length`: rows of whole proteins and their `sequence_id`."""
    features, labels = packed_arrays(ids, records.labels, records.task, pad_id, pack_length)
    dataset = tf.data.Dataset.from_tensor_slices((features, labels) if labels is not None else features)
    if shuffle:
        dataset = dataset.shuffle(len(features["input_ids"]), seed=seed, reshuffle_each_iteration=True)
    rows_per_batch = batch_size if batch_size is not None else max(1, max_tokens_per_batch // pack_length)
    dataset = dataset.batch(rows_per_batch, drop_remainder=drop_remainder)
    if mlm:
        masking = mlm if isinstance(mlm, MlmMasking) else MlmMasking(tokenizer, seed=seed)
        dataset = dataset.map(masking)
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return without_autotune_stall(dataset)


def _dense(value):
    return value.to_tensor() if isinstance(value, tf.RaggedTensor) else tf.convert_to_tensor(value)


# -------------------------------------------------------------------------------------------------- convenience


def fasta_dataset(path: str | os.PathLike, **kwargs) -> tf.data.Dataset:
    """`make_dataset(read_fasta_records(path), **kwargs)`: unlabelled batches (for embedding or with `mlm=True`)."""
    return make_dataset(read_fasta_records(path), **kwargs)


def table_dataset(path: str | os.PathLike, sequence_column: str = "sequence", label_column: str | None = "label",
                  id_column: str | None = None, task: str = "sequence", label_names: Sequence[str] | None = None,
                  delimiter: str | None = None, **kwargs) -> tf.data.Dataset:
    """`make_dataset(read_table(path, ...), **kwargs)`: labelled batches from a CSV/TSV file."""
    records = read_table(path, sequence_column=sequence_column, label_column=label_column, id_column=id_column,
                         task=task, label_names=label_names, delimiter=delimiter)
    return make_dataset(records, **kwargs)


def sequences_dataset(sequences: Sequence[str], labels=None, ids: Sequence[str] | None = None,
                      task: str | None = None, label_names: Sequence[str] | None = None,
                      **kwargs) -> tf.data.Dataset:
    """`make_dataset(records_from_lists(...), **kwargs)`: batches from Python lists."""
    return make_dataset(records_from_lists(sequences, labels, ids=ids, task=task, label_names=label_names), **kwargs)
