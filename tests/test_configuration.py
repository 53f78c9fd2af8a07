"""EsmConfig against transformers' EsmConfig: defaults, config.json round trips, unknown keys, validation."""

import json

import pytest
import transformers

from tf_esm import EsmConfig, EsmFoldConfig

HF_ARGUMENTS = (
    "vocab_size", "mask_token_id", "pad_token_id", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
    "initializer_range", "layer_norm_eps", "position_embedding_type", "is_decoder", "add_cross_attention",
    "use_cache", "emb_layer_norm_before", "token_dropout", "vocab_list", "is_folding_model", "esmfold_config",
    "num_labels", "problem_type",
)


def test_defaults_match_transformers():
    ours, theirs = EsmConfig(vocab_size=33), transformers.EsmConfig(vocab_size=33)
    for name in HF_ARGUMENTS:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.id2label == theirs.id2label and ours.label2id == theirs.label2id


def test_reads_transformers_config_json_and_keeps_unknown_keys(tmp_path):
    hf = transformers.EsmConfig(vocab_size=33, hidden_size=64, num_attention_heads=4, num_labels=3,
                                position_embedding_type="rotary", token_dropout=True, problem_type="regression")
    hf.save_pretrained(str(tmp_path))
    data = json.loads((tmp_path / "config.json").read_text())
    data["some_future_key"] = {"nested": [1, 2]}
    data["architectures"] = ["EsmForSequenceClassification"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = EsmConfig.from_pretrained(tmp_path)
    assert config.hidden_size == 64 and config.num_labels == 3 and config.problem_type == "regression"
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert config.some_future_key == {"nested": [1, 2]}
    config.save_pretrained(tmp_path / "again")
    written = json.loads((tmp_path / "again" / "config.json").read_text())
    assert written["some_future_key"] == {"nested": [1, 2]}
    assert written["architectures"] == data["architectures"]
    assert EsmConfig.from_pretrained(tmp_path / "again") == config
    # transformers reads what we wrote.
    back = transformers.EsmConfig.from_pretrained(str(tmp_path / "again"))
    assert back.hidden_size == 64 and back.num_labels == 3 and back.position_embedding_type == "rotary"


def test_folding_config_round_trip_matches_transformers(tmp_path):
    hf = transformers.EsmConfig(vocab_size=33, is_folding_model=True,
                                esmfold_config={"trunk": {"num_blocks": 2, "structure_module": {"num_blocks": 3}}})
    hf.save_pretrained(str(tmp_path))
    config = EsmConfig.from_pretrained(tmp_path)
    assert isinstance(config.esmfold_config, EsmFoldConfig)
    assert config.esmfold_config.trunk.num_blocks == 2
    assert config.esmfold_config.trunk.structure_module.num_blocks == 3
    assert config.esmfold_config.trunk.max_recycles == hf.esmfold_config.trunk.max_recycles
    assert config.esmfold_config.fp16_esm is True
    for ours, theirs in ((config.esmfold_config, hf.esmfold_config),
                         (config.esmfold_config.trunk, hf.esmfold_config.trunk),
                         (config.esmfold_config.trunk.structure_module, hf.esmfold_config.trunk.structure_module)):
        for name in type(ours).defaults:
            if name not in ("trunk", "structure_module"):
                assert getattr(ours, name) == getattr(theirs, name), name
    assert list(config.vocab_list) == list(hf.vocab_list)
    assert EsmConfig.from_dict(config.to_dict()) == config
    assert json.loads(config.to_json_string())["esmfold_config"]["trunk"]["structure_module"]["num_blocks"] == 3


@pytest.mark.parametrize("kwargs,message", [
    (dict(hidden_size=30, num_attention_heads=4), "not a multiple of num_attention_heads"),
    (dict(position_embedding_type="alibi"), "unknown position_embedding_type 'alibi'"),
    (dict(problem_type="ranking"), "unknown problem_type 'ranking'"),
    (dict(add_cross_attention=True), "needs is_decoder=True"),
    (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
    (dict(hidden_size=36, num_attention_heads=4, position_embedding_type="rotary"), "even head size"),
])
def test_invalid_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EsmConfig(vocab_size=33, **kwargs)


def test_num_labels_and_label_maps():
    config = EsmConfig(vocab_size=33, id2label={"0": "neg", "1": "pos", "2": "mixed"})
    assert config.num_labels == 3 and config.label2id == {"neg": 0, "pos": 1, "mixed": 2}
    config.num_labels = 5
    assert config.num_labels == 5 and config.id2label[4] == "LABEL_4"


def test_invalid_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        EsmConfig.from_pretrained(tmp_path)
