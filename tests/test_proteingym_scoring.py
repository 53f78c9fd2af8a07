"""Variant scoring as ProteinGym does it (Notin et al. 2023; `proteingym/baselines/esm/compute_fitness.py`), against
the conventions re-written here over transformers' `EsmForMaskedLM` (expected values come from the reference model):
optimal windows for masked marginals of long proteins, weighted overlapping windows for wt-marginals (ESM-1b),
pseudo-log-likelihoods in windows, ESM-1v's mean over checkpoints, additive multi-mutants, Spearman's rho, and
saturation scans (rows equal `score_mutants`; a resumed scan writes the same file). Runs under every backend.

The tiny checkpoints hold 64 positions: a context of 62 tokens (ProteinGym's 1,024 for the real models).
"""

import csv
import math
import os

import numpy as np
import pytest
import torch

from tests._reference import TINY
from tf_esm import TFEsmForMaskedLM
from tf_esm.configuration import ESM2_VOCAB
from tf_esm.pipelines.scan import ScanError, write_saturation_scan
from tf_esm.pipelines.scoring import (
    MutationError, saturation_mutants, saturation_scan, scan_scores_in_order, score_ensemble, score_mutants, spearman)

WINDOW = TINY["max_position_embeddings"] - 2  # tokens per forward pass
VOCAB = {token: index for index, token in enumerate(ESM2_VOCAB)}
MASK = VOCAB["<mask>"]
RESIDUES = "LAGVSERTIDPKQNFYMHWC"
ATOL = 2e-4  # float32 logits of two implementations, differences of log-probabilities


def _sequence(length, seed):
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list(RESIDUES), size=length))


LONG = _sequence(100, seed=7)  # 102 tokens: past the 62-token context
SHORT = _sequence(20, seed=8)


def _mutants(sequence):
    """Singles near both ends and in the middle, and multi-mutants spanning windows."""
    picks = [position for position in (0, 5, 13, 30, 31, 50, 80, 99) if position < len(sequence)]
    singles = [f"{sequence[p]}{p + 1}{'A' if sequence[p] != 'A' else 'G'}" for p in picks]
    return singles + [":".join(singles[:2]), ":".join(singles[1::2])]


@pytest.fixture(scope="module", params=["rotary", "absolute"])
def pair(request, reference_checkpoints):
    reference = reference_checkpoints(request.param)
    return reference, TFEsmForMaskedLM.from_pretrained(reference.path)


# ------------------------------------------------------------------- the conventions, over the reference model


def _log_softmax(reference, token_rows):
    with torch.no_grad():
        logits = reference.model(torch.as_tensor(np.asarray(token_rows), dtype=torch.long)).logits
    return torch.log_softmax(logits.double(), dim=-1).numpy()


def _tokens(sequence):
    return np.asarray([VOCAB["<cls>"]] + [VOCAB[letter] for letter in sequence] + [VOCAB["<eos>"]])


def _proteingym_window(i, num_tokens):
    """utils/scoring_utils.get_optimal_window, with their 1,024 replaced by the tiny context."""
    half = WINDOW // 2
    if num_tokens <= WINDOW:
        return 0, num_tokens
    if i < half:
        return 0, WINDOW
    if i >= num_tokens - half:
        return num_tokens - WINDOW, num_tokens
    return max(0, i - half), min(num_tokens, i + half)


def _reference_masked(reference, sequence, token_position):
    """Mask token `token_position` of the whole protein, cut ProteinGym's window, read the masked token's row."""
    tokens = _tokens(sequence)
    tokens[token_position] = MASK
    start, end = _proteingym_window(token_position, len(tokens))
    return _log_softmax(reference, [tokens[start:end]])[0, token_position - start]


