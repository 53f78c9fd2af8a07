"""LoRA fine-tuning of ESM models with Keras' built-in low-rank adapters.

Keras' `Dense.enable_lora(rank)` freezes a layer's kernel and adds two trainable float32 matrices `lora_kernel_a`
(in, rank) and `lora_kernel_b` (rank, out), the layer then computing `x @ (kernel + alpha / rank * a @ b)`. These
helpers put adapters on the attention projections of every layer, freeze the rest of the encoder (the task head
stays trainable), save and reload just the adapter, and fold it back into plain kernels for `save_pretrained`.

The model methods `enable_lora`, `save_lora_weights` and `load_lora_weights` call these functions.

Examples:

```python
>>> import keras
>>> from tf_esm import TFEsmForSequenceClassification
>>> model = TFEsmForSequenceClassification.from_pretrained("facebook/esm2_t6_8M_UR50D", num_labels=2)
>>> model.enable_lora(rank=4)                        # query and value projections; encoder frozen
>>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
>>> model.fit(train_dataset, epochs=3)
>>> model.save_lora_weights("adapter.safetensors")   # the adapters and the head, a few KB
>>> fresh = TFEsmForSequenceClassification.from_pretrained("facebook/esm2_t6_8M_UR50D", num_labels=2)
>>> fresh.load_lora_weights("adapter.safetensors")   # enables LoRA with the saved rank, then loads
>>> from tf_esm.modeling.lora import merge_lora
>>> merge_lora(fresh).save_pretrained("merged", format="safetensors")  # plain; PyTorch transformers loads it
```
"""

from __future__ import annotations

import json
import os

import numpy as np

from tf_esm.io.names import KERAS_DOT, stacked_variable_inner

LORA_TARGETS = ("query", "key", "value")
DEFAULT_LORA_TARGETS = ("query", "value")  # as keras-hub and PEFT default for BERT-style attention
# ESM C's projections, under its own names, and what the ESM names mean there (so the defaults serve both).
ESMC_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
_ESMC_ALIASES = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}
LORA_FORMAT = "tf_esm-lora"
_LORA_LEAVES = ("lora_kernel_a", "lora_kernel_b")


def _encoder_of(model):
    esm = getattr(model, "esm", None) or getattr(model, "esmc", None) or model
    if not hasattr(esm, "encoder") and not hasattr(esm, "embed_tokens"):
        raise TypeError(f"{type(model).__name__} is not an ESM model (no `esm.encoder` or `esmc.layers`).")
    return esm


def _layer_stack(model):
    """The `LayerStack` of the model's encoder layers (ESM: `esm.encoder.layer`; ESM C: `esmc.layers`)."""
    encoder = _encoder_of(model)
    return encoder.layers if hasattr(encoder, "embed_tokens") else encoder.encoder.layer


def _projections(model):
    """{target name: the template layer's Dense}, in the order adapter files list them."""
    encoder = _encoder_of(model)
    if hasattr(encoder, "embed_tokens"):  # ESM C
        attention = encoder.layers.template.self_attn
        return {name: getattr(attention, name) for name in ESMC_LORA_TARGETS}
    attention = encoder.encoder.layer.template.attention.self_attention
    return {name: getattr(attention, name) for name in LORA_TARGETS}


def attention_projections(model, targets=DEFAULT_LORA_TARGETS):
    """The attention projections named in `targets` (ESM: `query`/`key`/`value`; ESM C: `q_proj`/`k_proj`/`v_proj`/
    `o_proj`, or the ESM names for the first three), as the template layer's Dense layers (stacked over layers)."""
    targets = tuple(targets)
    projections = _projections(model)
    aliases = _ESMC_ALIASES if "q_proj" in projections else {}
    resolved = [aliases.get(name, name) for name in targets]
    unknown = [name for name in resolved if name not in projections]
    if unknown or not targets:
        raise ValueError(f"LoRA targets must be a non-empty subset of {list(projections)}; got {list(targets)}.")
    return [projections[name] for name in dict.fromkeys(resolved)]


