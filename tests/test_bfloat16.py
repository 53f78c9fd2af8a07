"""bfloat16 inference precision (`from_pretrained(precision="bfloat16")`, `tf-esm embed --precision bfloat16`): weights
stored in bfloat16, results float32 and within bfloat16 rounding of the PyTorch float32 reference (and about as close
to it as the reference under `torch.autocast("cpu", torch.bfloat16)` is), the CPU check, the CLI flag and settings."""

import json
import os

import h5py
import keras
import numpy as np
import pytest
import torch

from tf_esm import TFEsmForMaskedLM, TFEsmModel
from tf_esm.cli import main
from tf_esm.pipelines.inference import embed_sequences
from tf_esm.io import read_embeddings
from tf_esm.modeling import precision

SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "GSHMLEDPVAAL", "WCYNQ", "ACDEFGHIKLMNPQRSTVWYX"]
# Mean embeddings against the float32 reference: cosine similarity at least this, and the largest abs difference at
# most this fraction of the largest |value| (bfloat16 keeps 8 significant bits: 2^-8 = 0.4% per rounding; measured
# 0.5-0.7% here, the reference under bfloat16 autocast 0.4-0.5%).
MIN_COSINE = 0.999
MAX_RELATIVE_DIFF = 0.015
ARCHITECTURES = ["rotary", "absolute"]  # ESM-2 and ESM-1b layouts


def reference_means(torch_model, sequences, autocast=False):
    """The reference's last-layer mean over residues of each sequence alone, float32 or under bf16 autocast."""
    from tf_esm.pipelines.data import resolve_tokenizer

    tokenizer = resolve_tokenizer(None)
    means = []
    for sequence in sequences:
        ids = torch.as_tensor([tokenizer.encode(sequence)])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            hidden = torch_model(ids, output_hidden_states=True).hidden_states[-1].float()
        means.append(hidden[0, 1:len(sequence) + 1].mean(0).numpy())
    return np.stack(means)


def cosines(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bfloat16_embeddings_match_the_float32_reference(reference_checkpoints, architecture):
    reference = reference_checkpoints(architecture)
    model = TFEsmModel.from_pretrained(reference.path, add_pooling_layer=False, precision="bfloat16")
    # Stored in bfloat16: nothing is cast per call. Only the rotary frequencies stay float32 (angles reach ~1e3 rad).
    dtypes = {variable.path.split("/", 1)[1]: keras.backend.standardize_dtype(variable.dtype) for variable in model.variables}
    assert {path for path, dtype in dtypes.items() if dtype != "bfloat16"} == (
        {"esm/rotary_embeddings/inv_freq"} if architecture == "rotary" else set())
    assert model.dtype_policy.name == "bfloat16"

    layers = reference.config.num_hidden_layers
    results = embed_sequences(model, SEQUENCES, include=("mean", "per_tok"), repr_layers=(-1,))
    means = np.stack([result["mean_representations"][layers] for result in results])
    assert means.dtype == np.float32
    assert all(result["representations"][layers].dtype == np.float32 for result in results)

    expected = reference_means(reference.model, SEQUENCES)
    scale = np.abs(expected).max()
    difference = np.abs(means - expected).max()
    assert cosines(means, expected).min() >= MIN_COSINE
    assert difference <= MAX_RELATIVE_DIFF * scale, f"max abs diff {difference:.3g} (scale {scale:.3g})"
    # As close to float32 as the reference itself under bfloat16 autocast, give or take bfloat16 rounding.
    autocast_difference = np.abs(reference_means(reference.model, SEQUENCES, autocast=True) - expected).max()
    assert difference <= 2 * autocast_difference + 2e-3 * scale

    # Rounding, not a different model: a float32 model of the same weights rounded to bfloat16 is far closer.
    float32 = TFEsmModel.from_pretrained(reference.path, add_pooling_layer=False)
    assert np.abs(np.stack([r["mean_representations"][layers] for r in embed_sequences(float32, SEQUENCES)])
                  - expected).max() < 1e-4


def test_bfloat16_masked_lm_logits_and_attentions(reference_checkpoints):
    reference = reference_checkpoints("rotary")
    model = TFEsmForMaskedLM.from_pretrained(reference.path, precision="bf16")
    input_ids = np.array([[0, 5, 6, 7, 32, 9, 2, 1]], np.int32)
    mask = (input_ids != 1).astype(np.int32)
    outputs = model(input_ids, attention_mask=mask, output_attentions=True)
    assert keras.backend.standardize_dtype(outputs.logits.dtype) == "bfloat16"
    logits = np.asarray(outputs.logits, np.float32)
    with torch.no_grad():
        expected = reference.model(torch.as_tensor(input_ids, dtype=torch.long),
                                   attention_mask=torch.as_tensor(mask)).logits.numpy()
    real = mask[0] == 1
    assert np.abs(logits[:, real] - expected[:, real]).max() <= MAX_RELATIVE_DIFF * np.abs(expected).max()
    for probs in outputs.attentions:  # the explicit-softmax path: float32 softmax, padding gets nothing
        probs = np.asarray(probs, np.float32)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-2)
        assert np.all(probs[..., ~real] == 0)


