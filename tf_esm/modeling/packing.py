"""Packed rows: several proteins in one input row, told apart by a per-token `sequence_id`.

`sequence_id` (batch, length) int: tokens with the same non-negative value belong to one protein and attend only
to each other; -1 marks padding (the name and meaning of ESM C's `sequence_id` in transformers). Each protein is
one contiguous run of tokens with its own `<cls>` ... `<eos>`, as the tokenizer makes it; within a row the
proteins are numbered 0, 1, 2, ... Given `sequence_id`, the encoder

* attends within each protein only (a block-diagonal mask);
* restarts positions at each protein's `<cls>` (rotary: 0, 1, ...; absolute: padding_idx + 1, ...), so a
  protein's positions are those it has alone in a row; relative-position models see the same distances anyway;
* applies ESM-2's token-dropout rescaling per protein, its `<mask>` ratio over that protein's tokens (the
  reference counts it per row, and a row is one protein there).

So every protein gets the hidden states, logits and loss it gets unpacked. Sequence classification of packed
rows returns per-token logits, those of each protein at its first token (`protein_starts`) and zeros elsewhere;
`protein_rows(logits, sequence_id)` picks one row per protein. `tf_esm.pipelines.data.make_dataset(...,
pack_length=N)` builds such rows.
"""

from __future__ import annotations

import numpy as np
from keras import ops


def same_protein(sequence_id):
    """(batch, length, length) bool: query token i and key token j belong to the same protein (padding: none)."""
    sequence_id = ops.cast(sequence_id, "int32")
    real_key = ops.greater_equal(sequence_id, 0)[:, None, :]
    return ops.logical_and(ops.equal(sequence_id[:, :, None], sequence_id[:, None, :]), real_key)


def positions_in_protein(same):
    """(batch, length) int32: each token's index within its protein (0 at its `<cls>`; 0 for padding), from
    `same_protein`: the count of earlier-or-equal tokens of the same protein, less one."""
    length = ops.shape(same)[-1]
    index = ops.arange(length, dtype="int32")
    earlier = ops.logical_and(same, (index[None, :] <= index[:, None])[None])
    return ops.maximum(ops.sum(ops.cast(earlier, "int32"), axis=-1) - 1, 0)


def protein_starts(sequence_id):
    """(batch, length) bool: the first token of each protein (its `<cls>`)."""
    sequence_id = ops.cast(sequence_id, "int32")
    previous = ops.concatenate([ops.full_like(sequence_id[:, :1], -1), sequence_id[:, :-1]], axis=1)
    return ops.logical_and(ops.greater_equal(sequence_id, 0), ops.not_equal(sequence_id, previous))


def protein_rows(values, sequence_id):
    """NumPy: the rows of `values` (batch, length, ...) at each protein's first token, in row order then
    position order: one row per protein, (proteins, ...)."""
    values, sequence_id = np.asarray(values), np.asarray(sequence_id)
    previous = np.concatenate([np.full_like(sequence_id[:, :1], -1), sequence_id[:, :-1]], axis=1)
    return values[(sequence_id >= 0) & (sequence_id != previous)]
