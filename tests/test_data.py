"""`tf_esm.pipelines.data`: ids against the reference tokenizer, label alignment, bucketing, MLM masking, input errors."""

import collections
import os
import random

import numpy as np
import pytest
import tensorflow as tf

from tf_esm.pipelines.data import (
    IGNORE_INDEX,
    LabelError,
    MlmMasking,
    SequenceTooLongError,
    fasta_dataset,
    padding_stats,
    read_fasta_records,
    read_table,
    records_from_lists,
    sequences_dataset,
    table_dataset,
)
from tf_esm.io.fasta import FastaError
from tf_esm.tokenization import EsmTokenizer

RESIDUES = "LAGVSERTIDPKQNFYMHWCXBUZO-."
EXAMPLE_DATA = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "data")


@pytest.fixture(scope="module")
def tokenizer(esm_tokenizer):
    return esm_tokenizer


@pytest.fixture(scope="module")
def reference_tokenizer(hf_tokenizer):
    return hf_tokenizer


def random_sequences(count, seed, min_length=1, max_length=60, lognormal=False):
    rng = random.Random(seed)
    lengths = ([max(min_length, min(max_length, int(rng.lognormvariate(3.5, 0.8)))) for _ in range(count)]
               if lognormal else [rng.randint(min_length, max_length) for _ in range(count)])
    return ["".join(rng.choice(RESIDUES) for _ in range(length)) for length in lengths]


def unbatch_by_record(dataset):
    """{record_index: (ids without padding, labels or None)} over a dataset built with return_index=True."""
    rows = {}
    for element in dataset:
        features, labels = element if isinstance(element, tuple) else (element, None)
        mask = features["attention_mask"].numpy().astype(bool)
        for row, index in enumerate(features["record_index"].numpy()):
            assert index not in rows, f"record {index} appears twice"
            label = None if labels is None else labels[row].numpy()
            rows[int(index)] = (features["input_ids"][row].numpy()[mask[row]], label)
    return rows


@pytest.mark.parametrize("in_graph", [False, True], ids=["python", "in_graph"])
def test_ids_match_reference_tokenizer(tokenizer, reference_tokenizer, in_graph):
    sequences = random_sequences(60, seed=1)
    dataset = sequences_dataset(sequences, tokenizer=tokenizer, in_graph=in_graph, batch_size=7, return_index=True,
                                shuffle=True, seed=3)
    rows = unbatch_by_record(dataset)
    assert sorted(rows) == list(range(len(sequences)))
    expected = reference_tokenizer(sequences)["input_ids"]
    for index, (ids, _) in rows.items():
        assert ids.tolist() == expected[index]


def test_padding_uses_pad_id_and_zero_mask(tokenizer):
    features = next(iter(sequences_dataset(["MKTAYIAK", "GV"], tokenizer=tokenizer, bucket_boundaries=None)))
    assert features["input_ids"].dtype == tf.int32 and features["attention_mask"].dtype == tf.int32
    assert features["input_ids"].numpy()[1].tolist() == [0, 6, 7, 2] + [tokenizer.pad_token_id] * 6
    assert features["attention_mask"].numpy()[1].tolist() == [1] * 4 + [0] * 6


