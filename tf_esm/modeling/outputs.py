"""Named model outputs with attribute and key access, like HF's `ModelOutput`."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any


class ModelOutput(OrderedDict):
    """An ordered mapping of the outputs that are not None; `out.logits`, `out["logits"]` and `out[0]` all work.

    Subclasses are dataclasses whose fields name the outputs in order.
    """

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                super().__setitem__(field.name, value)

    def __getitem__(self, key):
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        object.__setattr__(self, key, value)

    def __setattr__(self, name, value):
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        object.__setattr__(self, name, value)

    def to_tuple(self):
        return tuple(self[k] for k in self.keys())

    def __reduce__(self):  # keep pickling/copying simple: as a plain dict of fields
        return (type(self), tuple(getattr(self, f.name) for f in fields(self)))


@dataclass(repr=False, eq=False)
class TFBaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    last_hidden_state: Any = None
    pooler_output: Any = None
    past_key_values: Any = None
    hidden_states: Any = None
    attentions: Any = None
    cross_attentions: Any = None


@dataclass(repr=False, eq=False)
class TFMaskedLMOutput(ModelOutput):
    loss: Any = None
    logits: Any = None
    hidden_states: Any = None
    attentions: Any = None


@dataclass(repr=False, eq=False)
class TFSequenceClassifierOutput(ModelOutput):
    loss: Any = None
    logits: Any = None
    hidden_states: Any = None
    attentions: Any = None


@dataclass(repr=False, eq=False)
class TFTokenClassifierOutput(ModelOutput):
    loss: Any = None
    logits: Any = None
    hidden_states: Any = None
    attentions: Any = None
