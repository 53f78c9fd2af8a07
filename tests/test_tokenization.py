"""`EsmTokenizer` against `transformers.EsmTokenizer` built from the same vocab file (no downloads)."""

import json
import os
import random
import warnings

import numpy as np
import pytest

from tf_esm.configuration import ESM2_VOCAB
from tf_esm.storage.hub import ModelNotFoundError
from tf_esm.tokenization import PYTHON_WHITESPACE, BatchEncoding, EsmTokenizer, write_default_vocab

RESIDUES = "LAGVSERTIDPKQNFYMHWCXBUZO"  # the 25 letters of the ESM vocabulary
ODD_TEXT = [
    "acde", "aCdE", "MK tl", "A C D", "  MK\t\nL  ", "A\x1cC", "A\u3000C\xa0D", "A1C23D", "A*C**", "MKT*",
    "AJC", "Aé", "<mask>", "A<mask>C", "A <mask> C", "<ma", "<maskA", "<Mask>", "<<mask>>", "<MASK>", "<cls>A<eos>",
    "<pad><unk><null_1>", "A-.C", "A\x00a\x01C", "", " ", "ABC<mask", "mask>", "<>",
]


@pytest.fixture(scope="module")
def tokenizer(esm_tokenizer):
    return esm_tokenizer


@pytest.fixture(scope="module")
def reference(hf_tokenizer):
    return hf_tokenizer


def random_sequences(count, seed, max_length=40, extra=()):
    rng = random.Random(seed)
    pieces = list(RESIDUES) + ["<mask>", "-", "."] + list(extra)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, max_length))) for _ in range(count)]


def hf_call(reference, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(reference(*args, **kwargs))


def test_random_sequences_match_reference(tokenizer, reference):
    sequences = random_sequences(200, seed=0)
    assert tokenizer(sequences)["input_ids"] == reference(sequences)["input_ids"]
    for sequence in sequences[:50]:
        assert tokenizer.tokenize(sequence) == reference.tokenize(sequence)
        assert tokenizer.encode(sequence) == reference.encode(sequence)


@pytest.mark.parametrize("text", ODD_TEXT)
def test_bad_characters_match_reference(tokenizer, reference, text):
    assert tokenizer.tokenize(text) == reference.tokenize(text)
    assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]


def test_bad_character_rules(tokenizer):
    unk, mask = tokenizer.unk_token_id, tokenizer.mask_token_id
    ids = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    assert ids("acde") == [unk]  # a run of unknown characters is ONE <unk>; nothing is upper-cased
    assert ids("aCdE") == [unk, 23, unk, 9]
    assert ids("M K\tL\n") == [20, 15, 4]  # whitespace is dropped
    assert ids("A12*C") == [5, unk, 23]
    assert ids("A<mask>C") == [5, mask, 23]
    assert ids("<Mask>") == [unk, 20, unk]


def test_random_noisy_text_matches_reference(tokenizer, reference):
    noise = list("acdklmsx<>_1 \t*J9é") + ["<cls>", "<eos>", "<pad>", "<unk>", "<null_1>", "<mas", "ask>"]
    sequences = random_sequences(300, seed=1, max_length=25, extra=noise)
    assert tokenizer(sequences)["input_ids"] == reference(sequences)["input_ids"]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"padding": True},
        {"padding": "longest", "return_special_tokens_mask": True, "return_token_type_ids": True},
        {"padding": "max_length", "max_length": 24},
        {"truncation": True, "max_length": 9},
        {"max_length": 7},  # a bare max_length turns truncation on
        {"padding": "max_length", "max_length": 6},  # ...but not together with padding
        {"truncation": "only_first", "max_length": 12},
        {"truncation": "only_second", "max_length": 12},
        {"truncation": True, "max_length": 1},
        {"padding": True, "pad_to_multiple_of": 8, "return_special_tokens_mask": True},
        {"padding": True, "truncation": True, "max_length": 10, "return_length": True},
        {"add_special_tokens": False, "padding": True, "return_special_tokens_mask": True},
        {"return_attention_mask": False},
    ],
)
def test_padding_truncation_and_pairs_match_reference(tokenizer, reference, options):
    first, second = random_sequences(6, seed=2, max_length=15), random_sequences(6, seed=3, max_length=15)
    for args in [(first,), (first, second), (first[0],), (first[0], second[0])]:
        assert dict(tokenizer(*args, **options)) == hf_call(reference, *args, **options), args


