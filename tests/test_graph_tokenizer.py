"""The in-graph tokenizer gives the same ids as `EsmTokenizer`, in eager, tf.data, Keras and SavedModel use."""

import random

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_esm.graph_tokenizer import EsmStringTokenizer, tokenize_strings
from tf_esm.tokenization import EsmTokenizer

RESIDUES = "LAGVSERTIDPKQNFYMHWCXBUZO"
RARE = "XBUZO"
UNKNOWN = list("acdkmsx*J9é<>_ \t\n\x1c\u3000\x00\x01") + ["<mas", "ask>", "<Mask>", "<cls>", "<eos>", "<null_1>"]


@pytest.fixture(scope="module")
def tokenizer(esm_tokenizer):
    return esm_tokenizer


@pytest.fixture(scope="module")
def sequences():
    """200 strings: plain residues, rare letters, <mask>, gaps, whitespace and unknown characters."""
    rng = random.Random(0)
    common = list(RESIDUES) + list(RARE) * 2 + ["<mask>", "-", "."]
    result = ["", " ", "acde", "MKT<mask>L", "XBUZO", "\x00"]
    while len(result) < 200:
        pieces = common + UNKNOWN if rng.random() < 0.6 else common
        result.append("".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))))
    return result


def test_matches_python_tokenizer(tokenizer, sequences):
    expected = tokenizer(sequences, padding=True, return_tensors="np")
    out = tokenize_strings(tf.constant(sequences), vocab=tokenizer)
    assert out["input_ids"].dtype == tf.int32
    np.testing.assert_array_equal(out["input_ids"].numpy(), expected["input_ids"])
    np.testing.assert_array_equal(out["attention_mask"].numpy(), expected["attention_mask"])

    ragged = tokenize_strings(tf.constant(sequences), ragged=True)  # default vocab is ESM-2's
    assert ragged["input_ids"].to_list() == tokenizer(sequences)["input_ids"]


@pytest.mark.parametrize("max_length", [1, 2, 5, 12])
def test_truncation_matches_python_tokenizer(tokenizer, sequences, max_length):
    expected = tokenizer(sequences, padding=True, truncation=True, max_length=max_length)["input_ids"]
    out = tokenize_strings(tf.constant(sequences), max_length=max_length)
    np.testing.assert_array_equal(out["input_ids"].numpy(), expected)


def test_without_special_tokens_and_fixed_width(tokenizer, sequences):
    expected = tokenizer(sequences, add_special_tokens=False)["input_ids"]
    out = tokenize_strings(tf.constant(sequences), add_special_tokens=False, ragged=True)
    assert out["input_ids"].to_list() == expected

    fixed = tokenize_strings(tf.constant(sequences), pad_to=16)  # pad_to alone also truncates to 16
    expected = tokenizer(sequences, padding="max_length", truncation=True, max_length=16, return_tensors="np")
    np.testing.assert_array_equal(fixed["input_ids"].numpy(), expected["input_ids"])
    np.testing.assert_array_equal(fixed["attention_mask"].numpy(), expected["attention_mask"])
    with pytest.raises(ValueError, match="pad_to"):
        tokenize_strings(tf.constant(["MK"]), max_length=20, pad_to=16)


def test_input_shapes_and_tf_data(tokenizer):
    strings = ["MKTAYIAK", "GV<mask>x", ""]
    expected = tokenizer(strings)["input_ids"]
    column = tokenize_strings(tf.constant([[s] for s in strings]))
    np.testing.assert_array_equal(column["input_ids"].numpy(), tokenizer(strings, padding=True)["input_ids"])
    assert tokenize_strings(tf.constant(strings[0]))["input_ids"].numpy().tolist() == expected[0]

    dataset = tf.data.Dataset.from_tensor_slices(strings).map(tokenize_strings)
    assert [row["input_ids"].numpy().tolist() for row in dataset] == expected
    batched = tf.data.Dataset.from_tensor_slices(strings).batch(2).map(EsmStringTokenizer(pad_to=12))
    first = next(iter(batched))
    assert first["input_ids"].shape == (2, 12)


def test_custom_vocab_file(tmp_path):
    tokens = ["<pad>", "<cls>", "<eos>", "<unk>", "A", "C", "<mask>"]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens))
    python_tokenizer = EsmTokenizer(tmp_path / "vocab.txt")
    strings = ["ACG<mask>", "ca C", "<mask>x"]
    out = tokenize_strings(tf.constant(strings), vocab=str(tmp_path / "vocab.txt"))
    np.testing.assert_array_equal(out["input_ids"].numpy(), python_tokenizer(strings, padding=True)["input_ids"])
    with pytest.raises(ValueError, match="<unk>"):
        tokenize_strings(tf.constant(strings), vocab=["<pad>", "<cls>", "<eos>", "A"])


def test_from_pretrained_matches_the_checkpoints_own_tokenizer(tmp_path, sequences, esm_vocab_file):
    """A hub-style directory (transformers' tokenizer saved beside the model): the same ids as transformers'."""
    import transformers

    transformers.EsmTokenizer(esm_vocab_file).save_pretrained(str(tmp_path))
    reference = transformers.EsmTokenizer.from_pretrained(str(tmp_path))
    layer = EsmStringTokenizer.from_pretrained(str(tmp_path), max_length=12)
    out = layer(tf.constant(sequences))
    expected = reference(sequences, padding=True, truncation=True, max_length=12)
    width = out["input_ids"].shape[1]
    np.testing.assert_array_equal(out["input_ids"].numpy(),
                                  [ids + [reference.pad_token_id] * (width - len(ids)) for ids in expected["input_ids"]])


def test_layer_in_functional_model_and_config_round_trip(tokenizer, sequences):
    layer = EsmStringTokenizer(max_length=20, name="tokenize")
    strings = keras.Input(shape=(), dtype="string")
    model = keras.Model(strings, layer(strings))
    out = model(tf.constant(sequences))
    expected = tokenizer(sequences, padding=True, truncation=True, max_length=20, return_tensors="np")
    np.testing.assert_array_equal(out["input_ids"].numpy(), expected["input_ids"])
    np.testing.assert_array_equal(out["attention_mask"].numpy(), expected["attention_mask"])

    config = layer.get_config()
    clone = EsmStringTokenizer.from_config(config)
    assert clone.get_config() == config
    np.testing.assert_array_equal(clone(tf.constant(sequences))["input_ids"].numpy(), expected["input_ids"])
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, EsmStringTokenizer) and restored.get_config() == config


def test_saved_model_round_trip(tokenizer, sequences, tmp_path):
    module = tf.Module()
    module.tokenizer = EsmStringTokenizer()
    module.serve = tf.function(
        lambda strings: module.tokenizer(strings), input_signature=[tf.TensorSpec([None], tf.string)]
    )
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.serve})
    loaded = tf.saved_model.load(str(tmp_path))
    expected = tokenizer(sequences, padding=True, return_tensors="np")
    np.testing.assert_array_equal(loaded.serve(tf.constant(sequences))["input_ids"].numpy(), expected["input_ids"])
    signature_out = loaded.signatures["serving_default"](tf.constant(sequences))
    np.testing.assert_array_equal(signature_out["attention_mask"].numpy(), expected["attention_mask"])
