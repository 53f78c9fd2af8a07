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
`label_row` does); for `pseudo-ppl` the mutant sequence carries all its substitutions at once. Log-probabilities
are the log-softmax of the LM logits over the whole vocabulary, as in the reference.

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


def _tokenizer(tokenizer):
    from tf_esm.tokenization import resolve_tokenizer

    return resolve_tokenizer(tokenizer)


def _encode(tokenizer, sequence):
    """`<cls> residues <eos>` ids; each residue must be one vocabulary token (else positions would shift)."""
    vocab = tokenizer.get_vocab()
    missing = sorted({char for char in sequence if char not in vocab})
    if missing:
        raise MutationError(f"residue(s) {missing} are not in the model's vocabulary ({tokenizer.vocab_file}).")
    return np.asarray([tokenizer.cls_token_id] + [vocab[char] for char in sequence] + [tokenizer.eos_token_id],
                      dtype=np.int32)


def _check_length(model, num_tokens):
    limit = model.config.default_max_length()
    if limit is not None and num_tokens > limit:
        raise MutationError(
            f"the sequence has {num_tokens - 2} residues, but this model's absolute position table holds at most "
            f"{limit - 2} (plus <cls> and <eos>); score a window of the sequence around the mutations instead."
        )


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


def _masked_rows(input_ids, positions, mask_id):
    """One copy of `input_ids` per token position in `positions`, with that position masked."""
    rows = np.repeat(input_ids[None, :], len(positions), axis=0)
    rows[np.arange(len(positions)), positions] = mask_id
    return rows


