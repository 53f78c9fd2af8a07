"""Every private Keras and TensorFlow interface tf_esm uses, each checked once and with a public fallback.

Keras 3 has no public function for a few things tf_esm does, for loading speed or to follow a Keras convention.
They are all here, and nowhere else in the package:

=============================  ==============================================  =====================================
private use                    what it buys                                    public fallback
=============================  ==============================================  =====================================
deferred initialisation        `from_pretrained` gives each variable the       build with random initial values, then
(`Variable._initialize_with_   checkpoint value as its first value (no random  `variable.assign(value)`
initializer`, `_initializer`,  draws, no copy of a memory-mapped tensor)
`_deferred_initialize`, the
`uninitialized_variables`
registry)
`Variable._initializer`        a `LayerStack` draws each layer's initial       each layer's values from a freshly
                               values from the template weight's initializer   built template
`get_stateless_scope`          a `LayerStack` keeps the mapping of the         the template's other variables read
                               stateless scope it runs in for every variable   (`.value`) before its scope opens
`scale_loss_for_distribution`  the built-in loss follows Keras' convention     the same division by
                               for tf.distribute replicas                      `num_replicas_in_sync`
`set_keras_mask`               token labels of -100 are masked out of          a masking layer's public
                               compiled losses and metrics                     `compute_mask`
`Layer._flatten_layers`        every sublayer of a model (LoRA, a stack's      a walk over layer attributes
                               template's seed generators)
`Layer._tracker.unlock/lock`   LoRA adapters added to the encoder's built      none: public-only mode refuses LoRA on
                               `LayerStack` (as Keras' own `enable_lora`)      a built model, with a message
`Trainer._maybe_symbolic_      `fit` under MultiWorkerMirroredStrategy with    no workaround: Keras' own build (which
build` (overridden),           several workers (modeling/distribute_tf.py)     fails for nested batches there)
`extended._in_multi_worker_
mode`                                                                          the strategy's cluster resolver
=============================  ==============================================  =====================================

`private(name)` says whether a private use is taken: it is checked the first time it is asked for (the module or
attribute exists and does what tf_esm relies on, on a tiny object) and the answer kept. The public fallbacks give
the same numbers, more slowly where the private use was an optimisation. Public-only mode forces every fallback:
set `TF_ESM_PUBLIC_KERAS=1` before tf_esm is imported, or call `set_public_only(True)` (or use `public_only()`),
e.g. to check a new Keras release or to work around a private interface that changed.

Pure-Python tricks on tf_esm's own classes (`object.__setattr__` in `modeling/outputs.py`, and in `LayerStack`
to hold its template outside Keras' attribute tracking, with `__dir__` leaving it out of `.keras` saving) touch no
Keras state and stay where they are.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

import numpy as np

PUBLIC_ONLY_ENV = "TF_ESM_PUBLIC_KERAS"

_public_only = os.environ.get(PUBLIC_ONLY_ENV, "").strip().lower() not in ("", "0", "false", "no")
_checked: dict = {}
_lock = threading.Lock()


def set_public_only(enabled):
    """Use only public Keras/TensorFlow interfaces (every fallback) from now on, or stop doing so."""
    global _public_only
    _public_only = bool(enabled)


def public_only_mode():
    return _public_only


@contextlib.contextmanager
def public_only(enabled=True):
    """`set_public_only(enabled)` for the duration of the block. Models built inside must also be used inside:
    one built with deferred initialisation expects its first values from the private path."""
    previous = _public_only
    set_public_only(enabled)
    try:
        yield
    finally:
        set_public_only(previous)


def private(name):
    """Whether the private use `name` (a key of `_CHECKS`) is taken: not in public-only mode, and its check
    passed (checked once per process)."""
    if _public_only:
        return False
    if name not in _checked:
        with _lock:
            if name not in _checked:
                try:
                    # Nor on the caller's warning filters (a test suite's "error" turns a library's
                    # DeprecationWarning into an exception): the checks' own warnings are not the caller's business.
                    with _outside_keras_scopes(), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        _checked[name] = bool(_CHECKS[name]())
                except Exception:  # a changed or missing private interface: the public fallback
                    _checked[name] = False
    return _checked[name]


# Keras' scopes a check must not run inside: the first `private(name)` call may come from within one (a load opens a
# stateless scope), and a check's variables would then be deferred by the caller's scope, not by the check's own.
_KERAS_SCOPES = ("stateless_scope", "symbolic_scope")


@contextlib.contextmanager
def _outside_keras_scopes():
    """Keras' (thread-local) scopes closed for the duration of a check, then restored: the check's answer must not
    depend on where it was first asked."""
    global_state = _global_state()
    saved = {name: global_state.get_global_attribute(name) for name in _KERAS_SCOPES}
    for name in saved:
        global_state.set_global_attribute(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            global_state.set_global_attribute(name, value)


# ------------------------------------------------------------------------------------------------------- checks
def _global_state():
    from keras.src.backend.common import global_state

    return global_state


def _check_deferred_initialization():
    import keras

    global_state = _global_state()
    with keras.StatelessScope(initialize_variables=False):
        variable = keras.Variable(initializer="zeros", shape=(2,), dtype="float32", trainable=False)
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    registered = any(entry is variable for entry in pending)
    deferred = _is_deferred(variable)
    _first_value(variable, np.ones((2,), np.float32))
    _forget([variable])
    second = keras.Variable(initializer="ones", shape=(2,), dtype="float32", trainable=False)
    with keras.StatelessScope(initialize_variables=False):
        third = keras.Variable(initializer="ones", shape=(2,), dtype="float32", trainable=False)
    third._deferred_initialize()
    _forget([third])
    return (registered and deferred and not _is_deferred(variable) and not _is_deferred(second)
            and np.array_equal(keras.ops.convert_to_numpy(variable.value), [1.0, 1.0])
            and np.array_equal(keras.ops.convert_to_numpy(third.value), [1.0, 1.0])
            and not any(entry is variable or entry is third
                        for entry in global_state.get_global_attribute("uninitialized_variables") or []))


def _check_initializer_attribute():
    import keras

    initializer = keras.initializers.Constant(3.0)
    variable = keras.Variable(initializer=initializer, shape=(1,), dtype="float32", trainable=False)
    return callable(getattr(variable, "_initializer", None)) or getattr(variable, "_initializer", 0) is None


def _check_stateless_scope_getter():
    import keras
    from keras.src.backend.common.stateless_scope import get_stateless_scope

    if get_stateless_scope() is not None:
        return False
    with keras.StatelessScope(initialize_variables=False) as scope:
        return get_stateless_scope() is scope and isinstance(scope.state_mapping, dict)


def _check_loss_scaling():
    from keras.src.losses.loss import scale_loss_for_distribution

    return callable(scale_loss_for_distribution)


def _check_keras_mask():
    from keras import ops
    from keras.src.backend.common.masking import get_keras_mask, set_keras_mask

    tensor = ops.ones((2,))
    mask = ops.convert_to_tensor([True, False])
    set_keras_mask(tensor, mask)
    return get_keras_mask(tensor) is mask


def _check_flatten_layers():
    import keras

    inner = keras.layers.Dense(1)
    outer = keras.Sequential([inner])
    return any(layer is inner for layer in outer._flatten_layers(include_self=False))


def _check_layer_state_unlock():
    import keras

    layer = keras.layers.Dense(1)
    layer.build((None, 1))
    if not layer._tracker.locked:
        return False
    layer._tracker.unlock()
    try:
        layer.add_weight(shape=(1,), name="probe", initializer="zeros")
    finally:
        layer._tracker.lock()
    return layer._tracker.locked and len(layer.weights) == 3


def _check_symbolic_build_hook():
    import inspect

    import keras

    if keras.backend.backend() != "tensorflow":
        return False
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    parameters = inspect.signature(TensorFlowTrainer._maybe_symbolic_build).parameters
    return "iterator" in parameters and "data_batch" in parameters


def _check_multi_worker_mode():
    import tensorflow as tf

    # The default strategy, which exists already: creating a strategy here (a MirroredStrategy) inside a
    # multi-worker process whose collectives are set up crashed the worker (SIGSEGV, tests/test_multi_worker.py).
    extended = tf.distribute.get_strategy().extended
    return callable(getattr(extended, "_in_multi_worker_mode", None)) and extended._in_multi_worker_mode() is False


_CHECKS = {
    "deferred_initialization": _check_deferred_initialization,
    "initializer_attribute": _check_initializer_attribute,
    "stateless_scope_getter": _check_stateless_scope_getter,
    "loss_scaling": _check_loss_scaling,
    "keras_mask": _check_keras_mask,
    "flatten_layers": _check_flatten_layers,
    "layer_state_unlock": _check_layer_state_unlock,
    "symbolic_build_hook": _check_symbolic_build_hook,
    "multi_worker_mode": _check_multi_worker_mode,
}


# ------------------------------------------------------------------------------------- deferred initialisation
# Creating a Keras variable runs its initializer (a truncated normal for every ESM projection), which loading then
# overwrites. Inside `deferred_initialization` (a `keras.StatelessScope`) Keras defers each variable's
# initialisation; `assign_weight` gives a deferred variable the checkpoint value as its first value, and
# `forget_initialization(..., initialize=True)` runs the real initializer only for the weights the checkpoint lacks.


def _is_deferred(variable):
    return getattr(variable, "_value", 0) is None and getattr(variable, "_initializer", None) is not None


def _first_value(variable, value):
    variable._initialize_with_initializer(lambda shape, dtype: value)
    variable._initializer = None


def _forget(variables):
    global_state = _global_state()
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    ours = {id(variable) for variable in variables}
    global_state.set_global_attribute("uninitialized_variables", [v for v in pending if id(v) not in ours])


@contextlib.contextmanager
def deferred_initialization():
    """Variables created in the block get their first value from `assign_weight` or `forget_initialization`
    (`initialize=True`). Public fallback: they are created with their initial values."""
    if not private("deferred_initialization"):
        yield
        return
    import keras

    with keras.StatelessScope(initialize_variables=False):
        yield


def assign_weight(variable, value):
    """`variable.assign(value)`, or `value` as the first value of a variable whose initialisation was deferred."""
    if private("deferred_initialization") and _is_deferred(variable):
        _first_value(variable, value)
    else:
        variable.assign(value)


def forget_initialization(variables, initialize=False):
    """Take `variables` off Keras' registry of variables to initialise when a stateless scope exits; with
    `initialize`, first give those still deferred their initializer's values. Without initialising, a deferred
    variable never gets memory of its own. Nothing to do in the fallback, where nothing was deferred."""
    if not private("deferred_initialization"):
        return
    if initialize:
        for variable in variables:
            if _is_deferred(variable):
                variable._deferred_initialize()
    _forget(variables)


def build_without_values(layer, *shapes):
    """Build `layer` with variables that never get values of their own (a `LayerStack` template, whose values
    are always mapped in). Public fallback: an ordinary build, whose values are never read."""
    import keras

    if not private("deferred_initialization"):
        layer.build(*shapes)
        return
    with keras.StatelessScope(initialize_variables=False):
        layer.build(*shapes)
    forget_initialization(layer.variables)


def initializer_of(variable):
    """The initializer `variable` was created with, or None where Keras does not say (public-only mode)."""
    if not private("initializer_attribute"):
        return None
    return getattr(variable, "_initializer", None)


# ------------------------------------------------------------------------------------------- stateless scopes
def current_stateless_scope():
    """The innermost `keras.StatelessScope` in force, or None: also None where that cannot be known (public-only
    mode), and callers then map what they need themselves."""
    if not private("stateless_scope_getter"):
        return None
    from keras.src.backend.common.stateless_scope import get_stateless_scope

    return get_stateless_scope()


# ---------------------------------------------------------------------------------------------------- training
def scale_loss_for_replicas(loss):
    """Keras' convention for a loss under tf.distribute: each replica's loss divided by the replica count (Keras
    undoes it for the logged value), so the replicas' summed gradients average."""
    if private("loss_scaling"):
        from keras.src.losses.loss import scale_loss_for_distribution

        return scale_loss_for_distribution(loss)
    import keras
    from keras import ops

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = ops.multiply(loss, ops.cast(1.0 / replicas, loss.dtype))
    return loss


