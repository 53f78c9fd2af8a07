"""The ESM encoder family in Keras 3."""

from tf_esm.modeling.encoder import TFEsmMainLayer
from tf_esm.modeling.models import (
    TFEsmForMaskedLM,
    TFEsmForSequenceClassification,
    TFEsmForTokenClassification,
    TFEsmModel,
    TFEsmPreTrainedModel,
)

__all__ = [
    "TFEsmForMaskedLM",
    "TFEsmForSequenceClassification",
    "TFEsmForTokenClassification",
    "TFEsmMainLayer",
    "TFEsmModel",
    "TFEsmPreTrainedModel",
]
