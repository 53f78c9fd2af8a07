"""ESM C parity: every class and head against transformers' `Esmc*` models (tiny random checkpoints saved with their
tokenizer, as a hub directory is), and the `esm` package's weights against that package's own outputs
(tests/fixtures/esmc_esm_package: generated in the package's own environment, see its README). Runs under every
backend."""

import json
import logging
import os

import numpy as np
import pytest
import torch

from tests._reference import ESMC_TINY, as_numpy, make_esmc_reference_checkpoint
from tests._reference import assert_close as _assert_close
from tf_esm import (
    EsmcConfig,
    EsmcTokenizer,
    TFEsmcForMaskedLM,
    TFEsmcForSequenceClassification,
    TFEsmcForTokenClassification,
    TFEsmcModel,
    TFEsmModel,
)

ATOL = 5e-5  # float32; weights of standard deviation 0.2 make activations of order 1-10
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "esmc_esm_package")
SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "ACD|EFGH", "MLKNVQVQLV"]


def assert_close(ours, theirs, what, atol=ATOL):
    return _assert_close(ours, theirs, atol, what, case="esmc")


@pytest.fixture(scope="module")
def esmc_checkpoints(tmp_path_factory):
    cache = {}

    def get(model_class="EsmcForMaskedLM", **options):
        key = (model_class, tuple(sorted(options.items())))
        if key not in cache:
            directory = tmp_path_factory.mktemp(f"esmc_{model_class}")
            cache[key] = make_esmc_reference_checkpoint(directory, model_class, **options)
        return cache[key]

    return get


def hf_batch(path, sequences=SEQUENCES):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path)(sequences, padding=True, return_tensors="pt")


def real(mask):
    return mask.numpy().astype(bool)


def test_config_round_trip_with_transformers(esmc_checkpoints, tmp_path):
    import transformers

    ref = esmc_checkpoints()
    config = EsmcConfig.from_pretrained(ref.path)
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim) == (32, 3, 8)
    assert config.rope_theta == 10000.0 and config.residual_scale == pytest.approx((3 / 36) ** 0.5)
    config.save_pretrained(tmp_path)
    theirs = transformers.EsmcConfig.from_pretrained(tmp_path)
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "head_dim",
                 "vocab_size", "mask_token_id", "max_position_embeddings"):
        assert getattr(theirs, name) == getattr(ref.config, name), name
    assert theirs.rope_parameters["rope_theta"] == ref.config.rope_parameters["rope_theta"]
    with pytest.raises(ValueError, match="grouped-query"):
        EsmcConfig(**ESMC_TINY, num_key_value_heads=2)
    with pytest.raises(ValueError, match="rope_type"):
        EsmcConfig(**ESMC_TINY, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4})


@pytest.mark.parametrize("text", ["MK<mask>L", "acde", "aCdE", "M K", "J*", "AB|CD", "<null_1>", "<Mask>", "MK\nL",
                                  "<cls>A<eos><pad>", "é", ""])
def test_tokenizer_ids_equal_transformers(esmc_checkpoints, text):
    import transformers

    path = esmc_checkpoints().path
    theirs = transformers.AutoTokenizer.from_pretrained(path)
    for ours in (EsmcTokenizer(), EsmcTokenizer.from_pretrained(path)):
        assert ours(text)["input_ids"] == theirs(text)["input_ids"]


def test_tokenizer_batches_and_saves_like_transformers(esmc_checkpoints, tmp_path):
    import transformers

    theirs = transformers.AutoTokenizer.from_pretrained(esmc_checkpoints().path)
    ours = EsmcTokenizer()
    for key in ("input_ids", "attention_mask"):
        assert ours(SEQUENCES, padding=True)[key] == theirs(SEQUENCES, padding=True)[key]
    assert (ours(SEQUENCES[0], truncation=True, max_length=6)["input_ids"]
            == theirs(SEQUENCES[0], truncation=True, max_length=6)["input_ids"])
    assert ours.chain_break_token_id == 31 and ours.mask_token_id == 32 and ours.vocab_size == 33
    ours.save_pretrained(tmp_path)
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == "EsmcTokenizer"
    assert reloaded(SEQUENCES, padding=True)["input_ids"] == theirs(SEQUENCES, padding=True)["input_ids"]


