"""The ESM encoder family in Keras 3."""

from tf_esm.modeling.encoder import TFEsmMainLayer
from tf_esm.modeling.esmc import TFEsmcMainLayer
from tf_esm.modeling.esmc_models import (
    TFEsmcForMaskedLM,
    TFEsmcForSequenceClassification,
    TFEsmcForTokenClassification,
    TFEsmcModel,
    TFEsmcPreTrainedModel,
)
from tf_esm.modeling.models import (
    TFEsmForMaskedLM,
    TFEsmForSequenceClassification,
    TFEsmForTokenClassification,
    TFEsmModel,
    TFEsmPreTrainedModel,
)

__all__ = [
    "TFEsmcForMaskedLM",
    "TFEsmcForSequenceClassification",
    "TFEsmcForTokenClassification",
    "TFEsmcMainLayer",
    "TFEsmcModel",
    "TFEsmcPreTrainedModel",
    "TFEsmForMaskedLM",
    "TFEsmForSequenceClassification",
    "TFEsmForTokenClassification",
    "TFEsmMainLayer",
    "TFEsmModel",
    "TFEsmPreTrainedModel",
]