def _reference_wt(reference, sequence):
    """compute_fitness.py's `--scoring-window overlapping` for wt-marginals, its constants (1024 tokens: ramps of
    256 centred at 128, scale 16, step 511) taken as fractions of the window."""
    tokens = _tokens(sequence)
    length = len(tokens)
    if length <= WINDOW:
        return _log_softmax(reference, [tokens])[0]
    ramp, centre, scale, step = WINDOW // 4, WINDOW // 8, WINDOW / 64, WINDOW // 2 - 1
    weights = np.ones(WINDOW)
    for i in range(1, ramp + 1):
        weights[i] = 1 / (1 + math.exp(-(i - centre) / scale))
    for i in range(WINDOW - 2 - ramp, WINDOW - 1):
        weights[i] = 1 / (1 + math.exp((i - (WINDOW - 2) + centre) / scale))
    probs = np.zeros((length, len(VOCAB)))
    totals = np.zeros(length)

    def add(start):
        probs[start:start + WINDOW] += _log_softmax(reference, [tokens[start:start + WINDOW]])[0] * weights[:, None]
        totals[start:start + WINDOW] += weights

    start_left, end_left = 0, WINDOW - 1
    start_right = length - WINDOW
    while True:
        add(start_left)
        add(start_right)
        if end_left > start_right:
            break
        start_left, end_left, start_right = start_left + step, end_left + step, start_right - step
    if end_left - start_right + 1 < step:
        add(int(length / 2) - WINDOW // 2)
    return probs / totals[:, None]


def _parse(mutant):
    return [(part[0], int(part[1:-1]) - 1, part[-1]) for part in mutant.split(":")]


def _reference_scores(reference, sequence, mutants, strategy):
    if strategy == "pseudo-ppl":
        def pll(text):
            return sum(_reference_masked(reference, text, i + 1)[VOCAB[text[i]]] for i in range(len(text)))

        base = pll(sequence)
        scores = []
        for mutant in mutants:
            mutated = list(sequence)
            for _, position, mt in _parse(mutant):
                mutated[position] = mt
            scores.append(pll("".join(mutated)) - base)
        return np.asarray(scores)
    wt = _reference_wt(reference, sequence) if strategy == "wt-marginals" else None
    scores = []
    for mutant in mutants:
        total = 0.0  # additive over the substitutions, as label_row
        for wt_letter, position, mt in _parse(mutant):
            row = wt[position + 1] if wt is not None else _reference_masked(reference, sequence, position + 1)
            total += row[VOCAB[mt]] - row[VOCAB[wt_letter]]
        scores.append(total)
    return np.asarray(scores)


# ------------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("strategy", ["masked-marginals", "wt-marginals"])
@pytest.mark.parametrize("sequence", [LONG, SHORT], ids=["long", "short"])
def test_marginals_match_proteingym(pair, strategy, sequence):
    reference, model = pair
    mutants = _mutants(sequence)
    expected = _reference_scores(reference, sequence, mutants, strategy)
    scores = score_mutants(model, sequence, mutants, strategy=strategy, max_tokens_per_batch=200)
    assert np.abs(expected).max() > 0.05
    np.testing.assert_allclose(scores, expected, atol=ATOL, rtol=1e-4)
    singles = {mutant: score for mutant, score in zip(mutants, scores) if ":" not in mutant}
    for mutant, score in zip(mutants, scores):  # multi-mutants: the sum of their singles
        if ":" in mutant:
            assert score == pytest.approx(sum(singles[part] for part in mutant.split(":")), abs=1e-9)


def test_pseudo_ppl_of_a_long_protein_in_windows(pair):
    reference, model = pair
    sequence = LONG[:70]  # 72 tokens; a pass per residue and mutant, so kept short
    mutants = [f"{sequence[3]}4A", f"{sequence[3]}4A:{sequence[65]}66W"]
    expected = _reference_scores(reference, sequence, mutants, "pseudo-ppl")
    np.testing.assert_allclose(score_mutants(model, sequence, mutants, strategy="pseudo-ppl"), expected,
                               atol=10 * ATOL, rtol=1e-4)


def test_long_error_policy(pair):
    _, model = pair
    with pytest.raises(MutationError, match="the sequence has 100 residues, but this model's context holds at most 60"):
        score_mutants(model, LONG, [f"{LONG[1]}2A"], strategy="masked-marginals", long="error")
    with pytest.raises(ValueError, match="long must be 'window' or 'error'"):
        score_mutants(model, SHORT, [f"{SHORT[0]}1A"], long="truncate")


def test_esm1v_ensemble_is_the_mean_of_the_checkpoints(reference_checkpoints):
    references = [reference_checkpoints("absolute", seed=seed) for seed in (11, 12)]
    models = [TFEsmForMaskedLM.from_pretrained(reference.path) for reference in references]
    mutants = _mutants(LONG)
    expected = np.stack([_reference_scores(reference, LONG, mutants, "masked-marginals") for reference in references])
    mean, per_model = score_ensemble(models, LONG, mutants, strategy="masked-marginals")
    assert np.abs(expected[0] - expected[1]).max() > 0.05  # two different checkpoints
    np.testing.assert_allclose(per_model, expected, atol=ATOL, rtol=1e-4)
    np.testing.assert_allclose(mean, expected.mean(axis=0), atol=ATOL, rtol=1e-4)


def test_spearman_matches_scipy():
    from scipy import stats  # the reference rank correlation (a test requirement)
    rng = np.random.default_rng(0)
    for x, y in [(rng.normal(size=50), rng.normal(size=50)),
                 (rng.integers(0, 5, 40).astype(float), rng.integers(0, 3, 40).astype(float)),  # many ties
                 (np.arange(10.0), np.arange(10.0)[::-1])]:
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    with_nan = np.asarray([1.0, np.nan, 3.0, 4.0, 2.0])
    assert spearman(with_nan, [1, 2, 3, 5, 4]) == pytest.approx(stats.spearmanr([1, 3, 4, 2], [1, 3, 5, 4]).statistic)
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


@pytest.mark.parametrize("strategy", ["masked-marginals", "wt-marginals"])
def test_saturation_scan_rows_equal_score_mutants(pair, strategy):
    reference, model = pair
    sequence = LONG
    mutants = saturation_mutants(sequence)
    assert len(mutants) == 19 * len(sequence) and mutants[:2] == [f"{sequence[0]}1A", f"{sequence[0]}1C"]
    scanned = scan_scores_in_order(sequence, saturation_scan(model, sequence, strategy, max_tokens_per_batch=300))
    direct = score_mutants(model, sequence, mutants, strategy=strategy, max_tokens_per_batch=300)
    np.testing.assert_allclose(scanned, direct, atol=1e-5)
    some = [0, 40, 99]  # and the reference model's numbers at a few positions
    picked = [index for index, mutant in enumerate(mutants) if int(mutant[1:-1]) - 1 in some]
    expected = _reference_scores(reference, sequence, [mutants[i] for i in picked], strategy)
    np.testing.assert_allclose(scanned[picked], expected, atol=ATOL, rtol=1e-4)
    with pytest.raises(ValueError, match="pseudo-ppl would need"):
        saturation_scan(model, sequence, "pseudo-ppl")


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_scan_file_and_resume_after_interruption(pair, tmp_path):
    _, model = pair
    records = [("long", LONG), ("short", SHORT)]
    complete = tmp_path / "complete.csv"
    rows = write_saturation_scan(model, records, str(complete), positions_per_part=16, max_tokens_per_batch=200)
    assert rows == 19 * (len(LONG) + len(SHORT))
    table = _read_csv(complete)
    assert table[0] == ["id", "mutant", "position", "score"] and len(table) == rows + 1
    direct = score_mutants(model, SHORT, saturation_mutants(SHORT), max_tokens_per_batch=200)
    np.testing.assert_allclose([float(row[3]) for row in table if row[0] == "short"], direct, atol=1e-5)
    assert sorted(os.listdir(tmp_path)) == ["complete.csv"]  # no journal left

    resumed = tmp_path / "resumed.csv"
    calls = []

    def interrupt(count):
        calls.append(count)
        if len(calls) == 10:  # a few parts in (16 positions, 3 masked copies a batch)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_saturation_scan(model, records, str(resumed), positions_per_part=16, max_tokens_per_batch=200,
                              progress_callback=interrupt)
    assert not resumed.exists() and any(name.endswith(".npy") for name in os.listdir(tmp_path / ".resumed.csv.scan"))
    with pytest.raises(ScanError, match="started with other strategy"):
        write_saturation_scan(model, records, str(resumed), strategy="wt-marginals", positions_per_part=16)
    passes = []
    write_saturation_scan(model, records, str(resumed), positions_per_part=16, max_tokens_per_batch=200,
                          progress_callback=passes.append)
    assert 0 < sum(passes) < len(LONG) + len(SHORT)  # the saved parts were not recomputed
    assert resumed.read_bytes() == complete.read_bytes()
    with pytest.raises(ScanError, match="exists"):
        write_saturation_scan(model, records, str(resumed))