@pytest.mark.parametrize("in_graph", [False, True], ids=["python", "in_graph"])
def test_token_labels_are_shifted_for_cls_and_ignored_at_specials(tokenizer, in_graph):
    rng = random.Random(5)
    sequences = random_sequences(40, seed=2, max_length=30)
    labels = [[rng.randrange(3) for _ in sequence] for sequence in sequences]
    dataset = sequences_dataset(sequences, labels, task="token", tokenizer=tokenizer, in_graph=in_graph,
                                batch_size=6, return_index=True)
    specials = {tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    for features, batch_labels in dataset:
        ids, batch_labels = features["input_ids"].numpy(), batch_labels.numpy()
        assert batch_labels.shape == ids.shape and batch_labels.dtype == np.int32
        assert np.all(batch_labels[np.isin(ids, list(specials))] == IGNORE_INDEX)
        for row, index in enumerate(features["record_index"].numpy()):
            length = len(sequences[index])
            assert batch_labels[row, 0] == IGNORE_INDEX
            assert batch_labels[row, 1:length + 1].tolist() == labels[index]
            assert np.all(batch_labels[row, length + 1:] == IGNORE_INDEX)


def test_token_label_formats():
    records = records_from_lists(["MKTA", "GVLL"], ["HHEC", ["C", "C", "H", "E"]], task="token",
                                 label_names=["C", "H", "E"])
    assert records.labels == [[1, 1, 2, 0], [0, 0, 1, 2]] and records.label_names == ["C", "H", "E"]
    numeric = records_from_lists(["MKTA", "GVL"], ["0 1 1 -100", "210"], task="token")
    assert numeric.labels == [[0, 1, 1, IGNORE_INDEX], [2, 1, 0]] and numeric.label_names is None
    named = records_from_lists(["MKT", "GV"], ["helix coil coil", "coil strand"], task="token")
    assert named.label_names == ["coil", "helix", "strand"]
    assert named.labels == [[1, 0, 0], [0, 2]]


def test_sequence_label_kinds():
    ints = sequences_dataset(["MK", "GVL"], labels=["1", 0], bucket_boundaries=None)
    assert next(iter(ints))[1].numpy().tolist() == [1, 0] and ints.element_spec[1].dtype == tf.int32
    floats = sequences_dataset(["MK", "GVL"], labels=[0.5, "2.25"], bucket_boundaries=None)
    assert next(iter(floats))[1].numpy().tolist() == [0.5, 2.25] and floats.element_spec[1].dtype == tf.float32
    names = records_from_lists(["MK", "GVL", "AA"], labels=["membrane", "soluble", "membrane"])
    assert names.label_names == ["membrane", "soluble"] and names.labels == [0, 1, 0]
    multi = sequences_dataset(["MK", "GVL"], labels=["1 0 1", [0, 1, 0]], bucket_boundaries=None)
    assert next(iter(multi))[1].numpy().tolist() == [[1, 0, 1], [0, 1, 0]]


def test_table_and_fasta_readers(tmp_path, tokenizer):
    table = tmp_path / "labels.csv"
    table.write_text("name,seq,target\nfirst,mktay iak,1\nsecond,GVL*,0\n", encoding="utf-8")
    records = read_table(table, sequence_column="seq", label_column="target", id_column="name")
    assert records.sequences == ["MKTAYIAK", "GVL"] and records.labels == [1, 0]
    assert records.ids[0].endswith("line 2 (id 'first')")
    dataset = table_dataset(table, sequence_column="seq", label_column="target", tokenizer=tokenizer,
                            bucket_boundaries=None)
    assert next(iter(dataset))[1].numpy().tolist() == [1, 0]

    toy = read_table(os.path.join(EXAMPLE_DATA, "token_labels_toy.tsv"), label_column="labels", task="token")
    assert all(len(labels) == len(sequence) for labels, sequence in zip(toy.labels, toy.sequences))
    assert toy.label_names == ["C", "E", "H"]

    fasta = os.path.join(EXAMPLE_DATA, "proteins.fasta")
    records = read_fasta_records(fasta)
    rows = unbatch_by_record(fasta_dataset(fasta, tokenizer=tokenizer, batch_size=3, return_index=True))
    assert sorted(rows) == list(range(len(records)))
    assert all(len(rows[i][0]) == len(sequence) + 2 for i, sequence in enumerate(records.sequences))


def test_bucketing_keeps_every_example_once_and_reduces_padding(tokenizer):
    sequences = random_sequences(600, seed=7, min_length=5, max_length=400, lognormal=True)
    options = dict(tokenizer=tokenizer, batch_size=16, return_index=True, shuffle=True, seed=0)
    bucketed = sequences_dataset(sequences, bucket_boundaries="auto", **options)
    naive = sequences_dataset(sequences, bucket_boundaries=None, **options)
    for dataset in (bucketed, naive):
        for _ in range(2):  # reshuffled every epoch, still each record exactly once
            counts = collections.Counter()
            for features in dataset:
                counts.update(features["record_index"].numpy().tolist())
            assert counts == collections.Counter(range(len(sequences)))
    bucketed_stats, naive_stats = padding_stats(bucketed), padding_stats(naive)
    assert bucketed_stats["real_tokens"] == naive_stats["real_tokens"] == sum(len(s) + 2 for s in sequences)
    print(f"padding fraction: bucketed {bucketed_stats['padding_fraction']:.3f}, "
          f"naive {naive_stats['padding_fraction']:.3f}")
    assert bucketed_stats["padding_fraction"] < 0.5 * naive_stats["padding_fraction"]


def test_max_tokens_per_batch_bounds_batch_cells(tokenizer):
    sequences = random_sequences(300, seed=8, min_length=5, max_length=200, lognormal=True)
    budget = 1024
    dataset = sequences_dataset(sequences, tokenizer=tokenizer, max_tokens_per_batch=budget, return_index=True)
    seen = []
    for features in dataset:
        assert int(tf.size(features["input_ids"])) <= budget
        seen.extend(features["record_index"].numpy().tolist())
    assert sorted(seen) == list(range(len(sequences)))
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        sequences_dataset(sequences, tokenizer=tokenizer, max_tokens_per_batch=10)


@pytest.fixture(scope="module")
def masked_batches(tokenizer):
    sequences = random_sequences(300, seed=9, min_length=20, max_length=120)
    dataset = sequences_dataset(sequences, tokenizer=tokenizer, batch_size=32, bucket_boundaries=None)
    clean = [features for features in dataset]
    masking = MlmMasking(tokenizer, seed=11)
    return clean, [masking(features) for features in clean]


def test_mlm_masking_statistics(tokenizer, masked_batches):
    clean, masked = masked_batches
    original = np.concatenate([f["input_ids"].numpy().ravel() for f in clean])
    attention = np.concatenate([f["attention_mask"].numpy().ravel() for f in clean]).astype(bool)
    corrupted = np.concatenate([f["input_ids"].numpy().ravel() for f, _ in masked])
    labels = np.concatenate([labels.numpy().ravel() for _, labels in masked])
    special = np.isin(original, tokenizer.all_special_ids) | ~attention
    selected = labels != IGNORE_INDEX

    assert not np.any(selected & special)
    assert np.array_equal(corrupted[special], original[special])
    assert np.array_equal(labels[selected], original[selected])
    assert np.array_equal(corrupted[~selected], original[~selected])
    maskable = int((~special).sum())
    assert maskable > 20000
    rate = selected.sum() / maskable
    assert abs(rate - 0.15) < 0.01, rate
    chosen, before = corrupted[selected], original[selected]
    to_mask = np.mean(chosen == tokenizer.mask_token_id)
    random_residue = np.mean((chosen != tokenizer.mask_token_id) & (chosen != before))
    unchanged = np.mean(chosen == before)
    # A random replacement equals the original residue 1 time in 20.
    assert abs(to_mask - 0.8) < 0.025, to_mask
    assert abs(random_residue - 0.1 * 19 / 20) < 0.02, random_residue
    assert abs(unchanged - (0.1 + 0.1 / 20)) < 0.02, unchanged
    standard = [tokenizer.token_to_id(residue) for residue in "ACDEFGHIKLMNPQRSTVWY"]
    replaced = corrupted[selected & (corrupted != original) & (corrupted != tokenizer.mask_token_id)]
    assert np.all(np.isin(replaced, standard))


def test_mlm_dataset_masks_dynamically_and_reproducibly(tokenizer):
    sequences = random_sequences(20, seed=10, min_length=30, max_length=40)

    def epoch_labels(dataset):
        return [labels.numpy() for _, labels in dataset]

    dataset = sequences_dataset(sequences, tokenizer=tokenizer, mlm=True, seed=4, bucket_boundaries=None)
    first, second = epoch_labels(dataset), epoch_labels(dataset)
    assert any(not np.array_equal(a, b) for a, b in zip(first, second)), "the mask must change between epochs"
    again = sequences_dataset(sequences, tokenizer=tokenizer, mlm=True, seed=4, bucket_boundaries=None)
    assert all(np.array_equal(a, b) for a, b in zip(first, epoch_labels(again)))
    with pytest.raises(ValueError, match="own labels"):
        sequences_dataset(sequences, labels=[0] * len(sequences), mlm=True)


def test_bad_residues_name_record_and_position(tmp_path):
    fasta = tmp_path / "bad.fasta"
    fasta.write_text(">good\nMKTAY\n>broken desc\nMKT\nA1Y\n", encoding="utf-8")
    with pytest.raises(FastaError, match=r"record 'broken'.*'1' at position 5"):
        fasta_dataset(fasta)
    with pytest.raises(FastaError, match=r"sequences\[1\].*'J' at position 3"):
        sequences_dataset(["MKT", "GVJL"])
    table = tmp_path / "bad.tsv"
    table.write_text("sequence\tlabel\nMKT\t1\nGV#L\t0\n", encoding="utf-8")
    with pytest.raises(FastaError, match=r"bad\.tsv, line 3.*'#' at position 3"):
        table_dataset(table)
    with pytest.raises(FastaError, match=r"bad\.tsv, line 1: sequence data before the first '>' header"):
        fasta_dataset(table)
    (tmp_path / "empty.fasta").write_text("\n", encoding="utf-8")
    with pytest.raises(FastaError, match="no FASTA records"):
        fasta_dataset(tmp_path / "empty.fasta")


def test_vocabulary_without_a_residue_is_an_error(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["<cls>", "<pad>", "<eos>", "<unk>", "M", "K", "<mask>"]), encoding="utf-8")
    with pytest.raises(FastaError, match=r"sequences\[0\].*'T' at position 3.*vocabulary"):
        sequences_dataset(["MKT"], tokenizer=EsmTokenizer(vocab))


