"""tf_esm: ESM-2, ESM-1b, ESM-1v, ESM C and ESMFold as native Keras 3 models.

The public names are imported lazily, so `import tf_esm` (and the `tf-esm` command's start-up) does not load
TensorFlow until a model or tokenizer is first used.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "EsmConfig": "tf_esm.configuration",
    "EsmcConfig": "tf_esm.configuration",
    "EsmcTokenizer": "tf_esm.tokenization",
    "TFEsmcMainLayer": "tf_esm.modeling",
    "TFEsmcPreTrainedModel": "tf_esm.modeling",
    "TFEsmcModel": "tf_esm.modeling",
    "TFEsmcForMaskedLM": "tf_esm.modeling",
    "TFEsmcForSequenceClassification": "tf_esm.modeling",
    "TFEsmcForTokenClassification": "tf_esm.modeling",
    "EsmFoldConfig": "tf_esm.configuration",
    "StructureModuleConfig": "tf_esm.configuration",
    "TrunkConfig": "tf_esm.configuration",
    "EsmTokenizer": "tf_esm.tokenization",
    "EsmStringTokenizer": "tf_esm.graph_tokenizer",
    "TFEsmMainLayer": "tf_esm.modeling",
    "TFEsmPreTrainedModel": "tf_esm.modeling",
    "TFEsmModel": "tf_esm.modeling",
    "TFEsmForMaskedLM": "tf_esm.modeling",
    "TFEsmForSequenceClassification": "tf_esm.modeling",
    "TFEsmForTokenClassification": "tf_esm.modeling",
    "TFEsmForProteinFolding": "tf_esm.folding",
    "embed_sequences": "tf_esm.pipelines.inference",
    "import_tensorflow_quietly": "tf_esm.startup",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tf_esm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
