"""Variant-effect scores (`tf_esm.pipelines.scoring`) against the ESM-1v definitions computed directly from the PyTorch
reference model's logits, plus mutant parsing and its errors."""

import numpy as np
import pytest
import torch

from tf_esm import EsmConfig, TFEsmForMaskedLM
from tf_esm.pipelines.scoring import (
    MutationError,
    Substitution,
    apply_mutant,
    masked_marginals,
    parse_mutant,
    pseudo_log_likelihoods,
    score_mutants,
)
from tests._reference import TINY
from tests._tiny_mlm_fixtures import checkpoint, model, tokenizer  # noqa: F401 (pytest fixtures)

SEQUENCE = "MKTAYIAKQRQISFV"
MUTANTS = ["K2A", "T3G:Y5F", "M1M", "V15W", "A4C:I6L:Q9E"]


def _torch_log_probs(reference, rows):
    with torch.no_grad():
        logits = reference(torch.as_tensor(np.asarray(rows), dtype=torch.long)).logits
    return torch.log_softmax(logits.double(), dim=-1).numpy()


def _reference_scores(reference, tokenizer, strategy):
    """The ESM-1v formulas written out with the transformers model, one sequence per forward pass."""
    ids = np.asarray(tokenizer.encode(SEQUENCE))
    vocab = tokenizer.get_vocab()
    mask = tokenizer.mask_token_id

    def masked_at(row, token_position):
        row = row.copy()
        row[token_position] = mask
        return row

    def pll(sequence):
        row = np.asarray(tokenizer.encode(sequence))
        return sum(_torch_log_probs(reference, [masked_at(row, i + 1)])[0, i + 1, vocab[sequence[i]]]
                   for i in range(len(sequence)))

    wt_log_probs = _torch_log_probs(reference, [ids])[0]
    scores = []
    for mutant in MUTANTS:
        substitutions = [(part[0], int(part[1:-1]) - 1, part[-1]) for part in mutant.split(":")]
        if strategy == "pseudo-ppl":
            mutated = list(SEQUENCE)
            for _, position, mt in substitutions:
                mutated[position] = mt
            scores.append(pll("".join(mutated)) - pll(SEQUENCE))
            continue
        total = 0.0
        for wt, position, mt in substitutions:
            log_probs = wt_log_probs if strategy == "wt-marginals" else _torch_log_probs(
                reference, [masked_at(ids, position + 1)])[0]
            total += log_probs[position + 1, vocab[mt]] - log_probs[position + 1, vocab[wt]]
        scores.append(total)
    return np.asarray(scores)


@pytest.mark.parametrize("strategy", ["masked-marginals", "wt-marginals", "pseudo-ppl"])
def test_scores_match_reference_formulas(model, checkpoint, tokenizer, strategy):
    expected = _reference_scores(checkpoint.model, tokenizer, strategy)
    scores = score_mutants(model, SEQUENCE, MUTANTS, strategy=strategy, max_tokens_per_batch=60)
    assert np.abs(expected).max() > 0.05  # random weights: non-trivial scores
    np.testing.assert_allclose(scores, expected, atol=2e-4, rtol=1e-4)
    assert scores[MUTANTS.index("M1M")] == pytest.approx(0.0, abs=1e-12)


def test_marginal_multi_mutants_are_sums_of_single_sites(model):
    singles = score_mutants(model, SEQUENCE, ["A4C", "I6L", "Q9E"], strategy="masked-marginals")
    combined = score_mutants(model, SEQUENCE, ["A4C:I6L:Q9E"], strategy="masked-marginals")
    assert combined[0] == pytest.approx(singles.sum(), abs=1e-9)


def test_masked_marginals_rows_and_batching(model, checkpoint, tokenizer):
    full = masked_marginals(model, SEQUENCE, max_tokens_per_batch=17)  # one masked copy per batch
    batched = masked_marginals(model, SEQUENCE, max_tokens_per_batch=10_000)
    np.testing.assert_allclose(full, batched, atol=1e-5)
    ids = np.asarray(tokenizer.encode(SEQUENCE))
    row = ids.copy()
    row[5] = tokenizer.mask_token_id
    np.testing.assert_allclose(full[4], _torch_log_probs(checkpoint.model, [row])[0, 5], atol=2e-4)
    some = masked_marginals(model, SEQUENCE, positions=[2, 7])
    assert np.isnan(some[0]).all() and not np.isnan(some[[2, 7]]).any()
    np.testing.assert_allclose(some[[2, 7]], full[[2, 7]], atol=1e-5)


def test_pseudo_log_likelihoods_independent_of_batching(model):
    sequences = [SEQUENCE, "MKTAYIAKQRQISFW", "GSHMLE"]
    small = pseudo_log_likelihoods(model, sequences, max_tokens_per_batch=20)
    large = pseudo_log_likelihoods(model, sequences, max_tokens_per_batch=100_000)
    np.testing.assert_allclose(small, large, atol=1e-4)


def test_parse_mutant_and_offsets():
    assert parse_mutant("K2A", SEQUENCE) == (Substitution("K", 1, "A"),)
    assert parse_mutant(" T3G:Y5F ", SEQUENCE) == (Substitution("T", 2, "G"), Substitution("Y", 4, "F"))
    assert parse_mutant("K1A", SEQUENCE, offset_idx=0) == (Substitution("K", 1, "A"),)
    assert parse_mutant("M-10A", SEQUENCE, offset_idx=-10) == (Substitution("M", 0, "A"),)
    assert apply_mutant(SEQUENCE, parse_mutant("M1W:V15A", SEQUENCE)) == "WKTAYIAKQRQISFA"


@pytest.mark.parametrize("text, message", [
    ("K2", "is not a substitution"),
    ("k2a", "is not a substitution"),
    ("", "empty mutant"),
    ("K2A:", "is not a substitution"),
    ("A16G", "position 16 is outside the sequence (positions 1..15"),
    ("A0G", "position 0 is outside"),
    ("A2G", "the wild-type residue at position 2 is 'K', not 'A'"),
    ("K2J", "'J' is not a residue letter"),
    ("K2A:K2C", "position 2 is changed twice"),
])
def test_malformed_mutants_are_named(text, message):
    with pytest.raises(MutationError) as error:
        parse_mutant(text, SEQUENCE)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_strategy_and_absolute_position_limit():
    config = EsmConfig(**dict(TINY, position_embedding_type="absolute", emb_layer_norm_before=True,
                              token_dropout=True))
    model = TFEsmForMaskedLM(config)
    with pytest.raises(ValueError, match="strategy must be one of"):
        score_mutants(model, SEQUENCE, ["K2A"], strategy="entropy")
    limit = TINY["max_position_embeddings"] - TINY["pad_token_id"] - 1
    long_sequence = "A" * (limit - 1)
    with pytest.raises(MutationError, match=f"at most {limit - 2}"):
        score_mutants(model, long_sequence, ["A1G"], strategy="wt-marginals", long="error")
    # The default scores it in ProteinGym's windows (tests/test_proteingym_scoring.py checks their numbers).
    assert np.isfinite(score_mutants(model, long_sequence, ["A1G"], strategy="wt-marginals")).all()
