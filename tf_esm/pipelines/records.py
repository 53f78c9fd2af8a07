"""Reading training and embedding inputs into `SequenceRecords`, without TensorFlow: FASTA, CSV/TSV or Python
lists, with their labels parsed and checked, and the length policy applied.

Steps 1 and 2 of the flow described in `tf_esm.pipelines.data` (the tf.data pipeline that batches these records).
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from tf_esm.configuration import IGNORE_INDEX
from tf_esm.io.fasta import clean_sequence, read_fasta

TRUNCATION_POLICIES = ("error", "warn")
TASKS = ("sequence", "token")
STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
# Delimiters inferred from a table's file extension; anything else needs `delimiter=`.
_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_MAX_NAMES_IN_MESSAGE = 10


class SequenceTooLongError(ValueError):
    """A sequence does not fit in `max_length` tokens and the truncation policy is "error"."""


class LabelError(ValueError):
    """A label that cannot be parsed or does not fit its sequence (the message names the record)."""


@dataclass
class SequenceRecords:
    """Validated sequences with their record names and (optionally) parsed labels.

    Attributes:
        ids: one name per record, used in error and warning messages (FASTA record id, or `file, line N`).
        sequences: cleaned protein sequences (see `tf_esm.io.fasta.clean_sequence`).
        labels: `None`, or one label per record: an int class id, a float target, a list of floats
            (multi-label), or for `task="token"` a list of int ids, one per residue (-100 = ignored residue).
        task: `"sequence"`, `"token"`, or `None` for unlabelled records.
        label_names: class names in id order when labels were given as names, else `None`.
    """

    ids: list
    sequences: list
    labels: list | None = None
    task: str | None = None
    label_names: list | None = field(default=None)

    def __len__(self):
        return len(self.sequences)


# ------------------------------------------------------------------------------------------------------- reading


def read_fasta_records(path):
    """Read a FASTA file into unlabelled `SequenceRecords`; malformed files raise `FastaError`."""
    records = read_fasta(path)
    return SequenceRecords(ids=[record.id for record in records], sequences=[record.sequence for record in records])


def read_table(path, sequence_column="sequence", label_column="label", id_column=None, task="sequence",
               label_names=None, delimiter=None):
    """Read a CSV/TSV file with one sequence per row and its label(s).

    Args:
        path: the table; the header row names the columns. `.csv` is comma-separated, `.tsv`/`.tab` tab-separated.
        sequence_column: column holding the protein sequence.
        label_column: column holding the label, or `None` for unlabelled rows. For `task="sequence"`: an integer
            class id, a number (regression), a class name, or space-separated numbers (a multi-label vector).
            For `task="token"`: one label per residue, either one character per residue (`"HHHEEC"`, `"0012"`) or
            a space-separated list (`"0 0 1 2"`, `"helix helix coil"`); integers are used as ids, names are
            numbered in sorted order (or by `label_names`), and `-100` marks a residue to ignore.
        id_column: column naming each record (used in messages); by default records are named `file, line N`.
        task: `"sequence"` or `"token"`.
        label_names: class names in id order; labels given as names are looked up here instead of being numbered
            in sorted order.
        delimiter: the column separator, when it cannot be inferred from the extension.

    Returns:
        `SequenceRecords`.
    """
    path = os.fspath(path)
    if delimiter is None:
        delimiter = _DELIMITERS.get(os.path.splitext(path)[1].lower())
        if delimiter is None:
            raise ValueError(f"{path}: cannot infer the column delimiter from the extension; pass delimiter=','.")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise FileNotFoundError(f"{path}: cannot read ({error.strerror}).") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {error.start}).") from None

    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    columns = reader.fieldnames or []
    wanted = [column for column in (sequence_column, label_column, id_column) if column is not None]
    missing = [column for column in wanted if column not in columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; the header has {columns}.")
    ids, sequences, raw_labels = [], [], []
    for row in reader:
        line = reader.line_num
        if all(value in (None, "") for value in row.values()):
            continue
        name = f"{path}, line {line}"
        if id_column is not None:
            name += f" (id {row[id_column]!r})"
        sequences.append(clean_sequence(row[sequence_column] or "", name=name))
        ids.append(name)
        if label_column is not None:
            value = row[label_column]
            if value is None or not value.strip():
                raise LabelError(f"{name}: the {label_column!r} column is empty.")
            raw_labels.append(value.strip())
    if not sequences:
        raise ValueError(f"{path}: no data rows.")
    labels = raw_labels if label_column is not None else None
    return records_from_lists(sequences, labels, ids=ids, task=task if labels is not None else None,
                              label_names=label_names, validate=False)


def records_from_lists(sequences, labels=None, ids=None, task=None, label_names=None, validate=True):
    """Build `SequenceRecords` from Python lists.

    Args:
        sequences: protein strings.
        labels: `None` or one label per sequence, in any form `read_table` accepts (numbers or strings), or lists
            of per-residue labels for `task="token"`.
        ids: record names for messages; default `sequences[i]`.
        task: `"sequence"` (default when labels are given) or `"token"`.
        label_names: class names in id order (see `read_table`).
        validate: clean and check the sequences with `tf_esm.io.fasta.clean_sequence`.
    """
    sequences = list(sequences)
    ids = [f"sequences[{index}]" for index in range(len(sequences))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(sequences):
        raise ValueError(f"Got {len(ids)} ids for {len(sequences)} sequences.")
    if not sequences:
        raise ValueError("No sequences given.")
    if validate:
        sequences = [clean_sequence(sequence, name=name) for sequence, name in zip(sequences, ids)]
    if labels is None:
        if task is not None:
            raise ValueError(f"task={task!r} needs labels.")
        return SequenceRecords(ids, sequences)
    labels = list(labels)
    if len(labels) != len(sequences):
        raise LabelError(f"Got {len(labels)} labels for {len(sequences)} sequences.")
    task = task or "sequence"
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    if task == "token":
        parsed, names = _parse_token_labels(labels, sequences, ids, label_names)
    else:
        parsed, names = _parse_sequence_labels(labels, ids, label_names)
    return SequenceRecords(ids, sequences, parsed, task, names)


def _as_int(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _as_float(value):
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _name_lookup(label_names):
    return {str(name): index for index, name in enumerate(label_names)}


def _parse_sequence_labels(labels, ids, label_names):
    """One label per sequence -> (labels, label_names): class ids, float targets, or float multi-label vectors."""
    if label_names is not None:
        lookup = _name_lookup(label_names)
        parsed = []
        for label, name in zip(labels, ids):
            if str(label) not in lookup:
                raise LabelError(f"{name}: label {label!r} is not one of the label names {list(label_names)}.")
            parsed.append(lookup[str(label)])
        return parsed, list(label_names)

    def as_vector(label):
        if isinstance(label, str) and len(label.split()) > 1:
            return label.split()
        if isinstance(label, (list, tuple, np.ndarray)):
            return list(label)
        return None

    vectors = [as_vector(label) for label in labels]
    if any(vector is not None for vector in vectors):
        parsed, width = [], None
        for label, vector, name in zip(labels, vectors, ids):
            values = [_as_float(value) for value in vector] if vector is not None else [None]
            if None in values:
                raise LabelError(f"{name}: multi-label vector {label!r} must hold numbers only.")
            width = len(values) if width is None else width
            if len(values) != width:
                raise LabelError(f"{name}: multi-label vector has {len(values)} values; earlier records have {width}.")
            parsed.append(values)
        return parsed, None

    integers = [_as_int(label) for label in labels]
    if None not in integers:
        for value, name in zip(integers, ids):
            if value < 0:
                raise LabelError(f"{name}: class label {value} is negative (write regression targets as "
                                 f"floats, e.g. {value}.0).")
        return integers, None
    floats = [_as_float(label) for label in labels]
    if None not in floats:
        for value, name in zip(floats, ids):
            if not math.isfinite(value):
                raise LabelError(f"{name}: regression target {value} is not finite.")
        return floats, None
    names = sorted({str(label) for label in labels})
    lookup = _name_lookup(names)
    return [lookup[str(label)] for label in labels], names


def _split_token_labels(label):
    if isinstance(label, str):
        stripped = label.strip()
        return stripped.split() if any(char.isspace() for char in stripped) else list(stripped)
    if isinstance(label, (list, tuple, np.ndarray)):
        return list(label)
    raise LabelError(f"per-residue labels must be a string or a list, got {type(label).__name__}.")


def _parse_token_labels(labels, sequences, ids, label_names):
    """Per-residue labels -> (lists of int ids with -100 = ignore, label_names)."""
    split = []
    for label, sequence, name in zip(labels, sequences, ids):
        try:
            tokens = _split_token_labels(label)
        except LabelError as error:
            raise LabelError(f"{name}: {error}") from None
        if len(tokens) != len(sequence):
            raise LabelError(f"{name}: {len(tokens)} per-residue labels for a sequence of {len(sequence)} residues.")
        split.append(tokens)

    def locate(name, position, token, problem):
        return LabelError(f"{name}: per-residue label {token!r} at position {position} {problem}.")

    if label_names is not None:
        lookup = _name_lookup(label_names)
        lookup[str(IGNORE_INDEX)] = IGNORE_INDEX
        parsed = []
        for tokens, name in zip(split, ids):
            row = []
            for position, token in enumerate(tokens, start=1):
                if str(token) not in lookup:
                    raise locate(name, position, token, f"is not one of the label names {list(label_names)}")
                row.append(lookup[str(token)])
            parsed.append(row)
        return parsed, list(label_names)

    integers = [[_as_int(token) for token in tokens] for tokens in split]
    if all(None not in row for row in integers):
        for row, name in zip(integers, ids):
            for position, value in enumerate(row, start=1):
                if value < 0 and value != IGNORE_INDEX:
                    raise locate(name, position, value, f"is negative (only {IGNORE_INDEX} = ignore is allowed)")
        return integers, None
    names = sorted({str(token) for tokens in split for token in tokens} - {str(IGNORE_INDEX)})
    lookup = _name_lookup(names)
    lookup[str(IGNORE_INDEX)] = IGNORE_INDEX
    return [[lookup[str(token)] for token in tokens] for tokens in split], names


# ------------------------------------------------------------------------------------------------ length policy


def apply_length_policy(records, max_length=None, truncation="error"):
    """Return `records` with every sequence fitting in `max_length` tokens (`<cls>` and `<eos>` included).

    Args:
        records: `SequenceRecords`.
        max_length: the token limit, or `None` for none.
        truncation: `"error"`: raise `SequenceTooLongError` naming the first too-long record and how many there
            are; `"warn"`: keep the first `max_length - 2` residues (and their labels) and warn once, naming the
            truncated records.
    """
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {truncation!r}.")
    if max_length is None:
        return records
    if int(max_length) < 3:
        raise ValueError(f"max_length={max_length} leaves no room for a residue between <cls> and <eos>.")
    capacity = int(max_length) - 2
    too_long = [index for index, sequence in enumerate(records.sequences) if len(sequence) > capacity]
    if not too_long:
        return records
    first = too_long[0]
    if truncation == "error":
        raise SequenceTooLongError(
            f"{records.ids[first]}: {len(records.sequences[first])} residues + <cls>/<eos> exceed "
            f"max_length={max_length} ({len(too_long)} record(s) too long). Raise max_length, or pass "
            f"truncation='warn' to keep the first {capacity} residues."
        )
    names = [records.ids[index] for index in too_long]
    shown = ", ".join(names[:_MAX_NAMES_IN_MESSAGE]) + (
        f" and {len(names) - _MAX_NAMES_IN_MESSAGE} more" if len(names) > _MAX_NAMES_IN_MESSAGE else "")
    warnings.warn(f"Truncated {len(names)} record(s) to their first {capacity} residues (max_length={max_length}): "
                  f"{shown}.", stacklevel=3)
    sequences = [sequence[:capacity] for sequence in records.sequences]
    labels = records.labels
    if records.task == "token":
        labels = [row[:capacity] for row in labels]
    return replace(records, sequences=sequences, labels=labels)
