"""The rule from a Keras variable path to its reference (PyTorch) name, and what every checkpoint reader shares: the
error that names a tensor and the lazy {name: array} mapping. The bottom of `tf_esm.io`: it imports no other
module of the package, so the readers (`io/weights.py`, `io/native_h5.py`, `io/stacked_weights.py`) all import it
and not each other. The rest of the name table (aliases, ignored tensors) is in `io/weights.py`."""

from __future__ import annotations

import collections.abc

# The layer axis of a stacked weight (`modeling/layer_stack.py`): `trunk.blocks.*.mlp_seq.mlp.1.weight` is
# `trunk.blocks.{i}.mlp_seq.mlp.1.weight` for every i, stacked along a leading axis.
STACK_WILDCARD = "*"

# A Keras name holds no '/' (Keras' path separator) and, under the PyTorch backend, no '.' (Keras registers each
# variable as a torch parameter keyed by its path, and torch refuses a '.' in that key). A '.' of a reference module
# path (`layer.0`) is written '-' in the Keras name (`layer-0`): never part of a PyTorch module's attribute name.
KERAS_DOT = "-"

# The Keras name of a stacked weight of a `LayerStack`: this prefix, then the weight's path inside the stacked layer,
# '.'-joined and written with KERAS_DOT like any name (`stacked-mlp_seq-mlp-1-kernel`). Not `*`: TensorFlow refuses
# it in the name scopes of optimiser slots. Names written before this prefix (`*-...`, `*....`) read the same.
STACKED_PREFIX = "stacked"
_STACKED_PREFIXES = (STACKED_PREFIX + ".", STACK_WILDCARD + ".")

# Keras leaf name -> (reference leaf name, transpose a 2-D tensor?)
LEAF_RULES = {
    "kernel": ("weight", True),
    "embeddings": ("weight", False),
    "gamma": ("weight", False),
    "beta": ("bias", False),
}


def keras_name(reference_path):
    """The Keras layer or variable name for a dotted reference module path: `layer.0` -> `layer-0`."""
    return reference_path.replace(".", KERAS_DOT)


def stacked_variable_name(relative_path):
    """The Keras name of the stacked variable of a template weight at `relative_path` (`mlp_seq/mlp-1/kernel` ->
    `stacked-mlp_seq-mlp-1-kernel`)."""
    return keras_name(".".join([STACKED_PREFIX] + relative_path.split("/")))


def stacked_variable_inner(leaf):
    """The dotted path inside the stacked layer (`mlp_seq.mlp.1.kernel`) of a Keras variable name (its last path
    part), or None when it is not a stacked weight's name."""
    dotted = leaf.replace(KERAS_DOT, ".")
    for prefix in _STACKED_PREFIXES:
        if dotted.startswith(prefix):
            return dotted[len(prefix):]
    return None


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or its tensors do not fit the model (names the tensor)."""


def reference_name(variable_path):
    """Keras variable path -> (reference name, transpose?). A stacked weight's name carries its path inside the
    stacked layer (`stacked-tri_mul_out-linear_z-kernel`; Keras names cannot hold '/'), which becomes the reference
    name with `*` for the layer index (`trunk.blocks.*.tri_mul_out.linear_z.weight`). Names saved before the PyTorch
    backend wrote '.' where they now write '-' (`layer.0`): both read the same."""
    parts = [part.replace(KERAS_DOT, ".") for part in variable_path.split("/")[1:]]  # without the model's name
    if not parts:
        raise CheckpointError(f"Variable path {variable_path!r} has no layer.")
    inner, leaf = "", parts[-1]
    stacked = stacked_variable_inner(leaf)
    if stacked is not None:
        inner, _, leaf = stacked.rpartition(".")
        inner = STACK_WILDCARD + "." + inner if inner else STACK_WILDCARD
    leaf, transpose = LEAF_RULES.get(leaf, (leaf, False))
    return ".".join(parts[:-1] + ([inner] if inner else []) + [leaf]), transpose


class LazyTensors(collections.abc.Mapping):
    """A read-only {name: numpy array} mapping whose arrays are read from the file when looked up.

    Args:
        names: the tensor names, in file order.
        read: `read(name) -> numpy array`.
    """

    def __init__(self, names, read):
        self._names = list(dict.fromkeys(names))
        self._known = set(self._names)
        self._read = read

    def __getitem__(self, name):
        if name not in self._known:
            raise KeyError(name)
        return self._read(name)

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def __contains__(self, name):
        return name in self._known


def model_variables(model):
    """{reference name: (keras variable, transpose?)} over the model's trainable and non-trainable weights."""
    table = {}
    for variable in model.weights:
        name, transpose = reference_name(variable.path)
        if name in table and table[name][0] is not variable:
            raise CheckpointError(f"Two Keras variables map to {name!r}: {table[name][0].path} and {variable.path}.")
        table[name] = (variable, transpose)
    return table