def test_masked_lm_parity_all_outputs(esmc_checkpoints):
    ref = esmc_checkpoints()
    enc = hf_batch(ref.path)
    with torch.no_grad():
        expected = ref.model(**enc, output_hidden_states=True, output_attentions=True)
    model = TFEsmcForMaskedLM.from_pretrained(ref.path, strict=True)
    tokens = EsmcTokenizer.from_pretrained(ref.path)(SEQUENCES, padding=True, return_tensors="np")
    out = model(tokens, output_hidden_states=True, output_attentions=True)
    keep = real(enc["attention_mask"])
    assert_close(as_numpy(out.logits)[keep], expected.logits.numpy()[keep], "esmc logits")
    assert len(out.hidden_states) == len(expected.hidden_states) == 4
    for index, (ours, theirs) in enumerate(zip(out.hidden_states, expected.hidden_states)):
        assert_close(as_numpy(ours)[keep], theirs.numpy()[keep], f"esmc hidden_states[{index}]")
    assert len(out.attentions) == 3
    for index, (ours, theirs) in enumerate(zip(out.attentions, expected.attentions)):
        ours, theirs = as_numpy(ours), theirs.numpy()
        for row, length in enumerate(keep.sum(axis=1)):
            assert_close(ours[row, :, :length, :length], theirs[row, :, :length, :length],
                         f"esmc attentions[{index}] row {row}", atol=1e-5)
    # Without attention maps the fused attention runs: the same numbers.
    fused = model(tokens)
    assert_close(as_numpy(fused.logits)[keep], expected.logits.numpy()[keep], "esmc logits (fused attention)")


def test_masked_lm_loss_parity(esmc_checkpoints):
    ref = esmc_checkpoints()
    enc = hf_batch(ref.path)
    labels = torch.full_like(enc["input_ids"], -100)
    labels[0, 3], labels[1, 2], labels[2, 5] = 5, 7, 9
    with torch.no_grad():
        expected = ref.model(**enc, labels=labels).loss
    model = TFEsmcForMaskedLM.from_pretrained(ref.path)
    out = model(enc["input_ids"].numpy(), attention_mask=enc["attention_mask"].numpy(), labels=labels.numpy())
    assert_close(np.reshape(as_numpy(out.loss), ()), expected.numpy(), "esmc masked-LM loss", atol=1e-5)


def test_batched_equals_single_sequence(esmc_checkpoints):
    ref = esmc_checkpoints()
    model = TFEsmcForMaskedLM.from_pretrained(ref.path)
    tokenizer = EsmcTokenizer.from_pretrained(ref.path)
    batched = as_numpy(model(tokenizer(SEQUENCES, padding=True, return_tensors="np")).logits)
    for row, sequence in enumerate(SEQUENCES):
        alone = as_numpy(model(tokenizer([sequence], return_tensors="np")).logits)[0]
        assert_close(batched[row, :len(alone)], alone, f"esmc batched vs single, row {row}", atol=1e-5)


def test_base_model_and_position_ids(esmc_checkpoints):
    ref = esmc_checkpoints("EsmcModel")
    enc = hf_batch(ref.path)
    positions = torch.arange(enc["input_ids"].shape[1])[None].repeat(3, 1) + 5
    with torch.no_grad():
        expected = ref.model(**enc).last_hidden_state
        shifted = ref.model(**enc, position_ids=positions).last_hidden_state
    model = TFEsmcModel.from_pretrained(ref.path, strict=True)
    keep = real(enc["attention_mask"])
    inputs = dict(input_ids=enc["input_ids"].numpy(), attention_mask=enc["attention_mask"].numpy())
    assert_close(as_numpy(model(**inputs).last_hidden_state)[keep], expected.numpy()[keep], "esmc last_hidden_state")
    assert_close(as_numpy(model(**inputs, position_ids=positions.numpy()).last_hidden_state)[keep],
                 shifted.numpy()[keep], "esmc last_hidden_state, position_ids")


