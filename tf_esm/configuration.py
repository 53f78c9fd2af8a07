"""Configuration objects: `EsmConfig` and the ESMFold sub-configurations.

They read and write HuggingFace `config.json` files. Keys a config does not know are kept as attributes and
written back unchanged, so a round trip through tf_esm never loses information.
"""

from __future__ import annotations

import copy
import json
import os

from tf_esm.storage.atomic import write_text_atomic

CONFIG_NAME = "config.json"
# The label value the losses skip (torch's CrossEntropyLoss default): special tokens, padding, unmasked positions.
IGNORE_INDEX = -100

POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query", "rotary")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
# How attention is computed (transformers' names): "sdpa", the backend's fused `keras.ops.dot_product_attention`
# (flash/cuDNN kernels on GPUs) whenever no attention weights are asked for; "eager", always the explicit
# matmul -> softmax -> matmul of the reference's eager attention; None (the default), "sdpa" where it applies, as
# transformers reads None (so a saved config.json leaves transformers its own choice: its ESMFold has no SDPA).
ATTN_IMPLEMENTATIONS = (None, "sdpa", "eager")

# The ESM-2 vocabulary, in id order (what fair-esm's "ESM-1b" alphabet and every HF ESM checkpoint use).
ESM2_VOCAB = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)


def check_overrides(config, overrides, where, other_arguments=()):
    """A TypeError naming every key of `overrides` that is not a setting of `config` (its class's defaults, the
    label settings, or a key its file holds), so a misspelt keyword argument is not silently kept as a new
    setting and written into `config.json`. `other_arguments`: the other keywords `where` accepts."""
    import difflib

    known = set(type(config).defaults) | set(vars(config)) | {"num_labels", "id2label", "label2id"}
    unknown = [name for name in overrides if name not in known]
    if not unknown:
        return
    accepted = sorted(other_arguments)
    hints = []
    for name in unknown:
        # The caller's own arguments first: `stem_dtype` means `stem_precision` more often than a config's `dtype`.
        close = (difflib.get_close_matches(name, accepted, n=1, cutoff=0.5)
                 or difflib.get_close_matches(name, sorted(known), n=1))
        if close:
            hints.append(f"{name!r} (did you mean {close[0]!r}?)")
        else:
            hints.append(repr(name))
    listed = f"{', '.join(accepted)}, or " if accepted else ""
    raise TypeError(f"{where}() got unexpected keyword argument(s) {', '.join(hints)}. It takes "
                    f"{listed}a setting of {type(config).__name__} to override (one of: "
                    f"{', '.join(sorted(name for name in known if not name.startswith('_')))}).")


