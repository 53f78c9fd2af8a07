"""fair-esm `.pt` checkpoints -> tf_esm directories, checked against fair-esm itself.

Tiny ESM-2 / ESM-1b / ESM-1v models are built with fair-esm, perturbed, and saved in the exact on-disk layout of
the released files (fairseq prefixes, `cfg`/`args` Namespaces, a `-contact-regression.pt` sibling). fair-esm's own
`load_model_and_alphabet_local` loads them back and is the reference for logits, every layer's representation and
contacts of a padded batch with `<mask>` tokens.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import esm
import numpy as np
import pytest
import torch

from tf_esm import TFEsmForMaskedLM, TFEsmModel
from tf_esm.backend import to_numpy
from tf_esm.configuration import ESM2_VOCAB
from tf_esm.io.fair_esm import FAIR_ESM_RENAMES, fair_esm_to_reference_name, read_fair_esm_checkpoint
from tf_esm.pipelines.convert import convert_checkpoint
from tf_esm.io.weights import CheckpointError
from tests._reference import share_directory
from tests._fair_esm_helpers import ALPHABET, fair_esm_load, write_esm1b, write_esm1v, write_esm2

# fp32 parity: 1e-5 relative to the tensor's scale (the logits reach ~20, where one fp32 ulp is ~2e-6).
ATOL = 1e-5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQUENCES = [("long", "MKTAYIAK<mask>QRQISFVKSHF"), ("short", "GS<mask>LKA"), ("tiny", "W<mask>")]


# ------------------------------------------------------------------------------------------------ outputs

def fair_esm_outputs(model, alphabet):
    _, _, tokens = alphabet.get_batch_converter()(SEQUENCES)
    with torch.no_grad():
        out = model(tokens, repr_layers=list(range(model.num_layers + 1)), return_contacts=True)
    return tokens.numpy(), {
        "logits": out["logits"].numpy(),
        "representations": [out["representations"][i].numpy() for i in range(model.num_layers + 1)],
        "contacts": out["contacts"].numpy(),
    }


def our_outputs(model, tokens):
    attention_mask = (tokens != ALPHABET.padding_idx).astype("int32")
    out = model(tokens, attention_mask=attention_mask, output_hidden_states=True)
    return {
        "logits": to_numpy(out.logits),
        "representations": [to_numpy(h) for h in out.hidden_states],
        "contacts": to_numpy(model.predict_contacts(tokens, attention_mask=attention_mask)),
    }


def max_diff(a, b):
    a, b = to_numpy(a), to_numpy(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


def assert_close(diffs, references):
    """Each max abs diff must be below ATOL times the reference tensor's scale (at least 1)."""
    for name, diff in diffs.items():
        scale = max(1.0, float(np.max(np.abs(references[name]))))
        assert diff < ATOL * scale, f"{name}: max abs diff {diff:.2e} (scale {scale:.1f})"


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """{kind: (checkpoint path, converted dir, tokens, fair-esm outputs)} for ESM-2, ESM-1b and ESM-1v files."""
    root = tmp_path_factory.mktemp("fair_esm")
    paths = {
        "esm2": write_esm2(str(root)),
        "esm1b": write_esm1b(str(root)),
        "esm1v": write_esm1v(str(root)),
    }
    out = {}
    for kind, path in paths.items():
        model, alphabet = fair_esm_load(path)
        tokens, reference = fair_esm_outputs(model, alphabet)
        converted = convert_checkpoint(path, str(root / f"{kind}_tf"))
        out[kind] = (path, converted, tokens, reference)
    share_directory(root)
    return out


# --------------------------------------------------------------------------------------------------------- tests

def test_fair_esm_alphabet_is_the_esm2_vocabulary():
    assert tuple(ALPHABET.all_toks) == ESM2_VOCAB
    assert (ALPHABET.cls_idx, ALPHABET.padding_idx, ALPHABET.eos_idx, ALPHABET.mask_idx) == (0, 1, 2, 32)