def test_pair_layout_and_masks(tokenizer, reference):
    encoding = tokenizer("MK", "LV", return_special_tokens_mask=True, return_token_type_ids=True)
    assert encoding.input_ids == [0, 20, 15, 2, 4, 7, 2]
    assert encoding.special_tokens_mask == [1, 0, 0, 1, 0, 0, 1]
    assert encoding.token_type_ids == [0, 0, 0, 0, 1, 1, 1]
    for ids0, ids1 in [([5, 6], None), ([5, 6], [7]), ([], [])]:
        assert tokenizer.build_inputs_with_special_tokens(ids0, ids1) == reference.build_inputs_with_special_tokens(
            ids0, ids1
        )
        assert tokenizer.get_special_tokens_mask(ids0, ids1) == reference.get_special_tokens_mask(ids0, ids1)
        assert tokenizer.create_token_type_ids_from_sequences(
            ids0, ids1
        ) == reference.create_token_type_ids_from_sequences(ids0, ids1)
    formatted = [0, 5, 32, 3, 1, 31, 2]
    assert tokenizer.get_special_tokens_mask(formatted, already_has_special_tokens=True) == (
        reference.get_special_tokens_mask(formatted, already_has_special_tokens=True)
    )


def test_tensor_outputs(tokenizer, reference):
    batch = ["MKTAYIAK", "GV", ""]
    numpy_out = tokenizer(batch, padding=True, return_tensors="np")
    assert isinstance(numpy_out, BatchEncoding) and numpy_out.input_ids.dtype == np.int64
    np.testing.assert_array_equal(numpy_out.input_ids, reference(batch, padding=True, return_tensors="np")["input_ids"])
    single = tokenizer("MK", return_tensors="np")
    assert single.input_ids.shape == (1, 4) and single["attention_mask"].tolist() == [[1, 1, 1, 1]]
    with pytest.raises(ValueError, match="padding"):
        tokenizer(batch, return_tensors="np")
    with pytest.raises(AttributeError):
        numpy_out.no_such_field


@pytest.mark.tensorflow_only("return_tensors='tf' makes TensorFlow tensors")
def test_tensorflow_tensor_outputs(tokenizer):
    batch = ["MKTAYIAK", "GV", ""]
    tf_out = tokenizer(batch, padding="max_length", max_length=12, return_tensors="tf")
    assert tf_out.input_ids.dtype.name == "int32" and tf_out.input_ids.shape == (3, 12)
    expected = tokenizer(batch, padding="max_length", max_length=12)
    np.testing.assert_array_equal(tf_out.input_ids.numpy(), expected["input_ids"])
    np.testing.assert_array_equal(tf_out.attention_mask.numpy(), expected["attention_mask"])
    with pytest.raises(ValueError, match="padding"):
        tokenizer(batch, return_tensors="tf")


def test_decode_round_trip(tokenizer, reference):
    sequences = random_sequences(50, seed=4)
    encoded = tokenizer(sequences, padding=True)["input_ids"]
    assert tokenizer.batch_decode(encoded) == reference.batch_decode(encoded)
    assert tokenizer.batch_decode(encoded, skip_special_tokens=True) == reference.batch_decode(
        encoded, skip_special_tokens=True
    )
    for sequence, ids in zip(sequences, encoded):
        without_mask = sequence.replace("<mask>", "")
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == without_mask
        assert tokenizer.encode(tokenizer.decode(ids)) == tokenizer.build_inputs_with_special_tokens(ids)
    odd_ids = [0, 5, 31, 3, 40, -1, 2]
    assert tokenizer.decode(odd_ids) == reference.decode(odd_ids)
    assert tokenizer.decode(np.array(odd_ids)) == reference.decode(odd_ids)
    assert tokenizer.decode(5) == reference.decode(5) == "A"