class _Config:
    """A bag of named settings with defaults; unknown keys are kept and written back."""

    defaults: dict = {}
    sub_configs: dict = {}

    def __init__(self, **kwargs):
        for name, default in self.defaults.items():
            setattr(self, name, copy.deepcopy(default))
        for name, value in kwargs.items():
            setattr(self, name, value)
        for name, cls in self.sub_configs.items():
            value = getattr(self, name, None)
            if isinstance(value, dict):
                setattr(self, name, cls(**value))
        self.validate()

    def validate(self):
        pass

    def to_dict(self):
        """All settings (known and unknown) as a JSON-serialisable dict."""
        out = {}
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(value, _Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = copy.deepcopy(value)
        return out

    def to_json_string(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, config_dict, **overrides):
        merged = dict(config_dict)
        merged.update(overrides)
        return cls(**merged)

    def __eq__(self, other):
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"{type(self).__name__} {self.to_json_string()}"


class StructureModuleConfig(_Config):
    """Settings of ESMFold's structure module (invariant point attention, angle resnet, backbone updates)."""

    defaults = dict(
        sequence_dim=384, pairwise_dim=128, ipa_dim=16, resnet_dim=128, num_heads_ipa=12, num_qk_points=4,
        num_v_points=8, dropout_rate=0.1, num_blocks=8, num_transition_layers=1, num_resnet_blocks=2,
        num_angles=7, trans_scale_factor=10, epsilon=1e-8, inf=1e5,
    )


class TrunkConfig(_Config):
    """Settings of ESMFold's folding trunk (the triangular pair stack and its recycling)."""

    defaults = dict(
        num_blocks=48, sequence_state_dim=1024, pairwise_state_dim=128, sequence_head_width=32,
        pairwise_head_width=32, position_bins=32, dropout=0.0, layer_drop=0.0, cpu_grad_checkpoint=False,
        max_recycles=4, chunk_size=128, structure_module=None,
    )
    sub_configs = {"structure_module": StructureModuleConfig}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.structure_module is None:
            self.structure_module = StructureModuleConfig()

    def validate(self):
        for dim_name, width_name in (("sequence_state_dim", "sequence_head_width"),
                                     ("pairwise_state_dim", "pairwise_head_width")):
            dim, width = getattr(self, dim_name), getattr(self, width_name)
            if dim % width != 0:
                raise ValueError(f"TrunkConfig: {dim_name}={dim} is not a multiple of {width_name}={width}.")
        if self.pairwise_state_dim % 2 != 0:
            raise ValueError(f"TrunkConfig: pairwise_state_dim={self.pairwise_state_dim} must be even.")
        if self.max_recycles < 0:
            raise ValueError(f"TrunkConfig: max_recycles={self.max_recycles} must be >= 0.")


class EsmFoldConfig(_Config):
    """Settings of ESMFold around its ESM-2 stem."""

    defaults = dict(
        esm_type=None, fp16_esm=True, use_esm_attn_map=False, esm_ablate_pairwise=False,
        esm_ablate_sequence=False, esm_input_dropout=0.0, embed_aa=True, bypass_lm=False,
        lddt_head_hid_dim=128, trunk=None,
    )
    sub_configs = {"trunk": TrunkConfig}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.trunk is None:
            self.trunk = TrunkConfig()


class _LabelledConfig(_Config):
    """A model configuration with the task-head settings transformers' configs share: `num_labels`, `id2label`,
    `label2id` (derived from id2label), `problem_type`."""

    model_type = None

    def __init__(self, **kwargs):
        num_labels = kwargs.pop("num_labels", None)
        id2label = kwargs.pop("id2label", None)
        kwargs.pop("label2id", None)  # derived from id2label
        kwargs.setdefault("model_type", self.model_type)
        super().__init__(**kwargs)
        if id2label is not None:
            self.id2label = {int(k): v for k, v in id2label.items()}
        else:
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels if num_labels is not None else 2)}
        if num_labels is not None and num_labels != len(self.id2label):
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}

    @property
    def num_labels(self):
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value):
        if value != len(self.id2label):
            self.id2label = {i: f"LABEL_{i}" for i in range(value)}

    @property
    def label2id(self):
        mapping = {}
        for i, label in sorted(self.id2label.items()):
            mapping.setdefault(label, i)  # a repeated label name maps to its first id
        return mapping

    def to_dict(self):
        out = super().to_dict()
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = self.label2id
        return out

    @classmethod
    def from_json_file(cls, path):
        with open(path, encoding="utf-8") as handle:
            try:
                config_dict = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON: {error}") from None
        return cls.from_dict(config_dict)

    @classmethod
    def from_pretrained(cls, path_or_hub_id, **overrides):
        """Read `config.json` from a local directory, a file path, or a hub id (downloaded when online);
        `overrides` replace settings of it (a name that is not one is a TypeError)."""
        from tf_esm.storage.hub import resolve_file

        path = resolve_file(path_or_hub_id, CONFIG_NAME)
        config = cls.from_json_file(path)
        check_overrides(config, overrides, f"{cls.__name__}.from_pretrained")
        for name, value in overrides.items():
            setattr(config, name, value)
        config.validate()
        return config

    def save_pretrained(self, save_directory):
        os.makedirs(save_directory, exist_ok=True)
        write_text_atomic(os.path.join(save_directory, CONFIG_NAME), self.to_json_string())


