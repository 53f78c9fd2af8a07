"""`LayerStack` (tf_esm/modeling/layer_stack.py): N layers of one structure as one layer with stacked weights, which
ESMFold's trunk blocks are. Each way the stack runs (the Python loop, TensorFlow's traced-once function in a graph
and eagerly, JAX's scan inside a compiled program) against the same layers as N separate Keras layers; and the
stacked weights through the name table: loading per-layer checkpoints, tf_esm's own file, the version-2 files of
before, and a checkpoint with the wrong number of layers. Runs under every backend (the TensorFlow paths are
marked)."""

import h5py
import keras
import numpy as np
import pytest
from keras import ops

from tests.conftest import BACKEND
from tf_esm.backend import to_numpy
from tf_esm.modeling.layer_stack import LayerStack

COUNT, WIDTH = 3, 8


class _Residual(keras.layers.Layer):
    """A small block: layer norm, two dense layers, residual. Enough sub-layers to give nested weight paths."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.LayerNormalization(name="norm")
        self.inner = keras.layers.Dense(2 * WIDTH, name="inner")
        self.outer = keras.layers.Dense(WIDTH, name="outer")

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.inner.build(input_shape)
        self.outer.build(tuple(input_shape[:-1]) + (2 * WIDTH,))

    def call(self, x):
        return x + self.outer(ops.tanh(self.inner(self.norm(x))))


def _step(layer, x):
    return layer(x)


@pytest.fixture
def stack_and_layers():
    """A stack and COUNT separate layers holding the same random weights."""
    rng = np.random.default_rng(0)
    stack = LayerStack(lambda: _Residual(name="block"), COUNT, name="blocks")
    stack.build((None, WIDTH))
    layers = [_Residual(name=f"blocks-{index}") for index in range(COUNT)]
    for layer in layers:
        layer.build((None, WIDTH))
    for stacked in stack.stacked_weights:
        stacked.assign(rng.normal(size=stacked.shape).astype("float32"))
    for index, layer in enumerate(layers):
        for weight, stacked in zip(layer.weights, stack.stacked_weights):
            weight.assign(to_numpy(stacked.value)[index])
    x = rng.normal(size=(4, WIDTH)).astype("float32")
    return stack, layers, x


def _separate(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def _counted(traces):
    """A step that records each time it runs (each trace, inside a compiled function)."""

    def step(layer, state):
        traces.append(1)
        return layer(state)

    return step


def test_weights_are_stacked_and_named_by_their_path_in_the_template(stack_and_layers):
    stack, layers, _ = stack_and_layers
    # '-' for the reference's '.' (io/names.py, KERAS_DOT): the PyTorch backend refuses a '.' in a variable's path.
    assert [w.name for w in stack.weights] == ["stacked-norm-gamma", "stacked-norm-beta", "stacked-inner-kernel",
                                               "stacked-inner-bias", "stacked-outer-kernel", "stacked-outer-bias"]
    assert [tuple(w.shape) for w in stack.weights] == [(COUNT,) + tuple(w.shape) for w in layers[0].weights]
    assert len(stack) == COUNT and stack.template.built
    assert all(w.path.startswith("blocks/block/") for w in stack.template.weights)  # not the stack's weights


def test_the_python_loop_equals_separate_layers(stack_and_layers):
    stack, layers, x = stack_and_layers
    expected = to_numpy(_separate(layers, x))
    np.testing.assert_allclose(to_numpy(stack.apply(_step, x)), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(to_numpy(stack.apply(_step, x, training=True)), expected, rtol=0, atol=1e-5)


@pytest.mark.tensorflow_only("tf.function and GradientTape")
def test_tensorflow_traced_once_in_a_graph_and_eagerly_and_gradients(stack_and_layers):
    import tensorflow as tf

    from tf_esm.modeling import layers_tf

    stack, layers, x = stack_and_layers
    expected = to_numpy(_separate(layers, x))
    traces = []
    graph = tf.function(lambda x: stack.apply(_counted(traces), x))
    np.testing.assert_allclose(graph(x).numpy(), expected, rtol=0, atol=1e-5)
    assert len(traces) == 1  # one trace for the three layers
    with layers_tf.traced_in_eager():
        assert layers_tf.traceable_stack(stack)
        np.testing.assert_allclose(stack.apply(_step, x).numpy(), expected, rtol=0, atol=1e-5)

    # Training: the Python loop over the stacked values unstacked (one dense gradient per stacked weight).
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(stack.apply(_step, x, training=True) ** 2)
    ours = tape.gradient(loss, [w.value for w in stack.stacked_weights])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.convert_to_tensor(_separate(layers, x)) ** 2)
    theirs = tape.gradient(loss, [w.value for layer in layers for w in layer.weights])
    per_weight = len(layers[0].weights)
    for position, gradient in enumerate(ours):
        expected_gradient = np.stack([to_numpy(theirs[index * per_weight + position]) for index in range(COUNT)])
        np.testing.assert_allclose(np.asarray(tf.convert_to_tensor(gradient)), expected_gradient, rtol=1e-5,
                                   atol=1e-5, err_msg=stack.stacked_weights[position].name)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's compiled program (jit_with_weights)")
def test_jax_scans_the_stacked_weights_inside_a_compiled_program(stack_and_layers):
    from tf_esm.modeling import encoder_jax

    stack, layers, x = stack_and_layers
    expected = to_numpy(_separate(layers, x))
    traces = []
    run = encoder_jax.jit_with_weights(stack.variables, lambda x: stack.apply(_counted(traces), x))
    np.testing.assert_allclose(to_numpy(run(x)), expected, rtol=0, atol=1e-5)
    assert len(traces) == 1  # the scan's body, traced once
    # Nothing is stacked again: the program's arguments are the stack's own variables' values.
    assert all(value is variable.value for value, variable in zip(run.arguments(x)[0], stack.variables))


def test_a_template_with_a_seed_generator_advances_it(stack_and_layers):
    """Dropout in the template: each layer and each call draws new masks, as separate layers would."""
    stack = LayerStack(lambda: keras.layers.Dropout(0.5, seed=1), 4, name="drops")
    stack.build((None, 64))
    # The seed state is the stack's (a model's variables, initialised and updated with the others), not a weight.
    assert [id(v) for v in stack.variables] == [id(stack.template.seed_generator.state)] and not stack.weights
    ones = np.ones((1, 64), "float32")
    first = to_numpy(stack.apply(lambda layer, x: layer(x, training=True), ones))
    second = to_numpy(stack.apply(lambda layer, x: layer(x, training=True), ones))
    assert set(np.unique(first)) <= {0.0, 16.0} and not np.array_equal(first, second)
    np.testing.assert_array_equal(to_numpy(stack.apply(lambda layer, x: layer(x), ones)), ones)


# ------------------------------------------------------------------------------------------- the name table


@pytest.fixture(scope="module")
def reference_directory(tmp_path_factory):
    from tests.test_folding_model import _make_reference

    directory = tmp_path_factory.mktemp("stacked_esmfold")
    return directory, _make_reference(directory, fp16_esm=False)


def test_state_dict_round_trips_through_the_reference_names(reference_directory):
    """`model_state_dict` gives transformers' own names and values, per block, for the stacked trunk."""
    from tf_esm import TFEsmForProteinFolding
    from tf_esm.io.weights import model_state_dict, model_variables

    directory, reference = reference_directory
    model = TFEsmForProteinFolding.from_pretrained(str(directory), strict=True)
    names = model_variables(model)
    assert "trunk.blocks.*.tri_mul_out.linear_z.weight" in names
    assert not any(name.startswith("trunk.blocks.0.") for name in names)
    ours = model_state_dict(model)
    theirs = {name: value.numpy() for name, value in reference.state_dict().items()}
    blocks = sorted(name for name in theirs if name.startswith("trunk.blocks."))
    assert blocks and all(name in ours for name in blocks)
    for name in blocks:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_native_file_stores_stacks_and_older_files_still_load(reference_directory, tmp_path):
    """`save_pretrained` writes version 4 (a dataset per stacked weight, Keras layout). A version-2 file (per-block
    datasets, as tf_esm wrote before) loads to the same weights (stacked on loading)."""
    from tf_esm import TFEsmForProteinFolding
    from tf_esm.io import native_h5
    from tf_esm.io.weights import H5_WEIGHTS_NAME, is_stacked, model_variables

    directory, _ = reference_directory
    model = TFEsmForProteinFolding.from_pretrained(str(directory), strict=True)
    model.save_pretrained(str(tmp_path / "v4"))
    with h5py.File(tmp_path / "v4" / H5_WEIGHTS_NAME, "r") as handle:
        assert handle.attrs["format_version"] == 4
        dataset = handle[native_h5.GROUPS[4]]["trunk/blocks/*/tri_mul_out/linear_z/weight"]
        variable = model.trunk.blocks.stacked_weights[
            [w.name for w in model.trunk.blocks.stacked_weights].index("stacked-tri_mul_out-linear_z-kernel")]
        assert dataset.attrs["keras_layout"] and dataset.shape == tuple(variable.shape)
        np.testing.assert_array_equal(dataset[()], to_numpy(variable.value))

    # A version-2 file, written as tf_esm wrote them: per-block names, each tensor in its Keras layout, aligned.
    old = tmp_path / "v2"
    old.mkdir()
    (old / "config.json").write_text((tmp_path / "v4" / "config.json").read_text())
    with h5py.File(old / H5_WEIGHTS_NAME, "w", alignment_threshold=1, alignment_interval=64) as handle:
        handle.attrs["format"], handle.attrs["format_version"] = "tf_esm", 2
        group = handle.create_group(native_h5.GROUPS[2])
        for name, (variable, transpose) in sorted(model_variables(model).items()):
            value = to_numpy(variable.value)
            per_block = {name: value}
            if is_stacked(name):
                per_block = {name.replace(".*.", f".{index}."): layer for index, layer in enumerate(value)}
            for block_name, block_value in per_block.items():
                dataset = group.create_dataset(block_name.replace(".", "/"), data=block_value)
                if transpose and block_value.ndim == 2:
                    dataset.attrs["keras_layout"] = True
    for path in (tmp_path / "v4", old):
        loaded = TFEsmForProteinFolding.from_pretrained(str(path), strict=True)
        for ours, theirs in zip(loaded.weights, model.weights):
            np.testing.assert_array_equal(to_numpy(ours.value), to_numpy(theirs.value), err_msg=f"{path}: "
                                          f"{ours.path}")


def test_a_checkpoint_with_another_number_of_blocks_is_refused(reference_directory, tmp_path):
    from tf_esm import TFEsmForProteinFolding
    from tf_esm.io.weights import CheckpointError, read_state_dict, save_weights_safetensors

    directory, _ = reference_directory
    state = {name: to_numpy(value) for name, value in read_state_dict(str(directory)).items()
             if not name.startswith("trunk.blocks.1.")}
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    save_weights_safetensors(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"trunk\.blocks\.\{i\}\..* layers \[0\], but the model has 2"):
        TFEsmForProteinFolding.from_pretrained(str(tmp_path))
