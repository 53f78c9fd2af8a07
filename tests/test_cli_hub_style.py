"""The paths a new user walks in the first hour, on checkpoints made the way the hub's are: transformers'
`save_pretrained` of the model **and** of its tokenizer in one directory. Every expected number comes from the
PyTorch reference model that wrote the checkpoint.

Covers: `tf-esm convert` (and conversion_scripts/convert_esm_checkpoint.py) of such a directory, `tf-esm embed` on a
base-model checkpoint with and without a pooler (no warning: embedding never uses it), compressed FASTA and standard
input, `--debug` tracebacks, and offline messages that name the command line's remedy.
"""

import bz2
import gzip
import io
import lzma
import os
import runpy
import shutil
import sys

import h5py
import numpy as np
import pytest
import torch
import transformers

from tests._reference import make_reference_checkpoint, torch_outputs
from tf_esm import TFEsmForMaskedLM
from tf_esm.cli import main
from tf_esm.io.fasta import FastaError, read_fasta
from tf_esm.io import read_embeddings
from tf_esm.tokenization import EsmTokenizer, write_default_vocab

RECORDS = {"alpha": "MKTAYIAKQRQISFVKSH", "beta": "GSHMLEDPVAAL", "gamma/2": "WCYNQ"}
FASTA_TEXT = "".join(f">{record_id} a description\n{sequence}\n" for record_id, sequence in RECORDS.items())
ATOL = 2e-5  # measured: max abs diff of means/logits vs the reference ~1e-6


def _main(capsys, *args):
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _hub_style(directory, model_class="EsmForMaskedLM", **model_kwargs):
    """A tiny random reference model saved with its tokenizer, as the hub's checkpoints are."""
    directory = str(directory)
    reference = make_reference_checkpoint(directory, "rotary", model_class)
    if model_kwargs:  # e.g. add_pooling_layer=False: a constructor argument, not a config field
        torch.manual_seed(1)
        model = getattr(transformers, model_class)(reference.config, **model_kwargs).eval()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.2)
        shutil.rmtree(directory)
        model.save_pretrained(directory)
        reference.model = model
    vocab = write_default_vocab(os.path.join(os.path.dirname(directory), "vocab_source.txt"))
    transformers.EsmTokenizer(vocab).save_pretrained(directory)
    assert {"vocab.txt", "tokenizer_config.json"} <= set(os.listdir(directory))
    return reference


@pytest.fixture(scope="module")
def hub_mlm(tmp_path_factory):
    return _hub_style(tmp_path_factory.mktemp("hub") / "tiny_esm2")


def _reference_means(reference_model, tokenizer):
    """Mean over residues of the reference's last hidden state (after the final layer norm), per record."""
    means = {}
    for record_id, sequence in RECORDS.items():
        ids = np.asarray([tokenizer.encode(sequence)])
        hidden = torch_outputs(reference_model, ids, output_hidden_states=True).hidden_states[-1][0].numpy()
        means[record_id] = hidden[1:-1].mean(axis=0)
    return means


def _check_means(path, expected, layer=2):
    ids, means = read_embeddings(path, "mean", layer)
    assert sorted(ids) == sorted(expected)
    for record_id, mean in zip(ids, means):
        np.testing.assert_allclose(mean, expected[record_id], atol=ATOL)


# ------------------------------------------------------------------------------------------------------ convert