def test_label_errors_name_the_record(tmp_path):
    with pytest.raises(LabelError, match=r"sequences\[1\]: 2 per-residue labels for a sequence of 3 residues"):
        records_from_lists(["MK", "GVL"], ["HH", "HE"], task="token")
    with pytest.raises(LabelError, match=r"sequences\[0\].*'X' at position 2 is not one of"):
        records_from_lists(["MK"], ["HX"], task="token", label_names=["H", "E"])
    with pytest.raises(LabelError, match=r"sequences\[1\].*-3.*position 1"):
        records_from_lists(["MK", "GV"], ["0 1", "-3 1"], task="token")
    with pytest.raises(LabelError, match=r"sequences\[1\]: label 'other'"):
        records_from_lists(["MK", "GV"], ["a", "other"], label_names=["a", "b"])
    table = tmp_path / "t.csv"
    table.write_text("sequence,label\nMK,1\nGV,\n", encoding="utf-8")
    with pytest.raises(LabelError, match=r"t\.csv, line 3: the 'label' column is empty"):
        read_table(table)
    with pytest.raises(ValueError, match=r"no column\(s\) \['target'\]; the header has \['sequence', 'label'\]"):
        read_table(table, label_column="target")
    with pytest.raises(ValueError, match="delimiter"):
        read_table(tmp_path / "t.txt")


