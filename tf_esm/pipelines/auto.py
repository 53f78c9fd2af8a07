"""Which model class a checkpoint means, in one place (as transformers' Auto classes): used by conversion, export
and the `tf-esm` command."""

from __future__ import annotations

import os

from tf_esm.configuration import load_config
from tf_esm.modeling.esmc_models import (
    TFEsmcForMaskedLM,
    TFEsmcForSequenceClassification,
    TFEsmcForTokenClassification,
    TFEsmcModel,
)
from tf_esm.modeling.models import (
    TFEsmForMaskedLM,
    TFEsmForSequenceClassification,
    TFEsmForTokenClassification,
    TFEsmModel,
)

# Architectures named in an HF `config.json` -> the class that loads them.
ARCHITECTURES = {
    "EsmModel": TFEsmModel,
    "EsmForMaskedLM": TFEsmForMaskedLM,
    "EsmForSequenceClassification": TFEsmForSequenceClassification,
    "EsmForTokenClassification": TFEsmForTokenClassification,
    "EsmcModel": TFEsmcModel,
    "EsmcForMaskedLM": TFEsmcForMaskedLM,
    "EsmcForSequenceClassification": TFEsmcForSequenceClassification,
    "EsmcForTokenClassification": TFEsmcForTokenClassification,
}
# The class for a configuration whose `architectures` names none of ours, by model family.
BASE_CLASSES = {"esm": TFEsmModel, "esmc": TFEsmcModel}
MODEL_CLASSES = tuple(ARCHITECTURES.values())


def architecture_class(config):
    """The model class `config.architectures` names (the family's base model, `TFEsmModel` or `TFEsmcModel`, when
    it names none of ours)."""
    names = [name.removeprefix("TF") for name in (getattr(config, "architectures", None) or [])]
    base = BASE_CLASSES.get(getattr(config, "model_type", "esm"), TFEsmModel)
    found = next((ARCHITECTURES[name] for name in names if name in ARCHITECTURES), base)
    return found if found.config_class is base.config_class else base


def state_dict_class(state_dict):
    """The model class whose heads a reference-named state dict holds (for directories without `architectures`)."""
    names = set(state_dict)
    if any(n.startswith("esmc.") or n.startswith("layers.") for n in names):
        if any(n.startswith("lm_head.") for n in names):
            return TFEsmcForMaskedLM
        if any(n.startswith("classifier.") for n in names):
            return TFEsmcForSequenceClassification
        if any(n.startswith("score.") for n in names):
            return TFEsmcForTokenClassification
        return TFEsmcModel
    if any(n.startswith("lm_head.") for n in names):
        return TFEsmForMaskedLM
    if any(n.startswith("classifier.out_proj.") for n in names):
        return TFEsmForSequenceClassification
    if any(n.startswith("classifier.") for n in names):
        return TFEsmForTokenClassification
    return TFEsmModel


def reference_class(reference):
    """The class for a model directory, hub id, fair-esm `.pt` file or `esm`-package ESM C `.pth` file (both are
    masked LMs)."""
    reference = os.fspath(reference)
    if reference.endswith(".pt") and os.path.isfile(reference):
        return TFEsmForMaskedLM
    if reference.endswith(".pth") and os.path.isfile(reference):
        return TFEsmcForMaskedLM
    return architecture_class(load_config(reference))


def load_pretrained_model(reference, model_class=None, **kwargs):
    """Load a model directory, hub id, fair-esm `.pt` or esm-package `.pth` file with `model_class`, or the class `reference_class`
    chooses; `kwargs` go to `from_pretrained`."""
    if model_class is None:
        model_class = reference_class(reference)
    return model_class.from_pretrained(reference, **kwargs)
