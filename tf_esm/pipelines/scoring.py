"""Zero-shot variant-effect prediction with a masked language model, as in ESM-1v (Meier et al., 2021).

A mutant is written `A24G` (wild-type residue, position, mutant residue; positions count from `offset_idx`,
1 by default) and a multi-mutant joins substitutions with `:` (`A24G:L30P`). Three scoring strategies:

* `masked-marginals` (the paper's recommended score): for each mutated position i, mask i in the wild-type
  sequence and score `log p(mt_i | x_-i) - log p(wt_i | x_-i)`; one forward pass per masked position.
* `wt-marginals`: the same difference read from ONE forward pass of the unmasked wild-type sequence.
* `pseudo-ppl`: the pseudo-log-likelihood of the mutant sequence minus that of the wild type, where the
  pseudo-log-likelihood of a sequence is `sum_i log p(x_i | x_-i)` over all its residues (one forward pass per
  residue, each with that residue masked). The paper's definition; fair-esm's `predict.py` returns the mutant's
  sum alone (a constant shift that does not change rankings) and its loop skips the last two residues.

For the marginal strategies a multi-mutant scores the sum of its substitutions' scores (additive, as fair-esm's
and ProteinGym's `label_row` do); for `pseudo-ppl` the mutant sequence carries all its substitutions at once.
Log-probabilities are the log-softmax of the LM logits over the whole vocabulary, as in the reference.

Proteins longer than the model's context (`windows.context_tokens`: 1,024 tokens for ESM-2 and ESM-1b/1v) are
scored as ProteinGym does (Notin et al. 2023, `proteingym/baselines/esm/compute_fitness.py`) unless `long="error"`:
masked marginals, and each masked pass of a pseudo-log-likelihood, run the context-sized window centred on the
masked residue (`windows.optimal_window`); wt-marginals average the log-probabilities of overlapping windows under
logistic weights (`windows.overlapping_windows`, `windows.overlap_weights`), how ProteinGym scores ESM-1b. ESM-1v's
score is the mean over its five checkpoints (`score_ensemble`); `saturation_scan` scores all 19 substitutions at
each position from the same passes, and `spearman` is the benchmark's rank correlation.

Examples:

```python
>>> from tf_esm import TFEsmForMaskedLM
>>> from tf_esm.pipelines.scoring import score_mutants
>>> model = TFEsmForMaskedLM.from_pretrained("facebook/esm1v_t33_650M_UR90S_1")
>>> score_mutants(model, "MKTAYIAKQR", ["K2A", "T3G:Y5F"], strategy="masked-marginals")
array([...])
```
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import numpy as np

from tf_esm._deprecation import renamed_keywords
from tf_esm.backend import no_gradients, to_numpy
from tf_esm.io.fasta import RESIDUES
from tf_esm.pipelines.windows import context_tokens, optimal_window, overlap_weights, overlapping_windows

STRATEGIES = ("masked-marginals", "wt-marginals", "pseudo-ppl")
DEFAULT_MAX_TOKENS_PER_BATCH = 4096
_SUBSTITUTION = re.compile(r"^([A-Z])(-?\d+)([A-Z])$")


class MutationError(ValueError):
    """A malformed mutant, or one that does not fit the wild-type sequence (the message names it)."""


@dataclass(frozen=True)
class Substitution:
    """One residue change: `position` is the 0-based index into the wild-type sequence."""

    wild_type: str
    position: int
    mutant: str


def parse_mutant(text, sequence, offset_idx=1):
    """`"A24G:L30P"` -> a tuple of `Substitution`, checked against the wild-type `sequence`.

    Args:
        text: one or more substitutions `<wt><position><mt>` joined by `:`.
        sequence: the wild-type sequence the positions refer to.
        offset_idx: the position number of the sequence's first residue (1: positions count from 1).

    Raises:
        MutationError: naming the mutant, for a malformed substitution, a position outside the sequence, a
            wild-type letter that differs from the sequence, an unknown mutant letter, or a position changed twice.
    """
    if not isinstance(text, str) or not text.strip():
        raise MutationError(f"empty mutant {text!r}; expected e.g. 'A24G' or 'A24G:L30P'.")
    substitutions = []
    seen = {}
    for part in text.strip().split(":"):
        part = part.strip()
        match = _SUBSTITUTION.match(part)
        if match is None:
            raise MutationError(
                f"mutant {text!r}: {part!r} is not a substitution written like 'A24G' (wild-type residue, "
                "position, mutant residue, upper case)."
            )
        wild_type, number, mutant = match.group(1), int(match.group(2)), match.group(3)
        position = number - offset_idx
        if not 0 <= position < len(sequence):
            raise MutationError(
                f"mutant {text!r}: position {number} is outside the sequence (positions {offset_idx}.."
                f"{len(sequence) - 1 + offset_idx} with offset {offset_idx})."
            )
        if sequence[position] != wild_type:
            raise MutationError(
                f"mutant {text!r}: the wild-type residue at position {number} is {sequence[position]!r}, not "
                f"{wild_type!r} (check the sequence and the position offset, now {offset_idx})."
            )
        if mutant not in RESIDUES:
            raise MutationError(f"mutant {text!r}: {mutant!r} is not a residue letter ({RESIDUES}).")
        if position in seen:
            raise MutationError(f"mutant {text!r}: position {number} is changed twice ({seen[position]}, {part}).")
        seen[position] = part
        substitutions.append(Substitution(wild_type, position, mutant))
    return tuple(substitutions)


def apply_mutant(sequence, substitutions):
    """The sequence with every substitution applied."""
    residues = list(sequence)
    for substitution in substitutions:
        residues[substitution.position] = substitution.mutant
    return "".join(residues)


# ------------------------------------------------------------------------------------------------ model passes


def _tokenizer(tokenizer, model=None):
    """`tokenizer` as `resolve_tokenizer` reads it; by default the model family's (ESM C's for an ESM C model)."""
    from tf_esm.tokenization import EsmcTokenizer, resolve_tokenizer

    if tokenizer is None and getattr(getattr(model, "config", None), "model_type", None) == "esmc":
        return EsmcTokenizer()
    return resolve_tokenizer(tokenizer)


def _encode(tokenizer, sequence):
    """`<cls> residues <eos>` ids; each residue must be one vocabulary token (else positions would shift)."""
    vocab = tokenizer.get_vocab()
    missing = sorted({char for char in sequence if char not in vocab})
    if missing:
        raise MutationError(f"residue(s) {missing} are not in the model's vocabulary ({tokenizer.vocab_file}).")
    return np.asarray([tokenizer.cls_token_id] + [vocab[char] for char in sequence] + [tokenizer.eos_token_id],
                      dtype=np.int32)


def _window_tokens(model, sequence, long):
    """The tokens one forward pass may take (None: no limit), after checking `long` and, for "error", the length."""
    if long not in ("window", "error"):
        raise ValueError(f"long must be 'window' or 'error', got {long!r}.")
    limit = context_tokens(model.config)
    if long == "error" and limit is not None and len(sequence) + 2 > limit:
        raise MutationError(
            f"the sequence has {len(sequence)} residues, but this model's context holds at most {limit - 2} (plus "
            "<cls> and <eos>); pass long='window' (tf-esm score --long window) to score it in windows as ProteinGym "
            "does, or score a window of the sequence around the mutations.")
    return limit


class _LogitsFunction:
    """The model's LM logits for a batch of equal-length rows, compiled once per model (TensorFlow backend)."""

    _cache = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, model):
        if model not in cls._cache:
            cls._cache[model] = cls(model)
        return cls._cache[model]

    def __init__(self, model):
        import keras

        model_ref = weakref.ref(model)  # the cache must not keep the model alive

        def forward(input_ids):
            with no_gradients():  # PyTorch: no autograd record of the pass
                return model_ref()(input_ids, training=False).logits

        self.function = forward
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            self.function = tf.function(forward, input_signature=[tf.TensorSpec((None, None), tf.int32)])

    def log_probs(self, input_ids):
        logits = to_numpy(self.function(np.asarray(input_ids, dtype=np.int32))).astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def _rows_per_batch(num_tokens, max_tokens_per_batch):
    return max(1, int(max_tokens_per_batch) // int(num_tokens))


def _masked_log_probs(model, tokenizer, rows, max_tokens_per_batch, progress_callback):
    """Log-probabilities at the masked token of each row `(input_ids, token_position)`: each row's `input_ids` is cut
    to ProteinGym's optimal window around its position where it is longer than the model's context, the position is
    masked, and rows of equal length share batches. Returns (len(rows), vocab) float64."""
    logits = _LogitsFunction.of(model)
    limit = context_tokens(model.config)
    cut = []
    for input_ids, token_position in rows:
        start, end = optimal_window(token_position, len(input_ids), limit) if limit else (0, len(input_ids))
        cut.append((input_ids, start, end, token_position))
    result = np.empty((len(rows), tokenizer.vocab_size))
    by_length = {}
    for index, (_, start, end, _) in enumerate(cut):
        by_length.setdefault(end - start, []).append(index)
    for num_tokens, indices in by_length.items():
        step = _rows_per_batch(num_tokens, max_tokens_per_batch)
        for first in range(0, len(indices), step):
            chunk = indices[first:first + step]
            batch = np.stack([cut[index][0][cut[index][1]:cut[index][2]] for index in chunk])
            columns = np.asarray([cut[index][3] - cut[index][1] for index in chunk])
            batch[np.arange(len(chunk)), columns] = tokenizer.mask_token_id
            log_probs = logits.log_probs(batch)[np.arange(len(chunk)), columns]
            result[chunk] = log_probs[:, :result.shape[1]]
            if progress_callback is not None:
                progress_callback(len(chunk))
    return result


def wt_marginals(model, sequence, tokenizer=None, long="window"):
    """Log-probabilities (L, vocab) at each residue from the unmasked `sequence`: one forward pass, or, for a
    protein longer than the model's context, ProteinGym's overlapping windows with their log-probabilities averaged
    under `windows.overlap_weights` (how ProteinGym scores ESM-1b).

    Args:
        model: a masked-LM model (its output has `.logits`; its `config` gives the context).
        sequence: the wild-type residues.
        tokenizer: an `EsmTokenizer` (default: the standard ESM vocabulary).
        long: "window" (default) or "error" (MutationError for a protein longer than the context).

    Examples:

    ```python
    >>> log_probs = wt_marginals(model, "MKTAYIAKQR")
    >>> log_probs.shape  # (residues, vocabulary)
    (10, 33)
    ```
    """
    tokenizer = _tokenizer(tokenizer, model)
    input_ids = _encode(tokenizer, sequence)
    limit = _window_tokens(model, sequence, long)
    logits = _LogitsFunction.of(model)
    if limit is None or len(input_ids) <= limit:
        return logits.log_probs(input_ids[None])[0, 1:-1, :tokenizer.vocab_size]
    weights = overlap_weights(limit)
    total = np.zeros((len(input_ids), tokenizer.vocab_size))
    weight = np.zeros(len(input_ids))
    for start, end in overlapping_windows(len(input_ids), limit):
        total[start:end] += logits.log_probs(input_ids[None, start:end])[0, :, :tokenizer.vocab_size] * weights[:, None]
        weight[start:end] += weights
    return (total / weight[:, None])[1:-1]


@renamed_keywords(toks_per_batch="max_tokens_per_batch")
def masked_marginals(model, sequence, positions=None, tokenizer=None,
                     max_tokens_per_batch=DEFAULT_MAX_TOKENS_PER_BATCH, progress_callback=None, long="window"):
    """Log-probabilities (L, vocab): row i from a forward pass of `sequence` with residue i masked; for a protein
    longer than the model's context, of ProteinGym's optimal window around residue i (`windows.optimal_window`).

    Args:
        model: a masked-LM model (its output has `.logits`; its `config` gives the context).
        sequence: the wild-type residues.
        positions: 0-based residue indices to compute (default: all); the other rows are NaN.
        tokenizer: an `EsmTokenizer` (default: the standard ESM vocabulary).
        max_tokens_per_batch: token budget per batch of masked copies (`toks_per_batch`: its deprecated name).
        progress_callback: called with the number of forward passes (masked copies) finished in each batch.
        long: "window" (default) or "error" (MutationError for a protein longer than the context).

    Examples:

    ```python
    >>> log_probs = masked_marginals(model, "MKTAYIAKQR", positions=[1, 2])
    >>> log_probs[1, tokenizer.get_vocab()["A"]] - log_probs[1, tokenizer.get_vocab()["K"]]  # K2A's score
    ```
    """
    tokenizer = _tokenizer(tokenizer, model)
    input_ids = _encode(tokenizer, sequence)
    _window_tokens(model, sequence, long)
    positions = np.arange(len(sequence)) if positions is None else np.unique(np.asarray(positions, dtype=np.int64))
    result = np.full((len(sequence), tokenizer.vocab_size), np.nan)
    result[positions] = _masked_log_probs(model, tokenizer, [(input_ids, position + 1) for position in positions],
                                          max_tokens_per_batch, progress_callback)
    return result


@renamed_keywords(toks_per_batch="max_tokens_per_batch")
def pseudo_log_likelihoods(model, sequences, tokenizer=None, max_tokens_per_batch=DEFAULT_MAX_TOKENS_PER_BATCH,
                           progress_callback=None, long="window"):
    """`sum_i log p(x_i | x_-i)` over all residues of each sequence (one masked forward pass per residue; for a
    protein longer than the model's context, of the optimal window around residue i as for masked marginals).

    Args:
        model: a masked-LM model.
        sequences: residue strings.
        tokenizer, max_tokens_per_batch, progress_callback, long: as in `masked_marginals`; rows of equal length
            (of different sequences too) share batches.

    Examples:

    ```python
    >>> pseudo_log_likelihoods(model, ["MKTAYIAKQR", "MKTAYIAKQA"])
    array([-31.2..., -30.9...])
    ```
    """
    tokenizer = _tokenizer(tokenizer, model)
    encoded = [_encode(tokenizer, sequence) for sequence in sequences]
    for sequence in sequences:
        _window_tokens(model, sequence, long)
    pairs = [(index, position) for index, input_ids in enumerate(encoded) for position in range(1, len(input_ids) - 1)]
    log_probs = _masked_log_probs(model, tokenizer, [(encoded[index], position) for index, position in pairs],
                                  max_tokens_per_batch, progress_callback)
    totals = np.zeros(len(sequences))
    true_ids = np.asarray([encoded[index][position] for index, position in pairs], dtype=np.int64)
    np.add.at(totals, np.asarray([index for index, _ in pairs], dtype=np.int64),
              log_probs[np.arange(len(pairs)), true_ids])
    return totals


def count_forward_passes(sequence, mutants, strategy, model=None):
    """How many sequence forward passes `score_mutants` makes (for progress reporting); with `model`, counting
    wt-marginals' windows for a protein longer than its context."""
    if strategy == "wt-marginals":
        limit = None if model is None else context_tokens(model.config)
        return 1 if limit is None else len(overlapping_windows(len(sequence) + 2, limit))
    if strategy == "masked-marginals":
        return len({s.position for mutant in mutants for s in mutant})
    distinct = {apply_mutant(sequence, mutant) for mutant in mutants} | {sequence}
    return len(distinct) * len(sequence)


def _log_probs(model, sequence, positions, strategy, tokenizer, max_tokens_per_batch, progress_callback, long):
    """(L, vocab) log-probabilities of a marginal strategy; rows outside `positions` may be NaN."""
    if strategy == "wt-marginals":
        log_probs = wt_marginals(model, sequence, tokenizer, long)
        if progress_callback is not None:
            progress_callback(count_forward_passes(sequence, (), strategy, model))
        return log_probs
    return masked_marginals(model, sequence, positions, tokenizer, max_tokens_per_batch, progress_callback, long)


@renamed_keywords(toks_per_batch="max_tokens_per_batch")
def score_mutants(model, sequence, mutants, strategy="masked-marginals", offset_idx=1, tokenizer=None,
                  max_tokens_per_batch=DEFAULT_MAX_TOKENS_PER_BATCH, progress_callback=None, long="window"):
    """Score each mutant of `sequence` with a masked language model (see the module docstring).

    Args:
        model: a `TFEsmForMaskedLM` (any model whose output has `.logits` over the vocabulary and whose `config`
            gives the context, see `windows.context_tokens`).
        sequence: the wild-type sequence (validated residue letters).
        mutants: strings like `"A24G"` / `"A24G:L30P"`, or tuples of `Substitution` from `parse_mutant`.
        strategy: "masked-marginals", "wt-marginals" or "pseudo-ppl".
        offset_idx: the position number of the first residue in the mutant strings.
        tokenizer: an `EsmTokenizer` (default: the standard ESM vocabulary).
        max_tokens_per_batch: token budget of one batch of forward passes (`toks_per_batch`: its deprecated
            name).
        progress_callback: called with the number of forward passes finished after each batch.
        long: a protein longer than the model's context: "window" (default) scores it in ProteinGym's windows
            (masked-marginals and pseudo-ppl: the optimal window around each masked residue; wt-marginals: the
            weighted overlapping windows); "error" raises MutationError.

    Returns:
        A float64 array of scores, one per mutant; higher means more likely under the model than the wild type.

    Examples:

    ```python
    >>> score_mutants(model, "MKTAYIAKQR", ["K2A", "T3G:Y5F"], strategy="masked-marginals")
    array([-1.3..., -2.0...])
    ```
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}.")
    parsed = [parse_mutant(m, sequence, offset_idx) if isinstance(m, str) else tuple(m) for m in mutants]
    tokenizer = _tokenizer(tokenizer, model)
    if strategy == "pseudo-ppl":
        variants = list(dict.fromkeys([sequence] + [apply_mutant(sequence, mutant) for mutant in parsed]))
        pll = dict(zip(variants, pseudo_log_likelihoods(model, variants, tokenizer, max_tokens_per_batch,
                                                        progress_callback, long)))
        return np.asarray([pll[apply_mutant(sequence, mutant)] - pll[sequence] for mutant in parsed])
    positions = sorted({s.position for mutant in parsed for s in mutant})
    log_probs = _log_probs(model, sequence, positions, strategy, tokenizer, max_tokens_per_batch, progress_callback,
                           long)
    vocab = tokenizer.get_vocab()
    return np.asarray([
        sum(log_probs[s.position, vocab[s.mutant]] - log_probs[s.position, vocab[s.wild_type]] for s in mutant)
        for mutant in parsed
    ], dtype=np.float64)


def score_ensemble(models, sequence, mutants, **kwargs):
    """The mean of `score_mutants` over several models: ESM-1v's score is the mean over its five checkpoints
    (Meier et al. 2021; ProteinGym's `Ensemble_ESM1v` column: a plain mean of the models' scores).

    Args:
        models: masked-LM models (e.g. the five `facebook/esm1v_t33_650M_UR90S_<1..5>`).
        sequence, mutants: as in `score_mutants`.
        **kwargs: `score_mutants`' keyword arguments (strategy, offset_idx, tokenizer, long, ...).

    Returns:
        (mean, per_model): float64 arrays of shape (len(mutants),) and (len(models), len(mutants)).

    Examples:

    ```python
    >>> models = [TFEsmForMaskedLM.from_pretrained(f"facebook/esm1v_t33_650M_UR90S_{i}") for i in range(1, 6)]
    >>> mean, per_model = score_ensemble(models, "MKTAYIAKQR", ["K2A"])
    ```
    """
    per_model = np.stack([score_mutants(model, sequence, mutants, **kwargs) for model in models])
    return per_model.mean(axis=0), per_model


# ------------------------------------------------------------------------------------------------ saturation scans


STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def saturation_mutants(sequence, offset_idx=1):
    """Every single substitution of `sequence` to a standard amino acid: `A24G` strings, position by position, the
    mutant residues in alphabetical order (19 per position; 20 where the wild type is not a standard residue).

    Examples:

    ```python
    >>> saturation_mutants("MK")[:3], len(saturation_mutants("MK"))
    (['M1A', 'M1C', 'M1D'], 38)
    ```
    """
    return [f"{wild_type}{position + offset_idx}{mutant}" for position, wild_type in enumerate(sequence)
            for mutant in STANDARD_AMINO_ACIDS if mutant != wild_type]


@renamed_keywords(toks_per_batch="max_tokens_per_batch")
def saturation_scan(model, sequence, strategy="masked-marginals", positions=None, tokenizer=None,
                    max_tokens_per_batch=DEFAULT_MAX_TOKENS_PER_BATCH, progress_callback=None, long="window"):
    """Scores of every single substitution at `positions` (default: all) of `sequence`: masked-marginals needs one
    forward pass per position (all 19 scores at a position come from it), wt-marginals one (or one per window).

    Args:
        model: a masked-LM model.
        sequence: the wild-type residues.
        strategy: "masked-marginals" or "wt-marginals" (pseudo-ppl would need a pass per residue for each of the
            19 x L mutants: ValueError).
        positions: 0-based residue indices to scan (default: every residue).
        tokenizer, max_tokens_per_batch, progress_callback, long: as in `score_mutants`.

    Returns:
        (L, 20) float64 scores `log p(mt) - log p(wt)`, columns in `STANDARD_AMINO_ACIDS` order (the wild-type
        column is 0); rows outside `positions` are NaN. `saturation_mutants` names them in the same order as
        `scores[~wild_type_mask]`.

    Examples:

    ```python
    >>> scores = saturation_scan(model, "MKTAYIAKQR")
    >>> scores.shape
    (10, 20)
    ```
    """
    if strategy not in ("masked-marginals", "wt-marginals"):
        raise ValueError(f"a saturation scan takes strategy 'masked-marginals' or 'wt-marginals', got {strategy!r} "
                         "(pseudo-ppl would need a forward pass per residue for each of the 19 x L mutants).")
    tokenizer = _tokenizer(tokenizer, model)
    _encode(tokenizer, sequence)
    positions = np.arange(len(sequence)) if positions is None else np.asarray(positions, dtype=np.int64)
    log_probs = _log_probs(model, sequence, positions, strategy, tokenizer, max_tokens_per_batch, progress_callback,
                           long)
    vocab = tokenizer.get_vocab()
    columns = [vocab[residue] for residue in STANDARD_AMINO_ACIDS]
    wild_type = np.asarray([vocab[residue] for residue in sequence])
    scores = np.full((len(sequence), len(columns)), np.nan)
    scores[positions] = log_probs[positions][:, columns] - log_probs[positions, wild_type[positions]][:, None]
    return scores


def scan_scores_in_order(sequence, scores):
    """`saturation_scan`'s (L, 20) scores flattened in `saturation_mutants` order (wild-type columns dropped)."""
    keep = np.asarray([[mutant != wild_type for mutant in STANDARD_AMINO_ACIDS] for wild_type in sequence])
    return scores[keep]


# ------------------------------------------------------------------------------------------------ benchmarks


def spearman(predicted, measured):
    """Spearman's rank correlation of two score vectors, ranks averaged over ties, pairs with a NaN dropped: how
    ProteinGym ranks zero-shot predictors against a DMS's `DMS_score`. Written in numpy (Pearson's r of the average
    ranks, as `scipy.stats.spearmanr`) so scoring needs no SciPy.

    Returns:
        A float, NaN when fewer than two pairs remain or either side is constant.

    Examples:

    ```python
    >>> spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 20.0, 40.0])
    0.9486...
    ```
    """
    predicted, measured = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    keep = ~(np.isnan(predicted) | np.isnan(measured))
    predicted, measured = predicted[keep], measured[keep]
    if len(predicted) < 2:
        return float("nan")
    x, y = _average_ranks(predicted), _average_ranks(measured)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float("nan") if denominator == 0 else float((x * y).sum() / denominator)


def _average_ranks(values):
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]