_MASK_LAYER = None


def with_keras_mask(tensor, mask):
    """`tensor` carrying `mask` as its Keras mask, which Keras losses (a mean over unmasked entries) and compiled
    metrics honour. Private: set on `tensor` itself; public fallback: the output of an identity layer whose
    `compute_mask` returns `mask` (a new tensor, so use the return value)."""
    if private("keras_mask"):
        from keras.src.backend.common.masking import set_keras_mask

        set_keras_mask(tensor, mask)
        return tensor
    global _MASK_LAYER
    if _MASK_LAYER is None:
        _MASK_LAYER = _masking_layer()
    return _MASK_LAYER(tensor, mask=mask)


def _masking_layer():
    import keras
    from keras import ops

    class _WithMask(keras.layers.Layer):
        def __init__(self):
            super().__init__(name="tf_esm_with_mask")
            self.supports_masking = True

        def call(self, inputs, mask=None):
            return ops.add(inputs, ops.zeros((), inputs.dtype))  # a new tensor, with no mask yet

        def compute_mask(self, inputs, mask=None):
            return mask

    return _WithMask()


def additional_loss(loss):
    """An `add_loss`/regulariser term as Keras adds it to the compiled loss: summed, in floatx if not float."""
    import keras
    from keras import ops

    if not keras.backend.is_float_dtype(loss.dtype):
        loss = ops.cast(loss, keras.config.floatx())
    return ops.sum(loss)


