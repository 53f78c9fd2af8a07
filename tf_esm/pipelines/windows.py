"""Proteins longer than a model's context: where the windows go and how their outputs are put back together.

Plain index arithmetic (numpy only), shared by embedding (`tf_esm.pipelines.inference`) and variant scoring
(`tf_esm.pipelines.scoring`); nothing here runs a model.

The context. ESM-1b/1v learn one position embedding per token up to a table size, and ESM-2, rotary, was trained
on crops of at most 1,024 tokens. `context_tokens(config)` is the longest input a model is meant to see: the
absolute position table's capacity where there is one (`config.default_max_length()`), else
`config.max_position_embeddings - 2` tokens (transformers' ESM tokenizers set `model_max_length` so: 1,024 for
every ESM-2). Minus `<cls>` and `<eos>` that is 1,022 residues for ESM-2 and for ESM-1b/1v alike.

Two kinds of windows:

* Embedding windows (`embedding_windows`, `most_central_window`): residue ranges of at most `window` residues,
  spread evenly over the protein with at least `overlap` residues shared by neighbours; each is embedded as a
  sequence of its own (with its own `<cls>` and `<eos>`), and each residue's vector is taken from the window in
  which it sits furthest from a cut end, so every per-residue vector is the output of one real forward pass.
* ProteinGym's token windows (`optimal_window`, `overlapping_windows`, `overlap_weights`): slices of the tokenised
  protein (`<cls>` residues `<eos>`) of exactly `window_tokens` tokens, as ProteinGym's ESM baselines cut them
  (Notin et al. 2023, `proteingym/baselines/esm/compute_fitness.py` and `utils/scoring_utils.py`). A window in
  the middle of a long protein then has neither `<cls>` nor `<eos>`; that is their convention, kept so that scores
  match the benchmark's.

Examples:

```python
>>> from tf_esm.pipelines.windows import embedding_windows, optimal_window
>>> embedding_windows(2500, window=1022, overlap=255)
[(0, 1022), (739, 1761), (1478, 2500)]
>>> optimal_window(1800, num_tokens=2502, window_tokens=1024)
(1288, 2312)
```
"""

from __future__ import annotations

import math

import numpy as np

LONG_POLICIES = ("window", "truncate", "error")


def context_tokens(config):
    """The most tokens (with `<cls>` and `<eos>`) one forward pass of a model with `config` is meant to take.

    Args:
        config: the model's configuration: one with `default_max_length()` (an absolute position table's
            capacity, or None) and/or `max_position_embeddings`.

    Returns:
        An int, or None where the configuration names no limit.

    Examples:

    ```python
    >>> from tf_esm import EsmConfig
    >>> context_tokens(EsmConfig(max_position_embeddings=1026, position_embedding_type="rotary"))
    1024
    ```
    """
    default_max_length = getattr(config, "default_max_length", None)
    limit = default_max_length() if callable(default_max_length) else None
    if limit is not None:
        return int(limit)
    positions = getattr(config, "max_position_embeddings", None)
    return None if positions is None else int(positions) - 2


def context_residues(config):
    """`context_tokens(config)` less `<cls>` and `<eos>` (None: no limit)."""
    tokens = context_tokens(config)
    return None if tokens is None else tokens - 2


def default_overlap(window):
    """The overlap used when none is given: a quarter of the window, so every residue keeps at least an eighth of a
    window of context on each cut side (127 residues in a 1,022-residue window)."""
    return int(window) // 4


def check_window(window, overlap):
    """Raise ValueError unless 1 <= window and 0 <= overlap < window."""
    if int(window) < 1:
        raise ValueError(f"window must be at least 1 residue, got {window}.")
    if not 0 <= int(overlap) < int(window):
        raise ValueError(f"overlap must be at least 0 and less than the window ({window}), got {overlap}.")


