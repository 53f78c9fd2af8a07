"""One vocabulary for the public keywords: misspelt `from_pretrained` arguments are errors, not new config keys;
`precision` / `stem_precision` and `max_tokens_per_batch` are the names, and the names they replaced (`dtype`,
`esm_dtype`, `toks_per_batch`, `token_budget`) still work with a DeprecationWarning naming the new one."""

import json
import warnings

import numpy as np
import pytest

from tests.test_folding_model import _make_reference
from tf_esm import EsmConfig, TFEsmForMaskedLM, TFEsmForSequenceClassification, TFEsmModel
from tf_esm.folding import TFEsmForProteinFolding
from tf_esm.pipelines.data import sequences_dataset
from tf_esm.pipelines.inference import embed_sequences
from tf_esm.pipelines.scoring import score_mutants

SEQUENCES = ["MKTAYIAKQRQISFVKSH", "GSHMLEDP", "WCYNQ"]


@pytest.fixture(scope="module")
def esmfold_directory(tmp_path_factory):
    directory = tmp_path_factory.mktemp("esmfold_names")
    _make_reference(directory, fp16_esm=False, seed=2)
    return str(directory)


def _no_deprecation(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        return call()


# ----------------------------------------------------------------------------------------- unknown keywords
def test_misspelt_constructor_argument_is_an_error_naming_it(reference_checkpoints, tmp_path):
    path = reference_checkpoints("rotary").path
    with pytest.raises(TypeError) as error:
        TFEsmModel.from_pretrained(path, add_pooler_layer=False)
    message = str(error.value)
    assert "'add_pooler_layer' (did you mean 'add_pooling_layer'?)" in message
    assert "add_pooling_layer" in message and "num_labels" in message and "problem_type" in message
    with pytest.raises(TypeError, match="'hiden_size' .did you mean 'hidden_size'"):
        EsmConfig.from_pretrained(path, hiden_size=64)


def test_config_overrides_and_constructor_arguments_still_work(reference_checkpoints, tmp_path):
    path = reference_checkpoints("rotary").path
    model = _no_deprecation(lambda: TFEsmForSequenceClassification.from_pretrained(
        path, num_labels=3, problem_type="multi_label_classification", hidden_dropout_prob=0.0))
    assert model.config.num_labels == 3 and model.config.problem_type == "multi_label_classification"
    base = TFEsmModel.from_pretrained(path, add_pooling_layer=False, name="encoder")
    assert base.add_pooling_layer is False and base.name == "encoder"
    base.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "add_pooling_layer" not in saved and "name" not in saved
    # A key only the checkpoint's config.json holds (transformers writes `architectures`) may be overridden too.
    assert TFEsmModel.from_pretrained(path, architectures=["X"]).config.architectures == ["X"]


def test_esmfold_unknown_argument_and_precision_point_to_the_right_option(esmfold_directory):
    with pytest.raises(TypeError, match="'stem_dtype' .did you mean 'stem_precision'"):
        TFEsmForProteinFolding.from_pretrained(esmfold_directory, stem_dtype="bfloat16")
    with pytest.raises(ValueError, match=r"supports precision float32; got 'bfloat16'\. Only the ESM-2 stem takes "
                                         r"half precision: pass stem_precision='bfloat16'"):
        TFEsmForProteinFolding.from_pretrained(esmfold_directory, precision="bfloat16")


# ----------------------------------------------------------------------------------------- precision
def test_precision_is_the_keyword_and_dtype_its_deprecated_name(reference_checkpoints):
    path = reference_checkpoints("rotary").path
    model = _no_deprecation(lambda: TFEsmModel.from_pretrained(path, precision="bfloat16", add_pooling_layer=False))
    assert model.dtype_policy.name == "bfloat16"
    with pytest.warns(DeprecationWarning, match=r"TFEsmModel.from_pretrained\(dtype=...\) is deprecated; use "
                                                r"precision=... instead"):
        old = TFEsmModel.from_pretrained(path, dtype="bfloat16", add_pooling_layer=False)
    assert old.dtype_policy.name == "bfloat16"
    with pytest.raises(TypeError, match="got both dtype= and precision="):
        TFEsmModel.from_pretrained(path, dtype="bfloat16", precision="bfloat16")


def test_stem_precision_is_the_keyword_and_esm_dtype_its_deprecated_name(esmfold_directory):
    model = _no_deprecation(lambda: TFEsmForProteinFolding.from_pretrained(esmfold_directory,
                                                                           stem_precision="bfloat16"))
    assert model.stem_precision == "bfloat16" and model.esm.dtype_policy.name == "bfloat16"
    with pytest.warns(DeprecationWarning, match=r"TFEsmForProteinFolding.from_pretrained\(esm_dtype=...\) is "
                                                r"deprecated; use stem_precision=..."):
        old = TFEsmForProteinFolding.from_pretrained(esmfold_directory, esm_dtype="bfloat16")
    assert old.stem_precision == "bfloat16"
    with pytest.warns(DeprecationWarning, match=r"TFEsmForProteinFolding\(esm_dtype=...\) is deprecated"):
        built = TFEsmForProteinFolding(model.config, esm_dtype="float32")
    assert built.stem_precision == "float32"
    with pytest.warns(DeprecationWarning, match="use .stem_precision"):
        assert old.esm_dtype == "bfloat16"
    assert "esm_dtype" not in model.get_config() and model.get_config()["stem_precision"] == "bfloat16"


# ----------------------------------------------------------------------------------------- token budget
def test_max_tokens_per_batch_is_the_keyword_and_the_old_names_warn(reference_checkpoints, esm_tokenizer):
    model = TFEsmForMaskedLM.from_pretrained(reference_checkpoints("rotary").path)
    new = _no_deprecation(lambda: embed_sequences(model, SEQUENCES, max_tokens_per_batch=40))
    with pytest.warns(DeprecationWarning, match=r"iter_embeddings\(toks_per_batch=...\) is deprecated; use "
                                                r"max_tokens_per_batch"):
        old = embed_sequences(model, SEQUENCES, toks_per_batch=40)
    for ours, theirs in zip(new, old):
        np.testing.assert_array_equal(ours["mean_representations"][2], theirs["mean_representations"][2])

    scores = _no_deprecation(lambda: score_mutants(model, SEQUENCES[0], ["K2A"], max_tokens_per_batch=60))
    with pytest.warns(DeprecationWarning, match=r"score_mutants\(toks_per_batch=...\)"):
        np.testing.assert_array_equal(score_mutants(model, SEQUENCES[0], ["K2A"], toks_per_batch=60), scores)

    _no_deprecation(lambda: sequences_dataset(SEQUENCES, tokenizer=esm_tokenizer, max_tokens_per_batch=64))
    with pytest.warns(DeprecationWarning, match=r"make_dataset\(token_budget=...\) is deprecated; use "
                                                r"max_tokens_per_batch"):
        sequences_dataset(SEQUENCES, tokenizer=esm_tokenizer, token_budget=64)