def _relative_path(variable):
    """A variable's path without the top-level model name (which differs between instances), with the reference's
    '.' where the Keras name has `-` (`esm/encoder/layer.0/...`): the adapter file's key, the same whatever
    tf_esm version named the layers."""
    return variable.path.split("/", 1)[1].replace(KERAS_DOT, ".")


def _leaf(variable):
    # A stacked weight's name is its path in the stacked layer (`stacked-attention-self-query-lora_kernel_a`).
    return _relative_path(variable).rsplit("/", 1)[-1].rsplit(".", 1)[-1]


def is_lora_variable(variable):
    return _leaf(variable) in _LORA_LEAVES


def lora_enabled_layers(model):
    """The Dense layers of `model` that carry LoRA adapters (the encoder's template layer's: their adapters are
    stacked over the layers like every other weight of the encoder's layers)."""
    return [layer for layer in _projections(model).values() if layer.lora_enabled]


def _per_layer_paths(variable):
    """[(file name, layer index or None)]: a stacked variable (`esm/encoder/layer/stacked-attention-self-query-x`) as
    one name per layer (`esm/encoder/layer.{i}/attention/self/query/x`, the names of adapters saved per layer)."""
    path = _relative_path(variable)
    head, _, leaf = path.rpartition("/")
    inner = stacked_variable_inner(leaf)
    if inner is None:
        return [(path, None)]
    inner = inner.replace(".", "/")
    return [(f"{head}.{index}/{inner}", index) for index in range(variable.shape[0])]


def enable_lora(model, rank, lora_alpha=None, targets=DEFAULT_LORA_TARGETS, freeze_encoder=True):
    """Add rank-`rank` LoRA adapters to the attention projections `targets` of every encoder layer.

    Args:
        model: a tf_esm model (built, or buildable with `model.build()`).
        rank: the adapters' rank (a positive integer).
        lora_alpha: scale numerator; the update is `lora_alpha / rank * a @ b` (default `rank`, scale 1).
        targets: which projections get adapters, a subset of `("query", "key", "value")`.
        freeze_encoder: make every other encoder variable (embeddings, layer norms, feed-forward, attention
            biases) non-trainable, so only the adapters and the task head train.

    Returns:
        The Dense layers that received adapters: the encoder's template layer's, one per target (each adapter
        matrix is stacked over the layers).
    """
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}.")
    if not model.built:
        model.build()
    layers = attention_projections(model, targets)
    already = [layer.path for layer in layers if layer.lora_enabled]
    if already:
        raise ValueError(f"LoRA is already enabled on {already}; it can be enabled once per layer.")
    # On the template layer; the stack gives each adapter matrix its stacked variable, one per layer.
    _layer_stack(model).change_template(
        lambda _: [layer.enable_lora(int(rank), lora_alpha=lora_alpha) for layer in layers])
    if freeze_encoder:
        for variable in _encoder_of(model).weights:
            if not is_lora_variable(variable):
                variable.trainable = False
    return layers


def _lora_settings(layers):
    ranks = {(layer.lora_rank, layer.lora_alpha) for layer in layers}
    if len(ranks) != 1:
        raise ValueError(f"The LoRA layers have different (rank, alpha) settings {sorted(ranks)}; "
                         "save_lora_weights supports one setting per model.")
    rank, alpha = ranks.pop()
    targets = [name for name in LORA_TARGETS + ESMC_LORA_TARGETS if name in {layer.name for layer in layers}]
    return {"rank": int(rank), "alpha": alpha, "targets": targets}


def _adapter_variables(model):
    """{file name: (variable, layer index or None)}: every LoRA matrix, one name per layer, and the task head's
    variables (outside `esm`)."""
    esm_ids = {id(variable) for variable in _encoder_of(model).weights}
    chosen = {}
    for variable in model.weights:
        if is_lora_variable(variable) or id(variable) not in esm_ids:
            chosen.update((name, (variable, index)) for name, index in _per_layer_paths(variable))
    return chosen