def test_scan_parquet_with_several_models(reference_checkpoints, tmp_path):
    import pyarrow.parquet as pq  # a test requirement
    models = [TFEsmForMaskedLM.from_pretrained(reference_checkpoints("absolute", seed=seed).path) for seed in (11, 12)]
    path = tmp_path / "scan.parquet"
    write_saturation_scan(models, [("p", SHORT)], str(path), strategy="wt-marginals", model_names=["one", "two"])
    table = pq.read_table(path).to_pydict()
    assert list(table) == ["id", "mutant", "position", "score", "one", "two"]
    singles = [score_mutants(model, SHORT, table["mutant"], strategy="wt-marginals") for model in models]
    np.testing.assert_allclose(table["one"], singles[0], atol=1e-6)
    np.testing.assert_allclose(table["score"], (singles[0] + singles[1]) / 2, atol=1e-6)


# ------------------------------------------------------------------------------------------------ tf-esm score


def _cli(capsys, *args):
    from tf_esm.cli import main

    capsys.readouterr()
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_reads_a_proteingym_dms_file_and_prints_spearman(pair, tmp_path, capsys):
    from scipy import stats  # the reference rank correlation (a test requirement)
    reference, _ = pair
    mutants = _mutants(LONG)
    measured = np.random.default_rng(4).normal(size=len(mutants))
    dms = tmp_path / "DMS.csv"
    with open(dms, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["mutant", "mutated_sequence", "DMS_score", "DMS_score_bin"])
        for mutant, value in zip(mutants, measured):
            writer.writerow([mutant, "", repr(float(value)), 1])
    output = tmp_path / "scored.csv"
    code, out, err = _cli(capsys, "score", reference.path, "--sequence", LONG, "--mutations", dms, "--output", output)
    assert code == 0, err
    table = _read_csv(output)
    name = os.path.basename(reference.path)
    assert table[0] == ["mutant", "mutated_sequence", "DMS_score", "DMS_score_bin", name]
    expected = _reference_scores(reference, LONG, mutants, "masked-marginals")
    np.testing.assert_allclose([float(row[4]) for row in table[1:]], expected, atol=ATOL, rtol=1e-4)
    rho = stats.spearmanr([float(row[4]) for row in table[1:]], measured).statistic
    assert out == f"spearman {name} vs DMS_score: {rho:.4f} ({len(mutants)} mutants)\n"


def test_cli_saturation_scan_resumes(pair, tmp_path, capsys):
    reference, model = pair
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">long\n{LONG}\n>short\n{SHORT}\n")
    output = tmp_path / "scan.csv"
    code, _, err = _cli(capsys, "score", reference.path, "--fasta", fasta, "--saturate", "--output", output)
    assert code == 0, err
    assert err.splitlines()[-1] == (f"tf-esm: scanned 2 protein(s): {19 * (len(LONG) + len(SHORT))} mutants "
                                    f"(masked-marginals) into {output}.")
    table = _read_csv(output)
    direct = score_mutants(model, LONG, saturation_mutants(LONG))
    np.testing.assert_allclose([float(row[3]) for row in table[1:] if row[0] == "long"], direct, atol=1e-5)
    code, _, err = _cli(capsys, "score", reference.path, "--fasta", fasta, "--saturate", "--output", output)
    assert code == 2 and "exists" in err and "--overwrite" in err
    code, _, err = _cli(capsys, "score", reference.path, "--sequence", SHORT, "--saturate", "--output",
                        tmp_path / "x.tsv")
    assert code == 2 and "--saturate writes to --output FILE.csv or FILE.parquet" in err
