"""tf_esm: ESM-2, ESM-1b, ESM-1v and ESMFold as native Keras 3 / TensorFlow models."""

from tf_esm.configuration import EsmConfig, EsmFoldConfig, StructureModuleConfig, TrunkConfig
from tf_esm.folding import TFEsmForProteinFolding
from tf_esm.tokenization import EsmTokenizer
from tf_esm.modeling import (
    TFEsmForMaskedLM,
    TFEsmForSequenceClassification,
    TFEsmForTokenClassification,
    TFEsmMainLayer,
    TFEsmModel,
    TFEsmPreTrainedModel,
)

__version__ = "0.1.0"

__all__ = [
    "EsmConfig",
    "EsmFoldConfig",
    "EsmTokenizer",
    "StructureModuleConfig",
    "TFEsmForMaskedLM",
    "TFEsmForProteinFolding",
    "TFEsmForSequenceClassification",
    "TFEsmForTokenClassification",
    "TFEsmMainLayer",
    "TFEsmModel",
    "TFEsmPreTrainedModel",
    "TrunkConfig",
]