def save_lora_weights(model, path):
    """Write the LoRA matrices and the task head (everything not in the frozen encoder) to a safetensors file.

    The file records the rank, alpha and targets, so `load_lora_weights` can re-create the adapters on a freshly
    loaded base model.
    """
    from safetensors.numpy import save_file

    layers = lora_enabled_layers(model)
    if not layers:
        raise ValueError("This model has no LoRA adapters to save: call model.enable_lora(rank) first.")
    settings = _lora_settings(layers)
    tensors = {}
    for name, (variable, index) in _adapter_variables(model).items():
        value = np.asarray(variable.numpy())
        tensors[name] = np.ascontiguousarray(value if index is None else value[index])
    metadata = {"format": LORA_FORMAT, "settings": json.dumps(settings), "model_class": type(model).__name__}
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, path, metadata=metadata)
    return path


def load_lora_weights(model, path):
    """Load an adapter written by `save_lora_weights`, enabling LoRA (with the saved settings) when needed.

    Every adapter tensor must match a model variable of the same shape and vice versa; a mismatch is an error
    naming the tensors.
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such LoRA adapter file.")
    with safe_open(path, framework="np") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != LORA_FORMAT:
            raise ValueError(f"{path}: not a tf_esm LoRA adapter (metadata format {metadata.get('format')!r}, "
                             f"expected {LORA_FORMAT!r}).")
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    settings = json.loads(metadata["settings"])
    if not model.built:
        model.build()
    if not lora_enabled_layers(model):
        enable_lora(model, settings["rank"], lora_alpha=settings["alpha"], targets=settings["targets"])
    variables = _adapter_variables(model)
    missing = sorted(set(variables) - set(tensors))
    unexpected = sorted(set(tensors) - set(variables))
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this model: missing tensors {missing}; unexpected tensors "
                         f"{unexpected} (saved from a {metadata.get('model_class')} with LoRA settings {settings}).")
    values = {}  # variable id -> (variable, its new value)
    for name, (variable, index) in variables.items():
        value = tensors[name]
        shape = tuple(variable.shape) if index is None else tuple(variable.shape[1:])
        if tuple(value.shape) != shape:
            raise ValueError(f"{path}: tensor {name!r} has shape {tuple(value.shape)}, but the model's variable "
                             f"needs {shape} (was the adapter saved with another rank?).")
        if index is None:
            values[id(variable)] = (variable, value)
        else:
            stacked = values.setdefault(id(variable), (variable, np.empty(variable.shape, value.dtype)))[1]
            stacked[index] = value
    for variable, value in values.values():
        variable.assign(value.astype(variable.dtype, copy=False))
    return model


def merge_lora(model):
    """A new model of the same class without adapters, whose kernels are `kernel + alpha / rank * a @ b`.

    Use it to `save_pretrained` (or export) a LoRA-tuned model as a plain checkpoint.
    """
    merged = type(model).from_config(model.get_config())
    merged.build()
    source = {_relative_path(variable): variable for variable in model.weights}
    lora_kernels = {}
    scale = {layer.name: layer.lora_alpha / layer.lora_rank for layer in lora_enabled_layers(model)}
    for name, variable in source.items():
        if not name.endswith("lora_kernel_a"):
            continue
        base = name[:-len("lora_kernel_a")]  # `.../query/` or, stacked, `.../stacked.attention.self.query.`
        # (stacked: one matrix product per layer)
        update = np.matmul(np.asarray(variable.numpy()), np.asarray(source[base + "lora_kernel_b"].numpy()))
        target = base.rstrip("./").rsplit("/", 1)[-1].rsplit(".", 1)[-1]  # query, key or value
        lora_kernels[base + "kernel"] = (np.asarray(source[base + "kernel"].numpy(), dtype=np.float32)
                                         + scale[target] * update)
    for variable in merged.weights:
        name = _relative_path(variable)
        value = lora_kernels[name] if name in lora_kernels else np.asarray(source[name].numpy())
        variable.assign(value.astype(variable.dtype, copy=False))
    return merged