@pytest.mark.parametrize("kind", ["esm2", "esm1b", "esm1v"])
def test_converted_model_matches_fair_esm(cases, kind):
    _, converted, tokens, reference = cases[kind]
    assert (tokens == ALPHABET.padding_idx).any() and (tokens == ALPHABET.mask_idx).any()
    ours = our_outputs(TFEsmForMaskedLM.from_pretrained(converted), tokens)
    diffs = {"logits": max_diff(ours["logits"], reference["logits"])}
    references = {"logits": reference["logits"]}
    assert len(ours["representations"]) == len(reference["representations"])
    for layer, (mine, theirs) in enumerate(zip(ours["representations"], reference["representations"])):
        diffs[f"repr{layer}"] = max_diff(mine, theirs)
        references[f"repr{layer}"] = theirs
    if kind != "esm1v":  # ESM-1v has no regression weights: both contact heads are untrained
        diffs["contacts"] = max_diff(ours["contacts"], reference["contacts"])
        references["contacts"] = reference["contacts"]
    print(kind, {k: f"{v:.1e}" for k, v in diffs.items()})
    assert_close(diffs, references)


def test_config_from_checkpoint_arguments(cases):
    config, state = read_fair_esm_checkpoint(cases["esm2"][0])
    assert (config.position_embedding_type, config.num_hidden_layers, config.hidden_size,
            config.num_attention_heads, config.intermediate_size) == ("rotary", 2, 32, 4, 128)
    assert config.token_dropout and not config.emb_layer_norm_before and config.layer_norm_eps == 1e-5
    assert (config.vocab_size, config.pad_token_id, config.mask_token_id, config.eos_token_id) == (33, 1, 32, 2)
    assert "lm_head.decoder.weight" not in state and state["esm.embeddings.word_embeddings.weight"].dtype == np.float32

    config, state = read_fair_esm_checkpoint(cases["esm1b"][0])
    assert (config.position_embedding_type, config.intermediate_size, config.max_position_embeddings) == (
        "absolute", 48, 40 + 2)
    assert config.token_dropout and config.emb_layer_norm_before
    # fair-esm zeroes the <mask> embedding of ESM-1b models on load; the raw file's row is not zero.
    assert not state["esm.embeddings.word_embeddings.weight"][32].any()
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(cases["esm1b"][0], weights_only=True)["model"]
    assert raw["encoder.sentence_encoder.embed_tokens.weight"][32].abs().sum() > 0

    config, _ = read_fair_esm_checkpoint(cases["esm1v"][0])
    assert not config.token_dropout and not config.emb_layer_norm_before


def test_converted_directory_layout_and_base_model(cases):
    _, converted, tokens, reference = cases["esm2"]
    assert {"config.json", "tf_esm_model.h5", "vocab.txt"} <= set(os.listdir(converted))
    with open(os.path.join(converted, "vocab.txt"), encoding="utf-8") as handle:
        assert handle.read().split() == list(ESM2_VOCAB)
    base = TFEsmModel.from_pretrained(converted)
    attention_mask = (tokens != 1).astype("int32")
    hidden = to_numpy(base(tokens, attention_mask=attention_mask).last_hidden_state)
    diff = max_diff(hidden, reference["representations"][-1])
    print("TFEsmModel last_hidden_state", f"{diff:.1e}")
    assert_close({"last_hidden_state": diff}, {"last_hidden_state": reference["representations"][-1]})


def test_rename_table_covers_fair_esm_names():
    model = esm.model.esm2.ESM2(num_layers=1, embed_dim=8, attention_heads=2, alphabet=ALPHABET)
    args = argparse.Namespace(arch="roberta_large", layers=1, embed_dim=8, ffn_embed_dim=16, attention_heads=2,
                              max_positions=10, emb_layer_norm_before=True)
    names = set(model.state_dict()) | set(esm.model.esm1.ProteinBertModel(args, ALPHABET).state_dict())
    mapped = {fair_esm_to_reference_name(n) for n in names}
    assert "esm.embeddings.position_embeddings.weight" in mapped and "lm_head.decoder.weight" in mapped
    assert len(FAIR_ESM_RENAMES) == 16
    with pytest.raises(CheckpointError, match="bias_k"):
        fair_esm_to_reference_name("encoder.sentence_encoder.layers.0.self_attn.bias_k")


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    victim = tmp_path / "pwned.txt"

    class Payload:
        def __reduce__(self):
            return (open, (str(victim), "w"))

    path = tmp_path / "esm2_t2_evil.pt"
    torch.save({"model": {"x": Payload()}, "cfg": {"model": argparse.Namespace()}}, str(path))
    assert not victim.exists()
    with pytest.raises(CheckpointError, match="refused"):
        read_fair_esm_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused"):
        convert_checkpoint(path, tmp_path / "out")
    assert not victim.exists() and not (tmp_path / "out").exists()
    torch.load(str(path), weights_only=False)  # the payload is live: an unsafe load does create the file
    assert victim.exists()


