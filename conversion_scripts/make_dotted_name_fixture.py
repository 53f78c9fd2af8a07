"""Write `tests/fixtures/dotted_layer_names/`: a tiny model directory and LoRA adapter saved by a tf_esm whose Keras
layers were named with the reference's '.' (`encoder/layer.0/...`, before 2026-12), which tests/test_weights.py
loads with the current names (`encoder/layer-0/...`).

The committed files were written by tf_esm at commit 375da9f (the last with the dotted names), with:

    PYTHONPATH=<that checkout> python conversion_scripts/make_dotted_name_fixture.py tests/fixtures/dotted_layer_names

The weights are those of a perturbed tiny transformers `EsmForSequenceClassification` (tests/_reference.py); the
adapter has random (non-zero) LoRA matrices on the query and value projections, rank 2.
"""

import os
import sys
import tempfile

import numpy as np


def main(output):
    sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))  # after PYTHONPATH
    from tests._reference import make_reference_checkpoint
    from tf_esm import TFEsmForSequenceClassification

    with tempfile.TemporaryDirectory() as scratch:
        reference = make_reference_checkpoint(scratch, "rotary", "EsmForSequenceClassification", num_labels=3)
        model = TFEsmForSequenceClassification.from_pretrained(reference.path, strict=True)
    model.save_pretrained(output)  # config.json, tf_esm_model.h5 (reference names), no vocab for a bare config
    model.enable_lora(rank=2, lora_alpha=4)
    rng = np.random.default_rng(7)
    for variable in model.weights:
        if variable.path.rsplit("/", 1)[-1] in ("lora_kernel_a", "lora_kernel_b"):
            variable.assign(rng.normal(scale=0.3, size=variable.shape).astype("float32"))
    model.save_lora_weights(os.path.join(output, "adapter.safetensors"))
    print("paths:", sorted(variable.path for variable in model.weights if "lora" in variable.path)[:2])


if __name__ == "__main__":
    main(sys.argv[1])