def embedding_windows(num_residues, window, overlap):
    """Residue ranges `[start, end)` covering `num_residues`: one range when it fits in `window`, else the fewest
    full-length windows whose neighbours share at least `overlap` residues, spread evenly (first at 0, last ending
    at the protein's end).

    Args:
        num_residues: the protein's length.
        window: residues per window (the model's context less `<cls>`/`<eos>`, or fewer).
        overlap: the least number of residues two neighbouring windows share.

    Examples:

    ```python
    >>> embedding_windows(10, window=4, overlap=1)
    [(0, 4), (3, 7), (6, 10)]
    ```
    """
    num_residues, window, overlap = int(num_residues), int(window), int(overlap)
    check_window(window, overlap)
    if num_residues <= window:
        return [(0, num_residues)]
    count = math.ceil((num_residues - overlap) / (window - overlap))
    span = num_residues - window
    return [((index * span) // (count - 1), (index * span) // (count - 1) + window) for index in range(count)]


def most_central_window(windows, num_residues):
    """For each residue, the index of the window it is taken from: the one in which the residue has the most
    residues of context on its nearer cut side (a window edge at the protein's own end is not a cut); ties go to
    the earlier window. With two neighbours that is a switch at the middle of their overlap.

    Returns:
        An int array (num_residues,).
    """
    positions = np.arange(int(num_residues))
    best = np.full(len(positions), -1)
    best_room = np.full(len(positions), -np.inf)
    for index, (start, end) in enumerate(windows):
        inside = (positions >= start) & (positions < end)
        left = np.where(start > 0, positions - start, np.inf)
        right = np.where(end < num_residues, end - 1 - positions, np.inf)
        room = np.where(inside, np.minimum(left, right), -np.inf)
        better = room > best_room
        best = np.where(better, index, best)
        best_room = np.where(better, room, best_room)
    return best


def optimal_window(token_position, num_tokens, window_tokens):
    """ProteinGym's window for a masked position in a long protein: `[start, end)` token slice of `window_tokens`
    tokens, centred on `token_position` where the protein allows (`get_optimal_window`).

    Args:
        token_position: the masked token's index in the tokenised protein (`<cls>` is 0, residue i is i + 1).
        num_tokens: tokens of the whole protein (residues + 2).
        window_tokens: tokens per window (`context_tokens`).
    """
    half = window_tokens // 2
    if num_tokens <= window_tokens:
        return 0, num_tokens
    if token_position < half:
        return 0, window_tokens
    if token_position >= num_tokens - half:
        return num_tokens - window_tokens, num_tokens
    return max(0, token_position - half), min(num_tokens, token_position + half)


def overlap_weights(window_tokens):
    """ProteinGym's weights of the positions of one overlapping window (ESM-1b's wt-marginals): 1 in the middle,
    rising and falling along logistic ramps over the first and last quarter. At 1,024 tokens these are their
    constants (ramps of 256 tokens centred 128 tokens in, scale 16, the first and last token left at 1); other
    window sizes scale them.
    """
    ramp, centre, scale = window_tokens // 4, window_tokens // 8, window_tokens / 64
    weights = np.ones(window_tokens)
    for index in range(1, ramp + 1):
        weights[index] = 1.0 / (1.0 + math.exp(-(index - centre) / scale))
    last = window_tokens - 2
    for index in range(last - ramp, last + 1):
        weights[index] = 1.0 / (1.0 + math.exp((index - last + centre) / scale))
    return weights


def overlapping_windows(num_tokens, window_tokens):
    """ProteinGym's overlapping windows `[start, end)` over a long protein (ESM-1b's wt-marginals, `--scoring-window
    overlapping`): pairs of windows walking in from both ends half a window (less one token) at a time until they
    meet, plus a central window where the last pair overlaps by less than that. A window may appear twice (it is
    then weighted twice, as in theirs).
    """
    if num_tokens <= window_tokens:
        return [(0, num_tokens)]
    step = window_tokens // 2 - 1
    left_start, right_start = 0, num_tokens - window_tokens
    windows = []
    while True:
        windows.append((left_start, left_start + window_tokens))
        windows.append((right_start, right_start + window_tokens))
        if left_start + window_tokens - 1 > right_start:
            break
        left_start += step
        right_start -= step
    if left_start + window_tokens - right_start < step:
        centre = num_tokens // 2 - window_tokens // 2
        windows.append((centre, centre + window_tokens))
    return windows