def all_sublayers(layer):
    """Every layer inside `layer` (not `layer` itself), depth first, each once."""
    if private("flatten_layers"):
        return list(layer._flatten_layers(include_self=False))
    import keras

    found, seen = [], {id(layer)}

    def visit(value):
        if isinstance(value, keras.layers.Layer):
            if id(value) in seen:
                return
            seen.add(id(value))
            found.append(value)
            children(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    def children(owner):
        for name, value in sorted(vars(owner).items()):
            if not (name.startswith("__") or name in ("_template", "_pairs")):
                visit(value)

    children(layer)
    return found


@contextlib.contextmanager
def unlocked_state(layer, what):
    """Within the block, variables may be added to the built `layer` (Keras locks a layer's state once it is built;
    its own `Dense.enable_lora` unlocks it the same way). Public-only mode has no way to do it: a RuntimeError
    naming `what`."""
    if not private("layer_state_unlock"):
        raise RuntimeError(f"{what} adds variables to the built layer {layer.name!r}, which takes Keras' private "
                           f"layer-state unlocking; it is off (public-only mode, {PUBLIC_ONLY_ENV}=1, or this Keras "
                           "version changed it).")
    layer._tracker.unlock()
    try:
        yield
    finally:
        layer._tracker.lock()


# ------------------------------------------------------------------------------------- tf.distribute (TF only)
def symbolic_build_hook():
    """Whether Keras' TensorFlow trainer still builds through `_maybe_symbolic_build(iterator, data_batch)`, which
    `EsmKerasTask` overrides for MultiWorkerMirroredStrategy (modeling/distribute_tf.py)."""
    return private("symbolic_build_hook")


def in_multi_worker_mode(strategy):
    """Whether a tf.distribute `strategy` spans more than one worker."""
    if private("multi_worker_mode"):
        return bool(strategy.extended._in_multi_worker_mode())
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return False
    cluster = resolver.cluster_spec().as_dict()
    return sum(len(cluster.get(job, ())) for job in ("chief", "worker")) > 1