class EsmConfig(_LabelledConfig):
    """Configuration of an ESM model, compatible with HuggingFace's `config.json` for `model_type="esm"`.

    Every argument of HF's `EsmConfig` is accepted with HF's default. Keys this class does not know are kept
    and written back by `save_pretrained`.

    Args:
        vocab_size: Number of tokens (33 for every public ESM model).
        mask_token_id: Id of `<mask>`; needed for token-dropout scaling.
        pad_token_id: Id of `<pad>`; positions of absolute embeddings start after it.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: Transformer shape.
        hidden_dropout_prob, attention_probs_dropout_prob: Dropout rates used in training.
        max_position_embeddings: Size of the learned position table (absolute embeddings).
        initializer_range: Standard deviation of the normal initialiser for new weights.
        layer_norm_eps: Epsilon of every layer norm.
        position_embedding_type: One of "absolute", "relative_key", "relative_key_query", "rotary".
        is_decoder, add_cross_attention, use_cache: Decoder mode with cross-attention and a key/value cache.
        emb_layer_norm_before: Layer norm right after the embeddings (ESM-1b style).
        token_dropout: Zero `<mask>` embeddings and rescale the rest (ESM-2 style).
        vocab_list: The vocabulary (folding models).
        is_folding_model, esmfold_config: ESMFold settings.
        num_labels, id2label, label2id, problem_type: Task-head settings.
        gradient_checkpointing: Recompute each encoder layer in the backward pass of training (less activation
            memory, one more forward pass per step); `model.gradient_checkpointing_enable()` sets it.
        attn_implementation: None (default) or "sdpa": the backend's fused `keras.ops.dot_product_attention`
            whenever no attention weights, head mask, relative positions or attention dropout are involved
            (flash/cuDNN on GPUs; on CPUs the same numbers as "eager" to float32 rounding); "eager": always the
            explicit matmul -> softmax -> matmul.

    Examples:

    ```python
    >>> from tf_esm import EsmConfig
    >>> config = EsmConfig(vocab_size=33, hidden_size=320, num_hidden_layers=6, num_attention_heads=20,
    ...                    intermediate_size=1280, position_embedding_type="rotary", token_dropout=True,
    ...                    pad_token_id=1, mask_token_id=32)
    >>> config.hidden_size // config.num_attention_heads
    16
    ```
    """

    model_type = "esm"
    defaults = dict(
        vocab_size=None, mask_token_id=None, pad_token_id=None, hidden_size=768, num_hidden_layers=12,
        num_attention_heads=12, intermediate_size=3072, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        max_position_embeddings=1026, rope_theta=10000.0, initializer_range=0.02, layer_norm_eps=1e-12,
        position_embedding_type="absolute", use_cache=True, emb_layer_norm_before=None, token_dropout=False,
        is_folding_model=False, esmfold_config=None, vocab_list=None, is_decoder=False, add_cross_attention=False,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=2, problem_type=None,
        gradient_checkpointing=False, attn_implementation=None,
    )
    sub_configs = {"esmfold_config": EsmFoldConfig}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.is_folding_model:
            if self.esmfold_config is None:
                self.esmfold_config = EsmFoldConfig()
            if self.vocab_list is None:
                self.vocab_list = list(ESM2_VOCAB)

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    def default_max_length(self):
        """The longest input (tokens) the position table allows for absolute positions, else `None` (rotary)."""
        if self.position_embedding_type != "absolute":
            return None
        padding_idx = self.pad_token_id if self.pad_token_id is not None else 1
        return self.max_position_embeddings - padding_idx - 1

    def validate(self):
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"EsmConfig: hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"EsmConfig: unknown position_embedding_type {self.position_embedding_type!r}; "
                f"expected one of {', '.join(POSITION_EMBEDDING_TYPES)}."
            )
        if self.position_embedding_type == "rotary" and self.head_dim % 2 != 0:
            raise ValueError(f"EsmConfig: rotary embeddings need an even head size, got {self.head_dim}.")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"EsmConfig: unknown problem_type {self.problem_type!r}; expected one of {', '.join(PROBLEM_TYPES)}."
            )
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"EsmConfig: unknown attn_implementation {self.attn_implementation!r}; expected "
                             "None, 'sdpa' or 'eager'.")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"EsmConfig: gradient_checkpointing must be True or False, got "
                             f"{self.gradient_checkpointing!r}.")
        if self.add_cross_attention and not self.is_decoder:
            raise ValueError("EsmConfig: add_cross_attention=True needs is_decoder=True.")
        for name in ("vocab_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"EsmConfig: {name} must be a positive integer, got {value!r}.")


# The ESM C vocabulary, in id order (transformers' `EsmcTokenizer`, the `esm` package's sequence tokenizer): the
# ESM-2 vocabulary with `|`, the chain break of multi-chain inputs, at id 31. The model's embedding table has 64 rows.
ESMC_VOCAB = ESM2_VOCAB[:31] + ("|", "<mask>")
ROPE_TYPES = ("default",)


class EsmcConfig(_LabelledConfig):
    """Configuration of an ESM C (ESM Cambrian) model, compatible with transformers' `config.json` for
    `model_type="esmc"` (`transformers.EsmcConfig`); every argument of it is accepted with its default. Keys this
    class does not know are kept and written back by `save_pretrained`.

    Args:
        vocab_size: Rows of the token embedding and of the masked-LM output (64; the tokenizer uses 33).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: Transformer shape (the defaults
            are ESMC-6B's; ESMC-300M is 960 / 30 / 15 / 2560, ESMC-600M 1152 / 36 / 18 / 3072).
        head_dim: Size of one attention head (default `hidden_size // num_attention_heads`).
        num_key_value_heads: Must equal `num_attention_heads` (ESM C has no grouped-query attention).
        max_position_embeddings: The context the model was trained with (2048 tokens).
        rope_parameters: `{"rope_type": "default", "rope_theta": 10000.0}`: rotary positions.
        attention_dropout, classifier_dropout: Dropout rates (attention probabilities; the classification head).
        initializer_range: Standard deviation of the normal initialiser for new weights.
        pad_token_id, bos_token_id, eos_token_id, mask_token_id: Special-token ids (1, 0, 2, 32).
        num_labels, id2label, label2id, problem_type: Task-head settings.
        gradient_checkpointing, attn_implementation: as `EsmConfig`'s (recompute each layer in training's backward
            pass; None/"sdpa" for the fused attention kernel where it applies, "eager" for the explicit one).

    Examples:

    ```python
    >>> from tf_esm import EsmcConfig
    >>> config = EsmcConfig(hidden_size=960, num_hidden_layers=30, num_attention_heads=15, intermediate_size=2560)
    >>> config.head_dim, config.residual_scale
    (64, 0.9128709291752769)
    ```
    """

    model_type = "esmc"
    defaults = dict(
        vocab_size=64, hidden_size=2560, intermediate_size=6912, num_hidden_layers=80, num_attention_heads=40,
        num_key_value_heads=None, hidden_act="silu", max_position_embeddings=2048, initializer_range=0.02,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, tie_word_embeddings=False, rope_parameters=None,
        attention_bias=False, attention_dropout=0.0, mlp_bias=False, head_dim=None, mask_token_id=32,
        classifier_dropout=0.1, problem_type=None, gradient_checkpointing=False, attn_implementation=None,
    )
    # Every released checkpoint: nn.LayerNorm's default epsilon (the reference has no setting for it).
    layer_norm_eps = 1e-5

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # As transformers fills them in: special ids fixed by the vocabulary, derived head shape, default rotary.
        if self.bos_token_id is None:
            self.bos_token_id = 0
        if self.eos_token_id is None:
            self.eos_token_id = 2
        if self.head_dim is None and self.num_attention_heads:
            self._head_dim_derived = True  # follows num_attention_heads when that is changed later
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.rope_parameters is None:
            self.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        self.validate()

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in ("num_attention_heads", "hidden_size") and getattr(self, "_head_dim_derived", False):
            if isinstance(self.num_attention_heads, int) and self.num_attention_heads > 0:
                super().__setattr__("head_dim", self.hidden_size // self.num_attention_heads)
                if name == "num_attention_heads" and getattr(self, "num_key_value_heads", None) is not None:
                    super().__setattr__("num_key_value_heads", value)

    @property
    def rope_theta(self):
        return float(self.rope_parameters.get("rope_theta", 10000.0))

    @property
    def residual_scale(self):
        """What each residual branch is divided by: sqrt(layers / 36) (ESM3's residue scaling, in every ESM C)."""
        return (self.num_hidden_layers / 36) ** 0.5

    @property
    def vocab_list(self):
        return list(ESMC_VOCAB)

    def default_max_length(self):
        """ESM C's positions are rotary: no table limits the length (the model was trained on 2048 tokens)."""
        return None

    def validate(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"EsmcConfig: {name} must be a positive integer, got {value!r}.")
        if self.head_dim is None:
            return  # still being filled in by __init__
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(f"EsmcConfig: hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                             f"({self.num_attention_heads}).")
        if self.head_dim * self.num_attention_heads != self.hidden_size or self.head_dim % 2:
            raise ValueError(f"EsmcConfig: head_dim ({self.head_dim}) must be even and equal hidden_size / "
                             f"num_attention_heads ({self.hidden_size} / {self.num_attention_heads}).")
        if self.num_key_value_heads not in (None, self.num_attention_heads):
            raise ValueError(f"EsmcConfig: ESM C has no grouped-query attention: num_key_value_heads "
                             f"({self.num_key_value_heads}) must equal num_attention_heads ({self.num_attention_heads}).")
        rope = self.rope_parameters or {}
        if rope.get("rope_type", "default") not in ROPE_TYPES:
            raise ValueError(f"EsmcConfig: rope_type {rope.get('rope_type')!r} is not supported; tf_esm implements "
                             f"{', '.join(ROPE_TYPES)}.")
        if self.hidden_act != "silu":
            raise ValueError(f"EsmcConfig: hidden_act must be 'silu' (SwiGLU), got {self.hidden_act!r}.")
        if self.attention_bias or self.mlp_bias:
            raise ValueError("EsmcConfig: attention_bias and mlp_bias must be False (ESM C's projections have none).")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"EsmcConfig: unknown attn_implementation {self.attn_implementation!r}; expected "
                             "None, 'sdpa' or 'eager'.")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"EsmcConfig: unknown problem_type {self.problem_type!r}; expected one of "
                             f"{', '.join(PROBLEM_TYPES)}.")


CONFIG_CLASSES = {"esm": EsmConfig, "esmc": EsmcConfig}


def config_class_for(config_dict):
    """The configuration class a `config.json`'s `model_type` names (`EsmConfig` for ESM-1/ESM-2/ESMFold and
    files without one, `EsmcConfig` for ESM C); another model type is an error that names it."""
    model_type = config_dict.get("model_type") or "esm"
    if model_type not in CONFIG_CLASSES:
        raise ValueError(f"config.json names model_type {model_type!r}, which tf_esm does not implement (it reads "
                         f"{', '.join(sorted(CONFIG_CLASSES))}).")
    return CONFIG_CLASSES[model_type]


def load_config(path_or_hub_id, **overrides):
    """The configuration of a model directory, `config.json` file or hub id, as the class its `model_type` names."""
    from tf_esm.storage.hub import resolve_file

    path = resolve_file(path_or_hub_id, CONFIG_NAME)
    with open(path, encoding="utf-8") as handle:
        try:
            config_dict = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    return config_class_for(config_dict).from_pretrained(path_or_hub_id, **overrides)


def default_vocab(config):
    """The vocabulary (id order) of a model configured by `config` when no tokenizer file says otherwise."""
    return list(getattr(config, "vocab_list", None) or ESM2_VOCAB)