def test_vocabulary_api_matches_reference(tokenizer, reference):
    assert tokenizer.get_vocab() == reference.get_vocab()
    assert len(tokenizer) == len(reference) == tokenizer.vocab_size == reference.vocab_size == 33
    assert sorted(tokenizer.all_special_ids) == sorted(reference.all_special_ids)
    for name in ("unk", "cls", "pad", "mask", "eos"):
        assert getattr(tokenizer, f"{name}_token_id") == getattr(reference, f"{name}_token_id")
        assert getattr(tokenizer, f"{name}_token") == str(getattr(reference, f"{name}_token"))
    tokens = ["A", "<mask>", "zz", "", "<null_1>"]
    assert tokenizer.convert_tokens_to_ids(tokens) == reference.convert_tokens_to_ids(tokens)
    assert tokenizer.convert_tokens_to_ids("A") == reference.convert_tokens_to_ids("A")
    assert tokenizer.convert_ids_to_tokens([0, 5, 99]) == reference.convert_ids_to_tokens([0, 5, 99])
    assert tokenizer.convert_ids_to_tokens([0, 5, 2], skip_special_tokens=True) == ["A"]
    assert tokenizer.convert_ids_to_tokens(32) == "<mask>"


def test_save_and_load_round_trip(tokenizer, reference, tmp_path):
    written = tokenizer.save_pretrained(tmp_path / "ours")
    assert sorted(os.path.basename(path) for path in written) == [
        "special_tokens_map.json", "tokenizer_config.json", "vocab.txt"
    ]
    assert all(os.path.isfile(path) for path in written)
    config = json.loads((tmp_path / "ours" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "EsmTokenizer" and config["mask_token"] == "<mask>"
    sequences = random_sequences(20, seed=5)
    expected = reference(sequences)["input_ids"]
    assert EsmTokenizer.from_pretrained(tmp_path / "ours")(sequences)["input_ids"] == expected
    assert type(reference).from_pretrained(str(tmp_path / "ours"))(sequences)["input_ids"] == expected

    reference.save_pretrained(str(tmp_path / "theirs"))
    loaded = EsmTokenizer.from_pretrained(tmp_path / "theirs")
    assert loaded(sequences)["input_ids"] == expected
    assert loaded.model_max_length == reference.model_max_length
    assert EsmTokenizer.from_pretrained(tmp_path / "ours" / "vocab.txt").get_vocab() == reference.get_vocab()

    (path,) = tokenizer.save_vocabulary(tmp_path, filename_prefix="esm")
    assert os.path.basename(path) == "esm-vocab.txt"
    assert (tmp_path / "esm-vocab.txt").read_text().split("\n") == list(ESM2_VOCAB)
    with pytest.raises(ModelNotFoundError):
        EsmTokenizer.from_pretrained(tmp_path / "missing")


def test_model_max_length_from_config(esm_vocab_file, reference, tmp_path):
    import transformers

    ours = EsmTokenizer(esm_vocab_file, model_max_length=10)
    theirs = transformers.EsmTokenizer(esm_vocab_file, model_max_length=10)
    sequences = random_sequences(8, seed=6, max_length=30)
    for options in ({"truncation": True}, {"padding": "max_length"}, {"truncation": True, "padding": True}):
        assert dict(ours(sequences, **options)) == hf_call(theirs, sequences, **options)
    ours.save_pretrained(tmp_path)
    assert EsmTokenizer.from_pretrained(tmp_path).model_max_length == 10
    assert EsmTokenizer.from_pretrained(tmp_path, model_max_length=5).model_max_length == 5


def test_vocab_checks(tmp_path):
    (tmp_path / "vocab.txt").write_text("<cls>\n<pad>\n<eos>\n<unk>\nA\n")
    with pytest.raises(ValueError, match="<mask>"):
        EsmTokenizer(tmp_path / "vocab.txt")
    assert write_default_vocab(tmp_path) == str(tmp_path / "vocab.txt")
    assert EsmTokenizer(tmp_path / "vocab.txt").vocab_size == 33
    with pytest.raises(ValueError, match="padding"):
        EsmTokenizer(tmp_path / "vocab.txt")("MK", padding="sideways")
    with pytest.raises(TypeError):
        EsmTokenizer(tmp_path / "vocab.txt")([1, 2])


def test_whitespace_table_is_python_whitespace():
    assert PYTHON_WHITESPACE == "".join(chr(code) for code in range(0x110000) if chr(code).isspace())
