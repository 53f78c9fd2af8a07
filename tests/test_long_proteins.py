"""Proteins longer than the model's context in `embed_sequences` (`long="window"|"truncate"|"error"`), against an
independent implementation of the window rule over transformers' `EsmModel`, window by window.

The tiny checkpoints hold 64 positions: a context of 62 tokens, 60 residues (`max_position_embeddings - 2`, as
transformers' tokenizers set `model_max_length`; the absolute table's capacity for ESM-1b's layout, the same).
"""

from fractions import Fraction

import numpy as np
import pytest
import torch

from tests._reference import TINY
from tf_esm import TFEsmForMaskedLM
from tf_esm.configuration import ESM2_VOCAB
from tf_esm.pipelines.inference import embed_sequences
from tf_esm.pipelines.windows import context_residues, embedding_windows, most_central_window

CONTEXT = TINY["max_position_embeddings"] - 4  # residues: 64 positions - 2 (model_max_length) - <cls>/<eos>
RESIDUES = "LAGVSERTIDPKQNFYMHWC"


@pytest.fixture(scope="module", params=["rotary", "absolute"])
def pair(request, reference_checkpoints):
    reference = reference_checkpoints(request.param)
    return reference, TFEsmForMaskedLM.from_pretrained(reference.path)


def _sequence(length, seed=0):
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list(RESIDUES), size=length))


def _reference_hidden(reference, residues):
    """transformers' last hidden state (after the final layer norm) of `<cls> residues <eos>`, residues only."""
    vocab = {token: index for index, token in enumerate(ESM2_VOCAB)}
    ids = torch.as_tensor([[0] + [vocab[letter] for letter in residues] + [2]])
    with torch.no_grad():
        output = reference.model.esm(ids)
    return output.last_hidden_state[0].double().numpy()


def _reference_windowed(reference, sequence, window, overlap):
    """The documented rule written out independently: the fewest windows of `window` residues with at least
    `overlap` shared, starts spread evenly (exact fractions, rounded down); between neighbours the switch is at the
    middle of their overlap (a residue goes to the later window only when it is strictly nearer the earlier
    window's end than the later one's start). Valid while no residue lies in three windows (overlap < window / 2).
    Returns (per-residue vectors, <cls> of the first window, number of windows)."""
    length = len(sequence)
    count = -(-(length - overlap) // (window - overlap))
    starts = [int(Fraction(k * (length - window), count - 1)) for k in range(count)]
    passes = [_reference_hidden(reference, sequence[start:start + window]) for start in starts]
    rows = []
    for position in range(length):
        chosen = 0
        for k in range(1, count):
            earlier_end = starts[k - 1] + window
            if position >= starts[k] and (position - starts[k]) > (earlier_end - 1 - position):
                chosen = k
            elif position >= earlier_end:
                chosen = k
        rows.append(passes[chosen][1 + position - starts[chosen]])
    return np.asarray(rows), passes[0][0], count


def test_context_is_max_positions_minus_two_tokens(pair):
    _, model = pair
    assert context_residues(model.config) == CONTEXT


def test_a_protein_within_the_context_is_unchanged(pair):
    reference, model = pair
    sequence = _sequence(CONTEXT, seed=1)
    windowed, = embed_sequences(model, [sequence], include=("mean", "per_tok", "bos"))
    refused, = embed_sequences(model, [sequence], include=("mean", "per_tok", "bos"), long="error")
    expected = _reference_hidden(reference, sequence)
    assert windowed["windows"] == 1 and windowed["truncated"] is False and windowed["length"] == CONTEXT
    np.testing.assert_allclose(windowed["representations"][2], expected[1:-1], atol=1e-5)
    np.testing.assert_allclose(windowed["mean_representations"][2], expected[1:-1].mean(0), atol=1e-5)
    np.testing.assert_allclose(windowed["bos_representations"][2], expected[0], atol=1e-5)
    np.testing.assert_array_equal(windowed["representations"][2], refused["representations"][2])


@pytest.mark.parametrize("length, window, overlap", [
    (150, None, None),  # defaults: the context (60), a quarter of it (15): 3 windows
    (150, 40, 10),  # 5 windows
    (61, None, 0),  # one residue past the context, no overlap asked: 2 windows sharing 59
])
def test_long_protein_matches_the_independent_window_rule(pair, length, window, overlap):
    reference, model = pair
    sequence = _sequence(length, seed=length)
    short = _sequence(17, seed=3)  # batched beside the windows
    results = embed_sequences(model, [short, sequence], include=("mean", "per_tok", "bos"), window=window,
                              overlap=overlap, max_tokens_per_batch=200)
    rule_window = CONTEXT if window is None else window
    rule_overlap = rule_window // 4 if overlap is None else overlap
    expected, cls, count = _reference_windowed(reference, sequence, rule_window, rule_overlap)
    result = results[1]
    assert result["length"] == length and result["truncated"] is False and result["windows"] == count > 1
    np.testing.assert_allclose(result["representations"][2], expected, atol=1e-5)
    np.testing.assert_allclose(result["mean_representations"][2], expected.mean(0), atol=1e-5)
    np.testing.assert_allclose(result["bos_representations"][2], cls, atol=1e-5)
    np.testing.assert_allclose(results[0]["representations"][2], _reference_hidden(reference, short)[1:-1],
                               atol=1e-5)


def test_truncate_and_error_policies(pair):
    reference, model = pair
    sequence = _sequence(100, seed=5)
    truncated, = embed_sequences(model, [sequence], include=("mean",), long="truncate")
    assert truncated["length"] == CONTEXT and truncated["truncated"] is True and truncated["windows"] == 1
    np.testing.assert_allclose(truncated["mean_representations"][2],
                               _reference_hidden(reference, sequence[:CONTEXT])[1:-1].mean(0), atol=1e-5)
    legacy, = embed_sequences(model, [sequence], include=("mean",), truncation_seq_length=30)  # implies truncate
    assert legacy["length"] == 30 and legacy["truncated"] is True
    with pytest.raises(ValueError, match=r"sequences\[1\] has 100 residues, more than this model's context of 60"):
        embed_sequences(model, ["MKV", sequence], long="error")
    with pytest.raises(ValueError, match=r"sequences\[0\] has 100 residues.*contact maps are not put together"):
        embed_sequences(model, [sequence], include=("contacts",))
    with pytest.raises(ValueError, match="long must be one of"):
        embed_sequences(model, [sequence], long="split")
    with pytest.raises(ValueError, match="overlap must be at least 0 and less than the window"):
        embed_sequences(model, [sequence], window=20, overlap=20)


def test_absolute_table_refuses_a_window_past_it(reference_checkpoints):
    model = TFEsmForMaskedLM.from_pretrained(reference_checkpoints("absolute").path)
    with pytest.raises(ValueError, match="window 61 is more residues than this model's absolute position table"):
        embed_sequences(model, [_sequence(100)], window=61)


def test_window_plan_covers_every_residue_once():
    for length, window, overlap in [(2500, 1022, 255), (1023, 1022, 0), (97, 10, 4), (50, 10, 7)]:
        windows = embedding_windows(length, window, overlap)
        assert windows[0][0] == 0 and windows[-1][1] == length
        assert all(end - start == window for start, end in windows)
        assert all(windows[k][1] - windows[k + 1][0] >= overlap for k in range(len(windows) - 1))
        source = most_central_window(windows, length)
        assert all(windows[w][0] <= r < windows[w][1] for r, w in enumerate(source))
    assert embedding_windows(30, 40, 10) == [(0, 30)]