def test_convert_hub_style_directory_keeps_its_tokenizer_and_reproduces_the_logits(tmp_path, capsys, hub_mlm):
    source = tmp_path / "tiny_esm2"
    shutil.copytree(hub_mlm.path, source)
    ids = np.asarray([EsmTokenizer.from_pretrained(str(source)).encode("MKTAYIAK<mask>RQISFVK")])
    expected = torch_outputs(hub_mlm.model, ids).logits.numpy()

    converted = tmp_path / "converted"
    code, _, err = _main(capsys, "convert", source, converted)
    assert code == 0, err
    assert sorted(os.listdir(converted)) == ["config.json", "tf_esm_model.h5", "tokenizer_config.json", "vocab.txt"]
    for name in ("vocab.txt", "tokenizer_config.json"):  # carried over unchanged
        assert (converted / name).read_bytes() == (source / name).read_bytes()
    np.testing.assert_allclose(np.asarray(TFEsmForMaskedLM.from_pretrained(str(converted))(ids).logits), expected,
                               atol=ATOL)
    assert EsmTokenizer.from_pretrained(str(converted)).encode("MKTAYIAK<mask>RQ") == \
        transformers.EsmTokenizer.from_pretrained(str(source)).encode("MKTAYIAK<mask>RQ")
    assert sorted(os.listdir(source)) == ["config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]

    code, _, err = _main(capsys, "convert", source, converted, "--overwrite")  # replacing works too
    assert code == 0, err
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []  # no staging left behind

    # The conversion script is a thin wrapper over the same code.
    script = os.path.join(os.path.dirname(__file__), os.pardir, "conversion_scripts", "convert_esm_checkpoint.py")
    scripted = tmp_path / "scripted"
    argv = sys.argv
    sys.argv = [script, "--checkpoint", str(source), "--output", str(scripted)]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_request:
        assert not exit_request.code
    finally:
        sys.argv = argv
    np.testing.assert_allclose(np.asarray(TFEsmForMaskedLM.from_pretrained(str(scripted))(ids).logits), expected,
                               atol=ATOL)


def test_debug_prints_the_traceback_of_a_usage_error(tmp_path, capsys, hub_mlm):
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    code, _, err = _main(capsys, "convert", hub_mlm.path, target)
    assert code == 2 and "Traceback" not in err
    code, _, err = _main(capsys, "convert", hub_mlm.path, target, "--debug")
    assert code == 2
    assert "Traceback (most recent call last)" in err and "FileExistsError" in err, err
    assert err.rstrip().splitlines()[-1] == f"tf-esm: error: {target} exists and is not empty; pass --overwrite to " \
                                            "replace it."
    assert (target / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------------------- embed


@pytest.mark.parametrize("pooler", [False, True], ids=["saved_without_pooler", "saved_with_pooler"])
def test_embed_base_model_checkpoint_warns_nothing(tmp_path, capsys, pooler):
    reference = _hub_style(tmp_path / "base", "EsmModel", **({} if pooler else {"add_pooling_layer": False}))
    fasta = tmp_path / "proteins.fasta"
    fasta.write_text(FASTA_TEXT)
    code, _, err = _main(capsys, "embed", reference.path, fasta, tmp_path / "out.h5")
    assert code == 0, err
    assert "warning" not in err and "pooler" not in err, err
    _check_means(tmp_path / "out.h5", _reference_means(reference.model, EsmTokenizer.from_pretrained(reference.path)))


class _Stdin:
    def __init__(self, data):
        self.buffer = io.BytesIO(data)


def test_compressed_fasta_and_standard_input(tmp_path, capsys, monkeypatch, hub_mlm):
    expected = _reference_means(hub_mlm.model, EsmTokenizer.from_pretrained(hub_mlm.path))
    gzipped = tmp_path / "proteins.txt"  # gzip data under a name that does not say so: told by its magic bytes
    gzipped.write_bytes(gzip.compress(FASTA_TEXT.encode()))
    code, _, err = _main(capsys, "embed", hub_mlm.path, gzipped, tmp_path / "gz.h5")
    assert code == 0, err
    _check_means(tmp_path / "gz.h5", expected)

    monkeypatch.setattr(sys, "stdin", _Stdin(gzip.compress(FASTA_TEXT.encode())))  # zcat-less: gzip on stdin
    code, _, err = _main(capsys, "embed", hub_mlm.path, "-", tmp_path / "stdin.h5")
    assert code == 0, err
    _check_means(tmp_path / "stdin.h5", expected)

    monkeypatch.setattr(sys, "stdin", _Stdin(FASTA_TEXT.encode()))
    code, _, err = _main(capsys, "contacts", hub_mlm.path, "-", tmp_path / "contacts")
    assert code == 0, err
    ids = np.asarray([EsmTokenizer.from_pretrained(hub_mlm.path).encode(RECORDS["beta"])])
    with torch.no_grad():
        reference_contacts = hub_mlm.model.predict_contacts(torch.as_tensor(ids, dtype=torch.long),
                                                            torch.ones_like(torch.as_tensor(ids)))[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "contacts" / "beta.npy"), reference_contacts, atol=ATOL)

    from tf_esm.cli.fold import _fold_records  # fold reads FASTA the same way (its model is tested in test_cli.py)

    monkeypatch.setattr(sys, "stdin", _Stdin(bz2.compress(b">c\nGSH:WCY\n")))
    assert _fold_records("-") == [("c", "GSH:WCY")]


@pytest.mark.parametrize("compress", [lambda data: data, gzip.compress, bz2.compress, lzma.compress],
                         ids=["plain", "gzip", "bzip2", "xz"])
def test_read_fasta_decompresses_by_magic_bytes(tmp_path, compress):
    from tf_esm.pipelines.data import read_fasta_records

    path = tmp_path / "proteins.fa"
    path.write_bytes(compress(FASTA_TEXT.encode()))
    assert [(r.id, r.sequence) for r in read_fasta(path)] == list(RECORDS.items())
    assert list(read_fasta_records(path).sequences) == list(RECORDS.values())


def test_damaged_compressed_fasta_and_errors_on_stdin_are_named(tmp_path, monkeypatch):
    cut = tmp_path / "cut.fasta.gz"
    cut.write_bytes(gzip.compress(FASTA_TEXT.encode())[:20])
    with pytest.raises(FastaError, match=r"cut\.fasta\.gz: damaged or cut-short gzip data"):
        read_fasta(cut)
    monkeypatch.setattr(sys, "stdin", _Stdin(b">a\nMK1\n"))
    with pytest.raises(FastaError, match=r"<stdin>, record 'a': invalid character '1' at position 3"):
        read_fasta("-")


# ----------------------------------------------------------------------------------------------------- offline


def test_offline_hub_ids_say_what_to_pass_on_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fasta = tmp_path / "proteins.fasta"
    fasta.write_text(FASTA_TEXT)
    code, _, err = _main(capsys, "embed", "facebook/esm2_t6_8M_UR50D", fasta, tmp_path / "out.h5")
    assert code == 2
    assert err.count("\n") == 1 and "this machine is offline" in err
    assert "hf download facebook/esm2_t6_8M_UR50D --local-dir esm2_t6_8M_UR50D" in err
    assert "then pass ./esm2_t6_8M_UR50D as MODEL" in err and "from_pretrained" not in err

    code, _, err = _main(capsys, "fold", "facebook/esmfold_v1", fasta, tmp_path / "structures")
    assert code == 2
    assert "'facebook/esmfold_v1'" in err and "then pass ./esmfold_v1 as MODEL" in err
    assert "esm2_t6_8M" not in err
    assert not (tmp_path / "structures").exists()  # a failed fold leaves no empty output directory

    code, _, err = _main(capsys, "contacts", "facebook/esm2_t6_8M_UR50D", fasta, tmp_path / "contacts")
    assert code == 2 and not (tmp_path / "contacts").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    code, _, err = _main(capsys, "contacts", "facebook/esm2_t6_8M_UR50D", fasta, existing)
    assert code == 2 and existing.is_dir()  # only directories the run created are removed

    with pytest.raises(OSError, match=r"from_pretrained\('/path/to/esmfold_v1'\)"):  # Python users: Python's terms
        TFEsmForMaskedLM.from_pretrained("facebook/esmfold_v1")


# --------------------------------------------------------------------------------------------- what a run prints


def test_a_run_prints_one_summary_line_and_scripts_can_start_tensorflow_quietly(tmp_path, hub_mlm):
    import subprocess

    fasta = tmp_path / "proteins.fasta.gz"
    fasta.write_bytes(gzip.compress(FASTA_TEXT.encode()))
    command = os.path.join(os.path.dirname(sys.executable), "tf-esm")
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    run = subprocess.run([command, "embed", hub_mlm.path, str(fasta), str(tmp_path / "out.h5")], env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [f"tf-esm: embedded 3 records into {tmp_path / 'out.h5'}."]

    script = ("import tf_esm; tf_esm.import_tensorflow_quietly()\n"
              "import tensorflow as tf; print(int(tf.constant(1) + 1))\n")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0 and run.stdout == "2\n" and run.stderr == "", run.stderr
