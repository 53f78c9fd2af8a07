"""The README's quick-start and fine-tuning code blocks run as written (on a tiny local model, not the hub)."""

import os
import re

import pytest

from tf_esm.tokenization import write_default_vocab

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
HUB_ID = '"facebook/esm2_t6_8M_UR50D"'


def python_blocks():
    with open(README, encoding="utf-8") as handle:
        return re.findall(r"```python\n(.*?)```", handle.read(), re.S)


@pytest.mark.parametrize("index", [0, 1])
def test_readme_block_runs(index, reference_checkpoints, tmp_path, monkeypatch):
    block = python_blocks()[index]
    assert HUB_ID in block
    model_dir = reference_checkpoints("rotary").path
    write_default_vocab(os.path.join(model_dir, "vocab.txt"))
    (tmp_path / "train.csv").write_text(
        "sequence,label\n" + "\n".join(f"{'K' * (5 + i % 7)}MA,{i % 2}" for i in range(24)))
    monkeypatch.chdir(tmp_path)
    code = block.replace(HUB_ID, repr(model_dir)).replace("epochs=3", "epochs=1")
    exec(compile(code, f"README.md python block {index}", "exec"), {})