def _rows_per_batch(num_tokens, max_tokens_per_batch):
    return max(1, int(max_tokens_per_batch) // int(num_tokens))


def wt_marginals(model, sequence, tokenizer=None):
    """Log-probabilities (L, vocab) at each residue from one forward pass of the unmasked `sequence`."""
    tokenizer = _tokenizer(tokenizer)
    input_ids = _encode(tokenizer, sequence)
    _check_length(model, len(input_ids))
    return _LogitsFunction.of(model).log_probs(input_ids[None])[0, 1:-1]


@renamed_keywords(toks_per_batch="max_tokens_per_batch")
def masked_marginals(model, sequence, positions=None, tokenizer=None,
                     max_tokens_per_batch=DEFAULT_MAX_TOKENS_PER_BATCH, progress_callback=None):
    """Log-probabilities (L, vocab): row i from a forward pass of `sequence` with residue i masked.

    Args:
        positions: 0-based residue indices to compute (default: all); the other rows are NaN.
        max_tokens_per_batch: token budget per batch of masked copies (`toks_per_batch`: its deprecated name).
        progress_callback: called with the number of forward passes (masked copies) finished in each batch.
    """
    tokenizer = _tokenizer(tokenizer)
    input_ids = _encode(tokenizer, sequence)
    _check_length(model, len(input_ids))
    positions = np.arange(len(sequence)) if positions is None else np.unique(np.asarray(positions, dtype=np.int64))
    logits = _LogitsFunction.of(model)
    result = np.full((len(sequence), tokenizer.vocab_size), np.nan)
    step = _rows_per_batch(len(input_ids), max_tokens_per_batch)
    for start in range(0, len(positions), step):
        chunk = positions[start:start + step]
        log_probs = logits.log_probs(_masked_rows(input_ids, chunk + 1, tokenizer.mask_token_id))
        result[chunk] = log_probs[np.arange(len(chunk)), chunk + 1, :result.shape[1]]
        if progress_callback is not None:
            progress_callback(len(chunk))
    return result


@renamed_keywords(toks_per_batch="max_tokens_per_batch")
def pseudo_log_likelihoods(model, sequences, tokenizer=None, max_tokens_per_batch=DEFAULT_MAX_TOKENS_PER_BATCH,
                           progress_callback=None):
    """`sum_i log p(x_i | x_-i)` over all residues of each sequence (one masked forward pass per residue).

    Rows of equal-length sequences share batches. `max_tokens_per_batch` and `progress_callback` as in
    `masked_marginals`.
    """
    tokenizer = _tokenizer(tokenizer)
    logits = _LogitsFunction.of(model)
    encoded = [_encode(tokenizer, sequence) for sequence in sequences]
    for input_ids in encoded:
        _check_length(model, len(input_ids))
    totals = np.zeros(len(sequences))
    by_length = {}
    for index, input_ids in enumerate(encoded):
        by_length.setdefault(len(input_ids), []).append(index)
    for num_tokens, indices in by_length.items():
        # Every (sequence, residue) pair of this length, in one stream cut into batches.
        pairs = [(index, position) for index in indices for position in range(1, num_tokens - 1)]
        step = _rows_per_batch(num_tokens, max_tokens_per_batch)
        for start in range(0, len(pairs), step):
            chunk = pairs[start:start + step]
            rows = np.stack([encoded[index] for index, _ in chunk])
            columns = np.asarray([position for _, position in chunk])
            true_ids = rows[np.arange(len(chunk)), columns]
            rows[np.arange(len(chunk)), columns] = tokenizer.mask_token_id
            log_probs = logits.log_probs(rows)[np.arange(len(chunk)), columns, true_ids]
            np.add.at(totals, [index for index, _ in chunk], log_probs)
            if progress_callback is not None:
                progress_callback(len(chunk))
    return totals


def count_forward_passes(sequence, mutants, strategy):
    """How many sequence forward passes `score_mutants` makes (for progress reporting)."""
    if strategy == "wt-marginals":
        return 1
    if strategy == "masked-marginals":
        return len({s.position for mutant in mutants for s in mutant})
    distinct = {apply_mutant(sequence, mutant) for mutant in mutants} | {sequence}
    return len(distinct) * len(sequence)


@renamed_keywords(toks_per_batch="max_tokens_per_batch")
def score_mutants(model, sequence, mutants, strategy="masked-marginals", offset_idx=1, tokenizer=None,
                  max_tokens_per_batch=DEFAULT_MAX_TOKENS_PER_BATCH, progress_callback=None):
    """Score each mutant of `sequence` with a masked language model (see the module docstring).

    Args:
        model: a `TFEsmForMaskedLM` (any model whose output has `.logits` over the vocabulary).
        sequence: the wild-type sequence (validated residue letters).
        mutants: strings like `"A24G"` / `"A24G:L30P"`, or tuples of `Substitution` from `parse_mutant`.
        strategy: "masked-marginals", "wt-marginals" or "pseudo-ppl".
        offset_idx: the position number of the first residue in the mutant strings.
        tokenizer: an `EsmTokenizer` (default: the standard ESM vocabulary).
        max_tokens_per_batch: token budget of one batch of forward passes (`toks_per_batch`: its deprecated
            name).
        progress_callback: called with the number of forward passes finished after each batch.

    Returns:
        A float64 array of scores, one per mutant; higher means more likely under the model than the wild type.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}.")
    parsed = [parse_mutant(m, sequence, offset_idx) if isinstance(m, str) else tuple(m) for m in mutants]
    tokenizer = _tokenizer(tokenizer)
    if strategy == "pseudo-ppl":
        variants = list(dict.fromkeys([sequence] + [apply_mutant(sequence, mutant) for mutant in parsed]))
        pll = dict(zip(variants, pseudo_log_likelihoods(model, variants, tokenizer, max_tokens_per_batch,
                                                        progress_callback)))
        return np.asarray([pll[apply_mutant(sequence, mutant)] - pll[sequence] for mutant in parsed])
    if strategy == "wt-marginals":
        log_probs = wt_marginals(model, sequence, tokenizer)
        if progress_callback is not None:
            progress_callback(1)
    else:
        positions = sorted({s.position for mutant in parsed for s in mutant})
        log_probs = masked_marginals(model, sequence, positions, tokenizer, max_tokens_per_batch, progress_callback)
    vocab = tokenizer.get_vocab()
    return np.asarray([
        sum(log_probs[s.position, vocab[s.mutant]] - log_probs[s.position, vocab[s.wild_type]] for s in mutant)
        for mutant in parsed
    ], dtype=np.float64)