def test_truncation_policy(tokenizer):
    sequences = ["MKTAYIAKQR", "GVL", "MKTAYIAKQRQISFVK"]
    labels = [list(range(3)) * 3 + [0], [0, 1, 2], [1] * 16]
    with pytest.raises(SequenceTooLongError, match=r"sequences\[0\]: 10 residues.*max_length=8 \(2 record"):
        sequences_dataset(sequences, tokenizer=tokenizer, max_length=8)
    with pytest.warns(UserWarning, match=r"Truncated 2 record\(s\) to their first 6 residues.*sequences\[0\], "
                                         r"sequences\[2\]"):
        dataset = sequences_dataset(sequences, labels, task="token", tokenizer=tokenizer, max_length=8,
                                    truncation="warn", return_index=True, bucket_boundaries=None)
    rows = unbatch_by_record(dataset)
    assert rows[0][0].tolist() == tokenizer(sequences[0], truncation=True, max_length=8)["input_ids"]
    assert rows[0][1][:8].tolist() == [IGNORE_INDEX] + labels[0][:6] + [IGNORE_INDEX]
    assert rows[1][0].tolist() == tokenizer(sequences[1])["input_ids"]
    with pytest.raises(ValueError, match="truncation must be one of"):
        sequences_dataset(sequences, max_length=8, truncation="silent")


def test_elements_feed_the_task_models(tokenizer):
    """A batch goes straight into the models as (features, labels); model.fit itself is tested with the models."""
    from tf_esm import EsmConfig, TFEsmForMaskedLM, TFEsmForTokenClassification

    settings = dict(vocab_size=33, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    max_position_embeddings=64, pad_token_id=1, mask_token_id=32, position_embedding_type="rotary")
    sequences = random_sequences(8, seed=12, min_length=4, max_length=20)
    labels = ["".join(random.Random(i).choice("HEC") for _ in sequence) for i, sequence in enumerate(sequences)]
    token_dataset = sequences_dataset(sequences, labels, task="token", tokenizer=tokenizer, batch_size=4)
    mlm_dataset = sequences_dataset(sequences, tokenizer=tokenizer, mlm=True, seed=0, batch_size=4)
    for model, dataset in ((TFEsmForTokenClassification(EsmConfig(num_labels=3, **settings)), token_dataset),
                           (TFEsmForMaskedLM(EsmConfig(**settings)), mlm_dataset)):
        features, batch_labels = next(iter(dataset))
        outputs = model(features, labels=batch_labels)
        assert outputs.logits.shape[:2] == features["input_ids"].shape
        assert np.isfinite(float(outputs.loss))
