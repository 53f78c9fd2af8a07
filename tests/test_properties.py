"""Property-based tests (hypothesis): round trips and "never crashes with a foreign error" guarantees.

Example counts are set per test (`max_examples`) and reported by `pytest --hypothesis-show-statistics`.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tf_esm import EsmConfig, EsmTokenizer
from tf_esm.configuration import ESM2_VOCAB
from tf_esm.io.fasta import FastaError, parse_fasta, read_fasta
from tf_esm.graph_tokenizer import EsmStringTokenizer
from tf_esm.tokenization import write_default_vocab
from tf_esm.io.weights import CheckpointError, read_state_dict

RESIDUE_TOKENS = [t for t in ESM2_VOCAB if not t.startswith("<")]
ALL_TOKENS = list(ESM2_VOCAB)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return EsmTokenizer(write_default_vocab(tmp_path_factory.mktemp("vocab")))


@pytest.fixture(scope="module")
def graph_tokenizer():
    return EsmStringTokenizer()


@FAST
@given(tokens=st.lists(st.sampled_from(ALL_TOKENS), max_size=60))
def test_tokenizer_encode_decode_round_trip(tokenizer, tokens):
    """Any string made of vocabulary tokens encodes to those tokens and decodes back to the same string."""
    text = "".join(tokens)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == tokens
    assert tokenizer.decode(ids).replace(" ", "") == text
    with_specials = tokenizer(text)["input_ids"]
    assert with_specials == [tokenizer.cls_token_id] + ids + [tokenizer.eos_token_id]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strings=st.lists(st.lists(st.sampled_from(RESIDUE_TOKENS + ["<mask>", "a", "*", "1", " ", "J", "<", "é"]),
                                max_size=40).map("".join), min_size=1, max_size=4))
def test_graph_tokenizer_equals_python_tokenizer(tokenizer, graph_tokenizer, strings):
    expected = tokenizer(strings, padding=True, return_tensors="np")
    out = graph_tokenizer(tf.constant(strings))
    np.testing.assert_array_equal(out["input_ids"].numpy(), expected["input_ids"])
    np.testing.assert_array_equal(out["attention_mask"].numpy(), expected["attention_mask"])


config_values = st.fixed_dictionaries({
    "hidden_size": st.sampled_from([8, 16, 32, 64]),
    "num_attention_heads": st.sampled_from([1, 2, 4]),
    "num_hidden_layers": st.integers(1, 48),
    "position_embedding_type": st.sampled_from(["absolute", "rotary", "relative_key", "relative_key_query"]),
    "token_dropout": st.booleans(),
    "emb_layer_norm_before": st.sampled_from([None, True, False]),
    "layer_norm_eps": st.floats(1e-12, 1e-3),
    "id2label": st.dictionaries(st.integers(0, 20).map(str), st.text(max_size=8), max_size=4),
    "problem_type": st.sampled_from([None, "regression", "single_label_classification"]),
    "extra_key": st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                              lambda children: st.lists(children, max_size=3)
                              | st.dictionaries(st.text(max_size=5), children, max_size=3), max_leaves=6),
})


@settings(max_examples=200, deadline=None)
@given(values=config_values)
def test_config_json_round_trip(values):
    values = dict(values)
    if not values["id2label"]:
        values.pop("id2label")
    config = EsmConfig(vocab_size=33, **values)
    again = EsmConfig.from_dict(json.loads(config.to_json_string()))
    assert again == config
    assert again.extra_key == values["extra_key"]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_fasta_parser_never_crashes_on_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fasta") / "random.fasta"
    path.write_bytes(data)
    try:
        records = read_fasta(path)
    except FastaError:
        return
    assert all(record.sequence for record in records)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list(">ACDEFXacdz*-. \n;0")), max_size=120))
def test_fasta_text_parses_or_raises_fasta_error(text):
    try:
        records = parse_fasta(text)
    except FastaError:
        return
    for record in records:
        assert set(record.sequence) <= set("ACDEFGHIKLMNPQRSTVWYXBUZO-.")


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".safetensors", ".bin", ".pt", ".h5"]))
def test_random_bytes_as_checkpoint_raise_checkpoint_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("ckpt") / f"model{suffix}"
    path.write_bytes(data)
    with pytest.raises(CheckpointError):
        read_state_dict(os.fspath(path))