def test_sequence_id_chain_aware_attention(esmc_checkpoints):
    ref = esmc_checkpoints()
    enc = hf_batch(ref.path, ["MKTAYIAK|QRQISF", "ACDEFG|HIK"])
    ids = enc["input_ids"]
    sequence_id = torch.full_like(ids, -1)
    for row in range(ids.shape[0]):
        chain = 0
        for position in range(ids.shape[1]):
            if ids[row, position] == 1:
                break
            sequence_id[row, position] = chain
            chain += int(ids[row, position] == 31)
    with torch.no_grad():
        expected = ref.model(input_ids=ids, sequence_id=sequence_id).logits
        unchained = ref.model(**enc).logits
    model = TFEsmcForMaskedLM.from_pretrained(ref.path)
    ours = as_numpy(model(ids.numpy(), sequence_id=sequence_id.numpy()).logits)
    keep = sequence_id.numpy() >= 0
    assert_close(ours[keep], expected.numpy()[keep], "esmc logits with sequence_id")
    assert np.abs(expected.numpy()[keep] - unchained.numpy()[keep]).max() > 1e-3  # the chains do matter


@pytest.mark.parametrize("problem_type,num_labels", [("single_label_classification", 3), ("regression", 1)])
def test_sequence_classification_parity(esmc_checkpoints, problem_type, num_labels):
    ref = esmc_checkpoints("EsmcForSequenceClassification", num_labels=num_labels, problem_type=problem_type)
    enc = hf_batch(ref.path)
    labels = torch.tensor([0, 2, 1]) if num_labels > 1 else torch.tensor([[0.5], [-1.0], [2.0]])
    with torch.no_grad():
        expected = ref.model(**enc, labels=labels)
    model = TFEsmcForSequenceClassification.from_pretrained(ref.path, strict=True)
    out = model(enc["input_ids"].numpy(), attention_mask=enc["attention_mask"].numpy(), labels=labels.numpy())
    assert_close(out.logits, expected.logits, f"esmc sequence classification logits ({problem_type})")
    assert_close(np.reshape(as_numpy(out.loss), ()), expected.loss.numpy(), f"esmc {problem_type} loss", atol=1e-5)


def test_token_classification_parity(esmc_checkpoints):
    ref = esmc_checkpoints("EsmcForTokenClassification", num_labels=4)
    enc = hf_batch(ref.path)
    labels = torch.randint(0, 4, enc["input_ids"].shape, generator=torch.Generator().manual_seed(0))
    labels[enc["attention_mask"] == 0] = -100
    labels[:, 0] = -100
    with torch.no_grad():
        expected = ref.model(**enc, labels=labels)
    model = TFEsmcForTokenClassification.from_pretrained(ref.path, strict=True)
    out = model(enc["input_ids"].numpy(), attention_mask=enc["attention_mask"].numpy(), labels=labels.numpy())
    keep = real(enc["attention_mask"])
    assert_close(as_numpy(out.logits)[keep], expected.logits.numpy()[keep], "esmc token classification logits")
    assert_close(np.reshape(as_numpy(out.loss), ()), expected.loss.numpy(), "esmc token loss", atol=1e-5)


def test_esm_package_weights_match_the_package(tmp_path):
    """`esmc_tiny.pth` is `ESMC.state_dict()` of the `esm` package 3.2.1 (fused QKV and SwiGLU projections);
    `reference.npz` holds that package's outputs (see the fixture's README for its environment)."""
    reference = np.load(os.path.join(FIXTURE, "reference.npz"))
    model = TFEsmcForMaskedLM.from_pretrained(os.path.join(FIXTURE, "esmc_tiny.pth"), strict=True,
                                              num_attention_heads=int(reference["n_heads"]))
    assert model.config.num_hidden_layers == int(reference["n_layers"])
    input_ids = reference["input_ids"]
    keep = input_ids != int(reference["pad_token_id"])
    out = model(input_ids, attention_mask=keep.astype("int32"), output_hidden_states=True)
    assert_close(as_numpy(out.logits)[keep], reference["sequence_logits"][keep], "esm package logits")
    assert_close(as_numpy(out.last_hidden_state if hasattr(out, "last_hidden_state") else out.hidden_states[-1])[keep],
                 reference["embeddings"][keep], "esm package embeddings")
    # The package's hidden states are its blocks' outputs before the final norm (ours: index 1..layers-1, then
    # the normed last one, as transformers').
    for index in range(int(reference["n_layers"]) - 1):
        assert_close(as_numpy(out.hidden_states[index + 1])[keep], reference["hidden_states"][index][keep],
                     f"esm package hidden state {index}")
    for row in range(input_ids.shape[0]):
        single = as_numpy(model(reference[f"single_{row}_input_ids"]).logits)
        assert_close(single, reference[f"single_{row}_sequence_logits"], f"esm package single sequence {row}")
    chains = reference["chain_sequence_id"]
    out = model(reference["chain_input_ids"], sequence_id=chains)
    assert_close(as_numpy(out.logits)[chains >= 0], reference["chain_sequence_logits"][chains >= 0],
                 "esm package logits with sequence_id")
    # Saved as transformers' layout, it loads in transformers and gives the package's numbers there too.
    model.save_pretrained(tmp_path / "converted", format="safetensors")
    import transformers

    theirs = transformers.EsmcForMaskedLM.from_pretrained(tmp_path / "converted").eval()
    with torch.no_grad():
        logits = theirs(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(keep.astype("int64"))).logits
    assert_close(logits.numpy()[keep], reference["sequence_logits"][keep], "esm package via transformers")


