"""Stacked weights in the name table (`io/weights.py`): a weight of a `LayerStack` (modeling/layer_stack.py), the
same tensor of N identical layers stacked along a leading axis, has one reference name with `*` for the layer
index (`trunk.blocks.*.mlp_seq.mlp.1.weight`; its Keras variable is `trunk/blocks/stacked-mlp_seq-mlp-1-kernel`).
Checkpoints with per-layer names (`trunk.blocks.0.mlp_seq...`, transformers' and tf_esm's files before stacks) are
gathered under it here and stacked when the tensor is read."""

from __future__ import annotations

import re

import numpy as np

from tf_esm.io.buffers import is_own_array, own_array, read_buffer
from tf_esm.io.names import STACK_WILDCARD, CheckpointError, LazyTensors


def is_stacked(name):
    """Whether a reference name is that of a stacked weight (`....*....`)."""
    return f".{STACK_WILDCARD}." in f".{name}."


def matrix_ndim(name):
    """Dimensions of a tensor whose last two axes `transpose` swaps (one more for a stack of matrices)."""
    return 3 if is_stacked(name) else 2


def swapped(array):
    return array.swapaxes(-1, -2)


def with_stacks(state_dict, variables, source):
    """`state_dict` with the per-layer tensors of each stacked weight (`trunk.blocks.{i}.x`, in transformers'
    checkpoints and tf_esm files before stacks) gathered under the stacked name (`trunk.blocks.*.x`) and stacked
    when looked up. A checkpoint with another number of layers than the model is an error naming the tensor."""

    groups = {}  # stacked name -> {index: checkpoint name}
    patterns = []
    for name in variables:
        if is_stacked(name) and name not in state_dict:
            head, _, tail = name.partition(f".{STACK_WILDCARD}.")
            patterns.append((name, re.compile(re.escape(head) + r"\.(\d+)\." + re.escape(tail) + "$")))
    if not patterns:
        return state_dict
    by_prefix = {}
    for name, pattern in patterns:
        by_prefix.setdefault(name.partition(f".{STACK_WILDCARD}.")[0] + ".", []).append((name, pattern))
    for checkpoint_name in state_dict:
        for prefix, candidates in by_prefix.items():
            if checkpoint_name.startswith(prefix):
                for name, pattern in candidates:
                    match = pattern.match(checkpoint_name)
                    if match:
                        groups.setdefault(name, {})[int(match.group(1))] = checkpoint_name
                        break
    if not groups:
        return state_dict
    for name, members in groups.items():
        count = variables[name][0].shape[0]
        if sorted(members) != list(range(count)):
            raise CheckpointError(
                f"{source}: tensor {name.replace(STACK_WILDCARD, '{i}')!r} is there for layers {sorted(members)}, "
                f"but the model has {count} (0 to {count - 1}).")
    grouped = {member for members in groups.values() for member in members.values()}
    names = [name for name in state_dict if name not in grouped] + list(groups)

    def read(name):
        if name not in groups:
            return state_dict[name]
        return _stacked(state_dict, groups[name], variables[name][1], source)

    stacked = LazyTensors(names, read)
    # Per-layer access for writers that need not hold a whole stack at once (the weights cache's conversion):
    # {stacked name: ({layer index: checkpoint name}, the checkpoint's mapping)}.
    stacked.stack_members = {name: (members, state_dict) for name, members in groups.items()}
    return stacked


def _stacked(state_dict, members, transpose, source):
    """The tensors `members` ({index: name}) stacked along a new leading axis, in a buffer of our own. Matrices
    stored in the Keras layout (a version-2 tf_esm file hands out transposed views of its mapping) are stacked in
    that layout and handed out as the same kind of view, so loading does not transpose them twice."""

    stack, keras_layout = None, False
    for index in sorted(members):
        value = np.asarray(state_dict[members[index]])
        if stack is None:
            keras_layout = transpose and value.ndim == 2 and is_own_array(value.T)
            shape, dtype = value.shape, value.dtype
            inner = value.shape[::-1] if keras_layout else value.shape
            count = len(members)
            stack = read_buffer(count * int(np.prod(inner, dtype=np.int64)), dtype).reshape((count,) + inner)
        if value.shape != shape or value.dtype != dtype:
            raise CheckpointError(f"{source}: tensor {members[index]!r} is {value.dtype} {tuple(value.shape)}, "
                                  f"but {members[min(members)]!r} is {dtype} {tuple(shape)}: layers of one stack "
                                  "must match.")
        source_array = value.T if keras_layout else value
        stack[index] = source_array
    own_array(stack)
    return swapped(stack) if keras_layout else stack