def test_precision_names_and_unsupported_classes(reference_checkpoints):
    reference = reference_checkpoints("rotary")
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16; got 'float16'"):
        TFEsmModel.from_pretrained(reference.path, precision="float16")
    assert precision.check_precision("bf16") == "bfloat16" and precision.check_precision(None) == "float32"

    class Float32Only(TFEsmModel):
        supported_dtypes = ("float32",)

    with pytest.raises(ValueError, match="Float32Only supports precision float32; got 'bfloat16'"):
        Float32Only.from_pretrained(reference.path, precision="bfloat16")
    # The policy was only set while building: later models are float32 again.
    assert keras.config.dtype_policy().name == "float32"


def test_cpu_without_bfloat16_instructions_warns(monkeypatch, caplog, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert precision.cpu_flags(str(cpuinfo)) >= {"avx512_bf16", "avx2"}
    assert precision.cpu_flags(str(tmp_path / "missing")) is None

    monkeypatch.setattr(precision, "runs_on_cpu", lambda: True)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"fpu", "avx2", "avx512f"})
    with caplog.at_level("WARNING", logger="tf_esm"):
        message = precision.warn_if_slow("bfloat16")
    assert "neither avx512_bf16 nor amx_bf16" in message and "slower than float32" in message
    assert message in caplog.text
    assert precision.warn_if_slow("float32") is None

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert precision.warn_if_slow("bfloat16") is None
    monkeypatch.setattr(precision, "cpu_flags", lambda: None)
    assert "cannot read this CPU's feature flags" in precision.warn_if_slow("bfloat16")
    monkeypatch.setattr(precision, "cpu_flags", lambda: set())
    monkeypatch.setattr(precision, "runs_on_cpu", lambda: False)  # a GPU: no CPU instructions needed
    assert precision.warn_if_slow("bfloat16") is None


def test_cli_precision_flag_and_settings(tmp_path, capsys, monkeypatch, reference_checkpoints):
    reference = reference_checkpoints("rotary")
    fasta = tmp_path / "proteins.fasta"
    fasta.write_text("".join(f">p{index}\n{sequence}\n" for index, sequence in enumerate(SEQUENCES)))
    warned = []
    monkeypatch.setattr(precision, "warn_if_slow", lambda name: warned.append(name))
    output = tmp_path / "bf16.h5"
    assert main(["embed", reference.path, str(fasta), str(output), "--precision", "bfloat16", "--quiet"]) == 0
    assert warned == ["bfloat16"]
    layers = reference.config.num_hidden_layers
    with h5py.File(output, "r") as handle:
        assert json.loads(handle.attrs["tf_esm_embed"])["precision"] == "bfloat16"
    ids, stored = read_embeddings(output, "mean", layers)
    assert sorted(ids) == sorted(f"p{index}" for index in range(len(SEQUENCES)))
    means = stored[[ids.index(f"p{index}") for index in range(len(SEQUENCES))]]
    assert means.dtype == np.float32
    assert cosines(means, reference_means(reference.model, SEQUENCES)).min() >= MIN_COSINE

    capsys.readouterr()
    assert main(["embed", reference.path, str(fasta), str(output), "--quiet"]) == 2  # resume in float32: refused
    assert "precision: 'bfloat16' then, 'float32' now" in capsys.readouterr().err

    # Outputs written before the setting existed were float32: they resume in float32, not in bfloat16.
    directory = tmp_path / "old"
    assert main(["embed", reference.path, str(fasta), str(directory), "--quiet"]) == 0
    settings_path = directory / "tf_esm_embed.json"
    settings = json.loads(settings_path.read_text())
    assert settings.pop("precision") == "float32"
    settings_path.write_text(json.dumps(settings))
    os.remove(directory / "p0.npz")
    assert main(["embed", reference.path, str(fasta), str(directory), "--quiet"]) == 0
    assert main(["embed", reference.path, str(fasta), str(directory), "--precision", "bfloat16", "--quiet"]) == 2
    assert "precision: 'float32' then, 'bfloat16' now" in capsys.readouterr().err

    assert main(["embed", reference.path, str(fasta), str(tmp_path / "beam"), "--runner", "DirectRunner",
                 "--precision", "bfloat16"]) == 2
    assert "--precision bfloat16 is not supported with --runner" in capsys.readouterr().err
