"""Packing proteins into rows of a fixed number of tokens, in NumPy (no TensorFlow): what `make_dataset(...,
pack_length=N)` batches, and what a JAX or PyTorch `fit` on arrays can take directly.

A row holds whole proteins (`<cls> residues <eos>`, never split), placed by best-fit decreasing; `sequence_id`
numbers them 0, 1, ... within the row, -1 marks padding (`tf_esm.modeling.packing` says what the models do with
it). Labels follow the tokens: per token for token tasks and masked LM; for sequence tasks each protein's label at
its first token, -100 (class ids) or 0 (float targets) elsewhere.
"""

from __future__ import annotations

import bisect

import numpy as np

from tf_esm.configuration import IGNORE_INDEX


def pack_rows(lengths, pack_length):
    """Best-fit decreasing: lists of indices into `lengths`, each list's lengths summing to at most
    `pack_length`, longest items placed first, each into the fullest row it fits (a new row if none)."""
    too_long = [index for index, length in enumerate(lengths) if length > pack_length]
    if too_long:
        first = too_long[0]
        raise ValueError(f"{len(too_long)} sequence(s) (the first: record {first}, {lengths[first]} tokens) are "
                         f"longer than pack_length={pack_length}: raise pack_length or set max_length.")
    rows, free = [], []  # free: sorted (room left, row index)
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        place = bisect.bisect_left(free, (lengths[index], -1))
        if place == len(free):
            rows.append([index])
            room, row = pack_length - lengths[index], len(rows) - 1
        else:
            room, row = free.pop(place)
            rows[row].append(index)
            room -= lengths[index]
        bisect.insort(free, (room, row))
    return rows



def packed_arrays(token_ids, labels=None, task="sequence", pad_id=1, pack_length=1024):
    """Pack tokenized proteins (`token_ids`: one list of ids per protein, special tokens included) into rows of
    `pack_length` tokens.

    Args:
        token_ids: the proteins' token ids.
        labels: None, or one label per protein: a class id, a float, a list of floats (multi-label), or for
            `task="token"` a list of per-residue labels (aligned to the tokens as `[-100] + labels + [-100]`).
        task: "sequence" or "token".
        pad_id: the padding token id.
        pack_length: tokens per row.

    Returns:
        `(features, labels)`: features a dict of (rows, pack_length) int32 arrays `input_ids`, `attention_mask`
        and `sequence_id`; labels the packed labels, or None.
    """
    rows = pack_rows([len(row) for row in token_ids], pack_length)
    input_ids = np.full((len(rows), pack_length), pad_id, np.int32)
    sequence_id = np.full((len(rows), pack_length), -1, np.int32)
    packed = None
    if labels is not None:
        first = labels[0]
        if task == "token":
            packed = np.full((len(rows), pack_length), IGNORE_INDEX, np.int32)
        elif isinstance(first, (list, tuple, np.ndarray)):
            packed = np.zeros((len(rows), pack_length, len(first)), np.float32)
        elif isinstance(first, (float, np.floating)):
            packed = np.zeros((len(rows), pack_length), np.float32)
        else:
            packed = np.full((len(rows), pack_length), IGNORE_INDEX, np.int32)
    for row, members in enumerate(rows):
        start = 0
        for number, index in enumerate(members):
            tokens = token_ids[index]
            input_ids[row, start:start + len(tokens)] = tokens
            sequence_id[row, start:start + len(tokens)] = number
            if packed is not None and task == "token":
                packed[row, start:start + len(tokens)] = [IGNORE_INDEX, *labels[index], IGNORE_INDEX]
            elif packed is not None:
                packed[row, start] = labels[index]  # the protein's <cls> token
            start += len(tokens)
    features = {"input_ids": input_ids, "attention_mask": (sequence_id >= 0).astype(np.int32),
                "sequence_id": sequence_id}
    return features, packed
