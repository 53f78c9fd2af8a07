"""The README's quick-start and fine-tuning code blocks run as written (on a tiny local model, not the hub)."""

import os
import re
import shutil

import pytest

from tf_esm.tokenization import write_default_vocab

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
HUB_ID = '"facebook/esm2_t6_8M_UR50D"'
HUB_ID_650M = '"facebook/esm2_t33_650M_UR50D"'  # the fine-tuning guide's model: the same tiny one stands in
ESMC_HUB_ID = '"biohub/ESMC-300M"'


def python_blocks():
    with open(README, encoding="utf-8") as handle:
        return re.findall(r"```python\n(.*?)```", handle.read(), re.S)


# Blocks that need what a test cannot have: the full ESMFold checkpoint, a model directory named by the reader.
NOT_RUN = ("facebook/esmfold_v1", "path/to/model_dir")
RUNNABLE = [index for index, block in enumerate(python_blocks()) if not any(text in block for text in NOT_RUN)]


def test_the_runnable_blocks_are_the_ones_expected():
    assert len(RUNNABLE) == 10 and len(python_blocks()) == 12  # update both when README's blocks change


@pytest.mark.parametrize("index", RUNNABLE)
def test_readme_block_runs(index, reference_checkpoints, tmp_path, monkeypatch):
    block = python_blocks()[index]
    # A copy with a vocab.txt, as hub model directories have: the session's checkpoint is shared, never written to.
    model_dir = str(tmp_path / "esm_tiny")
    shutil.copytree(reference_checkpoints("rotary").path, model_dir)
    write_default_vocab(os.path.join(model_dir, "vocab.txt"))
    (tmp_path / "train.csv").write_text(
        "sequence,label\n" + "\n".join(f"{'K' * (5 + i % 7)}MA,{i % 2}" for i in range(24)))
    monkeypatch.chdir(tmp_path)
    code = block.replace(HUB_ID, repr(model_dir)).replace(HUB_ID_650M, repr(model_dir))
    code = code.replace("epochs=3", "epochs=1")
    if ESMC_HUB_ID in code:  # the ESM C section's block: a tiny ESM C directory saved with its tokenizer
        from tests._reference import make_esmc_reference_checkpoint

        esmc_dir = str(tmp_path / "esmc_tiny")
        make_esmc_reference_checkpoint(esmc_dir, "EsmcModel")
        code = code.replace(ESMC_HUB_ID, repr(esmc_dir))
    exec(compile(code, f"README.md python block {index}", "exec"), {})
