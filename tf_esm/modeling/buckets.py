"""Length buckets: the padded lengths that inputs are rounded up to, so code compiled per input shape (a
`tf.function` with a fixed length, XLA, `jax.jit`) is compiled for a handful of lengths instead of every one.

One rule serves the embedding pipeline and ESMFold; they differ only in their tables. Folding costs grow with the
cube of the length, but each new length costs a compilation of the whole fold, so its table is coarser (steps of
about 1.5x); the embedding pipeline pads tokens (special tokens included) to steps of about 12%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# ESMFold's compiled inference: residues (no special tokens).
FOLD_LENGTH_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


def _token_length_buckets(limit=1 << 15):
    lengths = list(range(16, 129, 16))
    while lengths[-1] < limit:
        lengths.append(int(math.ceil(lengths[-1] * 1.125 / 16.0)) * 16)
    return tuple(lengths)


# The embedding pipeline (`iter_embeddings`): tokens, special tokens included. Multiples of 16 up to 128, then
# about 12% apart (multiples of 16) up to 32768.
TOKEN_LENGTH_BUCKETS = _token_length_buckets()


def bucket_length(length: int, buckets: Sequence[int] = FOLD_LENGTH_BUCKETS) -> int:
    """The smallest bucket >= `length` in the ascending table `buckets`; beyond the last bucket, the next multiple
    of the table's last step above it."""
    if not buckets:
        raise ValueError("bucket_length needs at least one bucket.")
    for bucket in buckets:
        if length <= bucket:
            return int(bucket)
    step = buckets[-1] - buckets[-2] if len(buckets) > 1 else buckets[-1]
    return int(buckets[-1] + -(-(length - buckets[-1]) // step) * step)
