"""The training examples, run as scripts on a tiny random-weight checkpoint and the toy data in examples/data."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from tests._reference import assert_close, share_directory, torch_outputs
from tf_esm import TFEsmForMaskedLM, TFEsmForSequenceClassification, TFEsmForTokenClassification
from tf_esm.pipelines.data import make_dataset, read_table
from tf_esm.tokenization import write_default_vocab

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
EXAMPLES = os.path.join(ROOT, "examples")
DATA = os.path.join(EXAMPLES, "data")


def run_example(name, *args):
    process = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *map(str, args)], capture_output=True,
                             text=True, timeout=300, cwd=ROOT)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def pretrained(reference_checkpoints, tmp_path_factory):
    """The shared tiny ESM-2-style masked-LM checkpoint with a vocab.txt, as hub model directories have."""
    directory = tmp_path_factory.mktemp("example_model") / "esm_tiny"
    shutil.copytree(reference_checkpoints("rotary", "EsmForMaskedLM").path, directory)
    write_default_vocab(directory)
    return str(share_directory(directory))


def accuracy_of(model, table, **columns):
    """A reloaded model's accuracy on the table, batched as the examples batch their validation data."""
    model.compile(metrics=["accuracy"], jit_compile=False)
    dataset = make_dataset(read_table(table, **columns), batch_size=8)
    assert dataset.options().autotune.enabled is False  # no stall when Keras drops an epoch's iterator
    return model.evaluate(dataset, verbose=0, return_dict=True)["accuracy"]


def test_fine_tune_sequence_classification(pretrained, tmp_path):
    table = os.path.join(DATA, "classification_toy.csv")
    output = tmp_path / "classifier"
    summary = run_example("fine_tune_sequence_classification.py", "--model", pretrained, "--train", table,
                          "--validation", table, "--output-dir", output, "--epochs", 3, "--learning-rate", 3e-3)
    assert summary["problem_type"] == "single_label_classification"
    losses = summary["history"]["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert summary["validation"]["accuracy"] > 0.9  # K/R-rich vs D/E-rich: chance is 0.5

    model = TFEsmForSequenceClassification.from_pretrained(output)
    assert model.config.id2label == {0: "acidic", 1: "basic"}
    assert accuracy_of(model, table) == pytest.approx(summary["validation"]["accuracy"])


def test_fine_tune_token_classification_with_lora(pretrained, tmp_path):
    table = os.path.join(DATA, "token_classification_toy.csv")
    output = tmp_path / "token_classifier"
    summary = run_example("fine_tune_token_classification.py", "--model", pretrained, "--train", table,
                          "--validation", table, "--output-dir", output, "--epochs", 4, "--learning-rate", 1e-2,
                          "--lora-rank", 4, "--format", "safetensors")
    assert summary["label_names"] == ["a", "b", "n"]
    losses = summary["history"]["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert summary["validation"]["accuracy"] > 0.8  # majority class (n): about 0.45
    assert (output / "lora_adapter.safetensors").is_file()

    # The saved (LoRA-merged) checkpoint is the trained model, in tf_esm and in PyTorch transformers alike.
    model = TFEsmForTokenClassification.from_pretrained(output)
    columns = dict(label_column="labels", task="token")
    assert accuracy_of(model, table, **columns) == pytest.approx(summary["validation"]["accuracy"])
    reference = transformers.EsmForTokenClassification.from_pretrained(str(output)).eval()
    inputs, _ = next(iter(make_dataset(read_table(table, **columns), batch_size=8, bucket_boundaries=None)))
    expected = torch_outputs(reference, inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()).logits
    assert_close(model(inputs).logits.numpy(), expected, 1e-4, "logits of the saved LoRA-merged model")


def masked_toy_batch(tokenizer, fasta, probability=0.15, seed=0):
    """The FASTA's proteins as one padded batch with ~15% of the residues replaced by <mask> (at least one per
    sequence), tokenized by transformers' tokenizer; labels: the original ids there, -100 elsewhere."""
    sequences = []
    with open(fasta, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith(">"):
                sequences.append("")
            elif line and not line.startswith(";"):
                sequences[-1] += line
    encoded = tokenizer(sequences, padding=True, return_tensors="np")
    input_ids, attention_mask = encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
    rng = np.random.default_rng(seed)
    labels = np.full_like(input_ids, -100)
    for row, sequence in enumerate(sequences):
        count = max(1, round(probability * len(sequence)))
        positions = 1 + rng.choice(len(sequence), size=count, replace=False)  # residues only, after <cls>
        labels[row, positions] = input_ids[row, positions]
        input_ids[row, positions] = tokenizer.mask_token_id
    return input_ids, attention_mask, labels


def test_continue_pretraining_mlm(pretrained, reference_checkpoints, tmp_path):
    fasta = os.path.join(DATA, "mlm_toy.fasta")
    output = tmp_path / "continued"
    summary = run_example("continue_pretraining_mlm.py", "--model", pretrained, "--train", fasta,
                          "--validation", fasta, "--output-dir", output, "--epochs", 6, "--learning-rate", 3e-3,
                          "--format", "safetensors")
    losses = summary["history"]["loss"]
    assert losses[-1] < 0.75 * losses[0]
    assert np.isfinite(summary["validation"]["perplexity"])
    assert summary["validation"]["perplexity"] == pytest.approx(np.exp(summary["validation"]["loss"]), rel=1e-6)
    assert summary["validation"]["accuracy"] > 0.15  # chance: 1/20

    # The saved model, read by tf_esm and by PyTorch transformers: the same logits and loss on a masked batch.
    model = TFEsmForMaskedLM.from_pretrained(output)
    continued = transformers.EsmForMaskedLM.from_pretrained(str(output), attn_implementation="eager").eval()
    input_ids, attention_mask, labels = masked_toy_batch(transformers.EsmTokenizer.from_pretrained(pretrained),
                                                         fasta)
    expected = torch_outputs(continued, input_ids, attention_mask, labels=torch.as_tensor(labels))
    ours = model(input_ids.astype(np.int32), attention_mask=attention_mask.astype(np.int32), labels=labels)
    assert_close(ours.logits, expected.logits, 2e-5, "logits of the saved model")  # measured 2.6e-6
    assert_close(ours.loss, expected.loss, 2e-6, "loss of the saved model")  # measured 2.4e-7
    # Training learned the toy repeats: by PyTorch's count, the masked-token loss is well below the starting one.
    initial = torch_outputs(reference_checkpoints("rotary", "EsmForMaskedLM").model, input_ids, attention_mask,
                            labels=torch.as_tensor(labels))
    assert float(expected.loss) < 0.75 * float(initial.loss), (float(expected.loss), float(initial.loss))