def test_save_pretrained_loads_in_transformers(esmc_checkpoints, tmp_path):
    import transformers

    for class_name, ours_class in (("EsmcForMaskedLM", TFEsmcForMaskedLM), ("EsmcModel", TFEsmcModel),
                                   ("EsmcForSequenceClassification", TFEsmcForSequenceClassification),
                                   ("EsmcForTokenClassification", TFEsmcForTokenClassification)):
        ref = esmc_checkpoints(class_name) if class_name == "EsmcForMaskedLM" else esmc_checkpoints(
            class_name, num_labels=2)
        model = ours_class.from_pretrained(ref.path, strict=True)
        target = tmp_path / class_name
        model.save_pretrained(target, format="safetensors")
        assert json.loads((target / "config.json").read_text())["architectures"] == [class_name]
        assert (target / "tokenizer.json").exists()
        theirs, info = getattr(transformers, class_name).from_pretrained(target, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (class_name, info)
        mine, other = ref.model.state_dict(), theirs.state_dict()
        assert sorted(mine) == sorted(other), class_name
        for name in mine:  # the same weights, bit for bit
            assert torch.equal(mine[name], other[name]), (class_name, name)
        # tf_esm's own file reads back the same model.
        model.save_pretrained(tmp_path / (class_name + "_h5"))
        again = ours_class.from_pretrained(tmp_path / (class_name + "_h5"), strict=True)
        for mine, other in zip(model.weights, again.weights):
            np.testing.assert_array_equal(as_numpy(mine.value), as_numpy(other.value))


def test_sharded_checkpoint_and_wrong_family(esmc_checkpoints, tmp_path, caplog):
    ref = esmc_checkpoints()
    ref.model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    enc = hf_batch(ref.path)
    with torch.no_grad():
        expected = ref.model(**enc).logits
    out = TFEsmcForMaskedLM.from_pretrained(tmp_path / "sharded", strict=True)(
        enc["input_ids"].numpy(), attention_mask=enc["attention_mask"].numpy())
    keep = real(enc["attention_mask"])
    assert_close(as_numpy(out.logits)[keep], expected.numpy()[keep], "esmc sharded logits")
    with pytest.raises(ValueError, match="ESM C"):
        TFEsmModel.from_pretrained(ref.path)
    # A masked-LM checkpoint as a base model: its head is noted as unused, nothing else.
    with caplog.at_level(logging.WARNING, logger="tf_esm"):
        TFEsmcModel.from_pretrained(ref.path)
    assert "lm_head" in caplog.text and "lost" not in caplog.text


def test_bfloat16_close_to_float32(esmc_checkpoints):
    ref = esmc_checkpoints()
    tokens = EsmcTokenizer()(SEQUENCES, padding=True, return_tensors="np")
    full = as_numpy(TFEsmcModel.from_pretrained(ref.path)(tokens).last_hidden_state)
    half = TFEsmcModel.from_pretrained(ref.path, precision="bfloat16")
    assert half.esmc.embed_tokens.embeddings.dtype == "bfloat16"
    out = as_numpy(half(tokens).last_hidden_state).astype(np.float32)
    keep = tokens["attention_mask"].astype(bool)
    a, b = full[keep].ravel(), out[keep].ravel()
    assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


def test_contacts_are_not_offered():
    model = TFEsmcForMaskedLM(EsmcConfig(**ESMC_TINY))
    with pytest.raises(NotImplementedError, match="output_attentions"):
        model.predict_contacts(np.array([[0, 5, 6, 2]]))


def test_masked_marginals_and_saturation_scan_like_transformers(esmc_checkpoints):
    """Variant scoring with an ESM C model: ESM-1v's masked marginals computed here from transformers'
    `EsmcForMaskedLM` (mask the position, log-softmax over all 64 outputs, mutant minus wild type, summed over the
    substitutions of a multi-mutant)."""
    from tf_esm.pipelines.scoring import saturation_scan, score_mutants

    ref = esmc_checkpoints()
    sequence, mutants = "MKTAYIAKQRQISF", ["K2A", "T3G:Y5F", "F14W"]
    tokenizer = EsmcTokenizer()
    wild = tokenizer(sequence)["input_ids"]
    expected_rows = {}
    with torch.no_grad():
        for position in range(len(sequence)):
            masked = list(wild)
            masked[position + 1] = tokenizer.mask_token_id
            logits = ref.model(input_ids=torch.tensor([masked])).logits[0, position + 1].double()
            expected_rows[position] = torch.log_softmax(logits, -1).numpy()

    def expected(mutant):
        total = 0.0
        for part in mutant.split(":"):
            position = int(part[1:-1]) - 1
            row = expected_rows[position]
            total += row[tokenizer.token_to_id(part[-1])] - row[tokenizer.token_to_id(part[0])]
        return total

    model = TFEsmcForMaskedLM.from_pretrained(ref.path)
    scores = score_mutants(model, sequence, mutants, strategy="masked-marginals")
    np.testing.assert_allclose(scores, [expected(m) for m in mutants], rtol=0, atol=2e-5)
    from tf_esm.pipelines.scoring import STANDARD_AMINO_ACIDS

    scan = saturation_scan(model, sequence)
    assert scan.shape == (len(sequence), 20)
    for position, wild_type in enumerate(sequence):
        for column, residue in enumerate(STANDARD_AMINO_ACIDS):
            want = 0.0 if residue == wild_type else expected(f"{wild_type}{position + 1}{residue}")
            assert abs(scan[position, column] - want) <= 2e-5, (position, residue)


def test_gradient_checkpointing_and_eager_attention_keep_the_numbers(esmc_checkpoints):
    """ESM C's layers are a LayerStack: gradient checkpointing (one layer per checkpoint) gives the plain path's
    gradients; `attn_implementation="eager"` the fused path's logits."""
    import keras

    ref = esmc_checkpoints()
    tokens = dict(EsmcTokenizer()(SEQUENCES, padding=True, return_tensors="np"))
    labels = np.where(tokens["attention_mask"] == 1, tokens["input_ids"], -100)
    eager = TFEsmcForMaskedLM.from_pretrained(ref.path, attn_implementation="eager")
    fused = TFEsmcForMaskedLM.from_pretrained(ref.path)
    keep = tokens["attention_mask"].astype(bool)
    np.testing.assert_allclose(as_numpy(eager(tokens).logits)[keep], as_numpy(fused(tokens).logits)[keep],
                               rtol=0, atol=1e-5)

    def gradients(model):
        variables = model.trainable_variables
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = model(tokens, labels=labels, training=True).loss
            return [as_numpy(tf.convert_to_tensor(g)) for g in tape.gradient(loss, variables)]
        if keras.backend.backend() == "jax":
            import jax

            def loss_of(values):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return model(tokens, labels=labels, training=True).loss

            return [np.asarray(g) for g in jax.grad(loss_of)([v.value for v in variables])]
        loss = model(tokens, labels=labels, training=True).loss
        loss.backward()
        return [as_numpy(v.value.grad) for v in variables]

    plain = gradients(fused)
    checkpointed_model = TFEsmcForMaskedLM.from_pretrained(ref.path)
    checkpointed_model.gradient_checkpointing_enable()
    assert checkpointed_model.config.gradient_checkpointing and checkpointed_model.esmc.layers.gradient_checkpointing
    checkpointed = gradients(checkpointed_model)
    for a, b in zip(plain, checkpointed):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
