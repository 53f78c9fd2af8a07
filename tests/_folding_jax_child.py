"""Run by tests/test_folding_jax.py in a child process with KERAS_BACKEND=jax (Keras picks its backend at
import): folds with the compiled JAX path and saves positions, pTM and trace counts for the parent to check
against PyTorch. TensorFlow imports are blocked and recorded before anything else is imported.

    python tests/_folding_jax_child.py CHECKPOINT_DIR OUT.npz
"""

import os
import sys

ATTEMPTED_TF_IMPORTS = []


class _BlockTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            ATTEMPTED_TF_IMPORTS.append(name)
            raise ImportError(f"{name} is blocked: ESMFold under KERAS_BACKEND=jax must not import TensorFlow")
        return None


# (name, sequence, infer keyword arguments); lengths 10 and 13 share bucket 16, 18 is in bucket 32.
CASES = (
    ("short", "GSHMLEDPVX", {}),
    ("same_bucket", "MKTAYIAKQRQIS", {}),
    ("no_recycles", "MKTAYIAKQRQIS", {"num_recycles": 0}),
    ("next_bucket", "MKTAYIAKQRQISFVKSH", {}),
    ("chunked", "MKTAYIAKQRQIS", {"chunk_size": 4}),
)


def main(directory, out):
    sys.meta_path.insert(0, _BlockTensorFlow())
    os.environ["KERAS_BACKEND"] = "jax"
    import keras
    import numpy as np

    from tf_esm.folding import TFEsmForProteinFolding

    assert keras.backend.backend() == "jax", keras.backend.backend()
    model = TFEsmForProteinFolding.from_pretrained(directory, strict=True)
    results = {}
    for name, sequence, kwargs in CASES:
        output = model.infer(sequence, **kwargs)
        results[f"{name}_positions"] = np.asarray(output["positions"])
        results[f"{name}_ptm"] = np.asarray(output["ptm"])
        results[f"{name}_plddt"] = np.asarray(output["plddt"])
        results[f"{name}_traces"] = np.asarray(model.inference_trace_count)
    results["tensorflow_imported"] = np.asarray("tensorflow" in sys.modules)
    results["attempted_tf_imports"] = np.asarray(ATTEMPTED_TF_IMPORTS, dtype=str)
    np.savez(out, **results)


if __name__ == "__main__":
    main(*sys.argv[1:3])