def test_refuses_to_overwrite_and_failed_conversion_leaves_nothing(cases, tmp_path):
    path = cases["esm2"][0]
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_checkpoint(path, destination)
    assert os.listdir(destination) == ["keep.txt"]

    # A checkpoint whose tensor has the wrong shape fails: nothing is written, no temporary directory is left.
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(path, weights_only=True)
    data["model"]["encoder.sentence_encoder.layers.1.fc1.weight"] = torch.zeros(64, 32)
    broken = tmp_path / "esm2_t2_broken.pt"
    torch.save(data, str(broken))
    with pytest.raises(CheckpointError, match=r"layer\.1\.intermediate\.dense\.weight"):
        convert_checkpoint(broken, destination, overwrite=True)
    assert os.listdir(destination) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["esm2_t2_broken.pt", "out"]

    convert_checkpoint(path, destination, overwrite=True)
    assert "keep.txt" not in os.listdir(destination) and "config.json" in os.listdir(destination)
    assert sorted(os.listdir(tmp_path)) == ["esm2_t2_broken.pt", "out"]


def test_bad_checkpoints_get_clear_errors(tmp_path):
    unsupported = tmp_path / "esm1_t2_tiny.pt"
    torch.save({"model": {"encoder.sentence_encoder.embed_tokens.weight": torch.zeros(33, 8)},
                "args": argparse.Namespace(arch="protein_bert_base", encoder_layers=1, encoder_embed_dim=8,
                                           encoder_attention_heads=2, encoder_ffn_embed_dim=16)}, str(unsupported))
    with pytest.raises(CheckpointError, match="protein_bert_base"):
        read_fair_esm_checkpoint(unsupported)
    state_only = tmp_path / "esm2_state_only.pt"
    torch.save({"embed_tokens.weight": torch.zeros(33, 8)}, str(state_only))
    with pytest.raises(CheckpointError, match="not a fair-esm checkpoint"):
        read_fair_esm_checkpoint(state_only)
    with pytest.raises(CheckpointError, match="no such file"):
        read_fair_esm_checkpoint(tmp_path / "missing.pt")


def test_hf_directory_converts(reference_checkpoints, tmp_path):
    ref = reference_checkpoints("absolute")
    destination = convert_checkpoint(ref.path, tmp_path / "hf_tf")
    _, _, tokens = ALPHABET.get_batch_converter()(SEQUENCES)
    attention_mask = (tokens != 1).long()
    with torch.no_grad():
        theirs = ref.model(tokens, attention_mask=attention_mask).logits.numpy()
    ours = TFEsmForMaskedLM.from_pretrained(destination)(tokens.numpy(), attention_mask=attention_mask.numpy())
    diff = max_diff(ours.logits, theirs)
    print("HF directory logits", f"{diff:.1e}")
    assert_close({"logits": diff}, {"logits": theirs})
    assert "vocab.txt" in os.listdir(destination)


def test_command_line_script(cases, tmp_path):
    path, _, tokens, reference = cases["esm1b"]
    output = tmp_path / "cli_out"
    script = os.path.join(REPO, "conversion_scripts", "convert_esm_checkpoint.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, script, "--checkpoint", path, "--output", str(output)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    logits = TFEsmForMaskedLM.from_pretrained(str(output))(tokens, attention_mask=(tokens != 1).astype("int32")).logits
    diff = max_diff(logits, reference["logits"])
    print("script logits", f"{diff:.1e}")
    assert_close({"logits": diff}, reference)
    again = subprocess.run([sys.executable, script, "--checkpoint", path, "--output", str(output)],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 1 and "not empty" in again.stderr
