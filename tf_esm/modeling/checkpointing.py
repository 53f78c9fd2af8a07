"""Gradient checkpointing (rematerialisation): one layer's activations recomputed in the backward pass instead of
kept from the forward pass, trading a second forward of the layer for its activation memory.

`LayerStack.apply` runs each layer through `checkpointed_call` when the stack's `gradient_checkpointing` is on and
the call is training (`model.gradient_checkpointing_enable()`, or `EsmConfig(gradient_checkpointing=True)`): one
checkpoint per layer, as transformers' models do. The backend's remat comes from Keras' public `keras.remat`
(`tf.recompute_grad` under TensorFlow, `jax.checkpoint` under JAX, non-reentrant `torch.utils.checkpoint` under
PyTorch). Keras' `RematScope` is not used: it rematerialises a layer's `call` with its variables captured, and a
stack's layer reads slices of the stacked weights, which `tf.recompute_grad` differentiates only when they are
arguments. So the layer's weights, its other state (dropout's seed) and the carry are the remat function's
arguments; the state it updates comes back as outputs and is assigned outside (a recomputation must not advance
a seed twice), and the recomputation draws the same dropout masks (the seed is an input).

Tensors the layer closes over (attention masks, rotary tables, cross-attention's encoder states) are constants of
the checkpoint: TensorFlow gives them no gradient through it. None of the encoder's are trainable.
"""

from __future__ import annotations

import keras
from keras import tree


def _differentiable(value):
    return value is not None and "float" in keras.backend.standardize_dtype(value.dtype)


_depth = [0]  # how many checkpointed calls are running (their forward or their recomputation)


def inside_checkpoint():
    """Whether the code running is inside a checkpointed call (its first run or its recomputation): nested
    rematerialisation (attention's, `attention.recomputes_probabilities`) would only recompute twice."""
    return _depth[0] > 0


def checkpointed_call(function, *args):
    """`function(*args)` with its activations rematerialised in the backward pass (`keras.remat`).

    `args` and the result are nested structures of tensors in which None may appear (a layer's optional outputs):
    the remat function sees only the floating-point tensors, as flat lists, which every backend's remat accepts;
    integer ones (a seed) have no gradient and are passed as they are."""
    flat_args = tree.flatten(args)
    positions = [index for index, value in enumerate(flat_args) if _differentiable(value)]
    structure = []  # the result's structure and its tensors' places, from the first (forward) run

    def pure(*tensors):
        values = list(flat_args)
        for index, tensor in zip(positions, tensors):
            values[index] = tensor
        _depth[0] += 1
        try:
            result = function(*tree.pack_sequence_as(args, values))
        finally:
            _depth[0] -= 1
        flat_result = tree.flatten(result)
        if not structure:
            structure.append((result, [index for index, value in enumerate(flat_result) if value is not None]))
        return [value for value in flat_result if value is not None]

    tensors = keras.remat(pure)(*[flat_args[index] for index in positions])
    result, places = structure[0]
    flat = [None] * len(tree.flatten(result))
    for index, tensor in zip(places, tensors):
        flat[index] = tensor
    return tree.pack_sequence_as(result, flat)
