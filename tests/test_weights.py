"""Checkpoint readers: tensors read one at a time, every safetensors dtype, damaged headers named."""

import copy
import gc
import json
import os
import shutil
import struct
import sys

import h5py
import keras
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests._reference import assert_close, batch_with_padding_and_masks, torch_outputs
from tf_esm import TFEsmForMaskedLM, TFEsmModel
from tf_esm.io import weights as weights_module
from tf_esm.io.stacked_weights import matrix_ndim
from tf_esm.io.weights import CheckpointError, read_state_dict

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool)


def test_every_safetensors_dtype_reads_like_torch(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for dtype in DTYPES:
        values = torch.randn(3, 5, generator=generator) * 50
        tensors[f"t.{str(dtype)[6:]}"] = values.to(dtype)
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4)
    save_file(tensors, str(tmp_path / "x.safetensors"), metadata={"format": "pt"})
    state = read_state_dict(tmp_path / "x.safetensors")
    assert sorted(state) == sorted(tensors)
    for name, tensor in tensors.items():
        expected = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        got = state[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_tensors_are_read_when_looked_up(tmp_path, monkeypatch):
    save_file({f"w{i}": torch.full((4,), float(i)) for i in range(5)}, str(tmp_path / "x.safetensors"))
    reads = []
    original = weights_module.read_buffer
    monkeypatch.setattr(weights_module, "read_buffer", lambda *a, **k: reads.append(1) or original(*a, **k))
    state = read_state_dict(tmp_path / "x.safetensors")
    assert not reads and len(state) == 5 and "w3" in state
    np.testing.assert_array_equal(state["w3"], np.full(4, 3.0, np.float32))
    assert len(reads) == 1


@pytest.mark.tensorflow_only("the zero-copy hand-over is TensorFlow's (io/weights_tf.py)")
def test_read_tensors_become_variables_without_a_copy_and_caller_arrays_are_copied(tmp_path):
    """A tensor read from a safetensors file is aligned for TensorFlow and wrapped, not copied: the tensor shares
    the read buffer. A caller's own array is always copied: changing it later does not change the model."""
    save_file({"w": torch.arange(64, dtype=torch.float32).reshape(8, 8)}, str(tmp_path / "x.safetensors"))
    value = read_state_dict(tmp_path / "x.safetensors")["w"]
    assert value.ctypes.data % 64 == 0
    tensor = weights_module._as_variable_value(value, "float32", transpose=False)
    value[0, 0] = -1.0
    assert float(tensor[0, 0]) == -1.0  # shared: the read buffer is the tensor's memory
    transposed = weights_module._as_variable_value(value, "float32", transpose=True)
    np.testing.assert_array_equal(np.asarray(transposed), value.T)

    caller = np.arange(64, dtype=np.float32).reshape(8, 8)
    aligned = weights_module.read_buffer(64, np.float32).reshape(8, 8)  # aligned, but not from a reader
    aligned[...] = caller
    for array in (caller, aligned):
        tensor = weights_module._as_variable_value(array, "float32", transpose=False)
        array[0, 0] = -1.0
        assert float(tensor[0, 0]) == 0.0, "a caller's array must be copied"


def test_bfloat16_checkpoint_loads_as_its_float32_values(reference_checkpoints, tmp_path):
    """A transformers model saved in bfloat16 (as hub checkpoints often are): our float32 model computes what the
    torch model computes with those bfloat16 weights widened to float32."""
    ref = reference_checkpoints("rotary", "EsmModel")
    half = copy.deepcopy(ref.model)  # a copy, config included: saving in bfloat16 records its dtype in the config
    half.to(torch.bfloat16).save_pretrained(str(tmp_path))
    widened = half.float()
    input_ids, attention_mask = batch_with_padding_and_masks()
    out = TFEsmModel.from_pretrained(tmp_path)(input_ids, attention_mask=attention_mask)
    expected = torch_outputs(widened, input_ids, attention_mask)
    assert_close(out.last_hidden_state, expected.last_hidden_state, 2e-5, "bf16 checkpoint")


def _write_raw(path, header, data=b""):
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


@pytest.mark.parametrize("header, data, message", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, r"'w': data_offsets \[0, 8\]"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, r"do not fit shape \[3\] F32"),
    ({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, "'w' has an unsupported"),
    ({"w": {"dtype": "F32"}}, b"", "'w' has an unsupported or malformed entry"),
    ([1, 2], b"", "the header is not a JSON object"),
])
def test_damaged_safetensors_header_names_the_tensor(tmp_path, header, data, message):
    _write_raw(tmp_path / "model.safetensors", header, data)
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file.*" + message):
        read_state_dict(tmp_path / "model.safetensors")


def test_header_length_past_the_end_is_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 10 ** 6) + b"{}")
    with pytest.raises(CheckpointError, match="header of 1000000 bytes runs past the end"):
        read_state_dict(tmp_path / "model.safetensors")


def test_file_shrunk_after_opening_names_the_tensor(tmp_path):
    save_file({"a": torch.ones(4), "b": torch.ones(1000)}, str(tmp_path / "x.safetensors"))
    state = read_state_dict(tmp_path / "x.safetensors")
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "x.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"tensor '(a|b)' is cut short"):
        [state[name] for name in state]


def test_from_pretrained_initialises_only_the_weights_the_checkpoint_lacks(reference_checkpoints):
    """Loading builds without random values for loaded weights (deferred initialisation); a new head still gets
    its initializer's values: truncated normal with the config's std, zero biases."""
    import numpy as np

    from tf_esm import TFEsmForSequenceClassification

    reference = reference_checkpoints("rotary", "EsmModel")
    model = TFEsmForSequenceClassification.from_pretrained(reference.path, num_labels=3)
    kernel = model.classifier.dense.kernel.numpy()
    assert 0.5 * model.config.initializer_range < kernel.std() < 1.5 * model.config.initializer_range
    assert not model.classifier.dense.bias.numpy().any()
    np.testing.assert_array_equal(model.esm.embeddings.word_embeddings.embeddings.numpy(),
                                  reference.model.embeddings.word_embeddings.weight.detach().numpy())
    from keras.src.backend.common import global_state

    assert not global_state.get_global_attribute("uninitialized_variables")  # nothing left waiting
    assert all(variable.value is not None for variable in model.variables)


def _mapped_ranges(path):
    """(start, end) address ranges of this process's memory maps of `path` (Linux /proc)."""
    ranges, real = [], os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == real:
                start, end = (int(n, 16) for n in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


def test_native_file_holds_the_keras_layout_aligned_and_loads_as_a_memory_map(reference_checkpoints, tmp_path):
    """`save_pretrained` writes version 4 of tf_esm_model.h5 (version 2's layout, the encoder's layers stacked):
    each kernel in the variable's layout, every tensor at a 64-byte-aligned offset. Loading it maps the file: under
    TensorFlow the float32 variables' memory is the mapping (no read, no copy, no transpose), the model equals the PyTorch reference, and `read_state_dict`
    still gives the reference layout. A version-1 file (reference layout) still loads."""
    ref = reference_checkpoints("rotary", "EsmForMaskedLM")
    model = TFEsmForMaskedLM.from_pretrained(ref.path)
    model.save_pretrained(tmp_path / "native")
    path = tmp_path / "native" / "tf_esm_model.h5"
    torch_state = {k: v.numpy() for k, v in ref.model.state_dict().items()}
    with h5py.File(path, "r") as handle:
        assert handle.attrs["format_version"] == 4
        assert "weights" not in handle  # a tf_esm older than version 2 refuses the file instead of misreading it
        kernels = 0
        for name, (variable, transpose) in weights_module.model_variables(model).items():
            dataset = handle["weights_stacked/" + name.replace(".", "/")]
            assert dataset.id.get_offset() % 64 == 0, name
            assert dataset.shape == tuple(variable.shape), name  # the variable's layout
            matrix = transpose and dataset.ndim == matrix_ndim(name)  # (a stack of matrices for the layers)
            assert bool(dataset.attrs.get("keras_layout", False)) == matrix, name
            kernels += bool(dataset.attrs.get("keras_layout", False))
        assert kernels >= 8  # the layers' 6 (stacked), the LM head's, the contact head's

    state = read_state_dict(path)
    for name in ("esm.encoder.layer.0.attention.self.query.weight", "lm_head.dense.weight"):
        stored = state[name.replace(".0.", ".*.")][0] if "layer.0" in name else state[name]  # the layers stacked
        np.testing.assert_array_equal(np.asarray(stored), torch_state[name])  # reference layout

    loaded = TFEsmForMaskedLM.from_pretrained(tmp_path / "native")
    input_ids, attention_mask = batch_with_padding_and_masks()
    expected = torch_outputs(ref.model, input_ids, attention_mask)
    assert_close(loaded(input_ids, attention_mask=attention_mask).logits, expected.logits, 2e-5, "native h5")
    del state  # (it holds the reader, which holds the mapping)
    if keras.backend.backend() == "tensorflow" and sys.platform.startswith("linux"):
        ranges = _mapped_ranges(path)
        assert ranges, "the weight file is not memory-mapped"
        # `variable.value` is the tf.Variable; reading it gives a tensor on its buffer (NumPy shares that buffer)
        inside = [any(start <= np.asarray(v.value.value()).ctypes.data < end for start, end in ranges)
                  for v in loaded.weights if v.dtype == "float32"]
        assert all(inside), f"{inside.count(False)} of {len(inside)} variables were copied out of the mapping"
    version_1 = tmp_path / "v1" / "tf_esm_model.h5"
    version_1.parent.mkdir()
    for filename in ("config.json", "vocab.txt"):
        shutil.copyfile(tmp_path / "native" / filename, version_1.parent / filename)
    with h5py.File(version_1, "w") as handle:  # what tf_esm wrote before version 2
        handle.attrs["format"] = "tf_esm"
        handle.attrs["format_version"] = 1
        for name, value in weights_module.model_state_dict(model).items():
            handle.create_dataset("weights/" + name.replace(".", "/"), data=value)
    old = TFEsmForMaskedLM.from_pretrained(version_1.parent)
    assert_close(old(input_ids, attention_mask=attention_mask).logits, expected.logits, 2e-5, "version-1 h5")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_mapped_weights_cast_on_loading_equal_the_file_rounded_and_the_mapping_goes_with_the_model(tmp_path):
    """Loading a tf_esm file in bfloat16 copies every weight (cast): the weights equal the file's values rounded,
    and the file mapping goes away with the model."""
    from tf_esm import EsmConfig

    config = EsmConfig(vocab_size=33, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=1024, position_embedding_type="rotary")
    model = TFEsmModel(config, add_pooling_layer=False)
    model.build()
    model.save_pretrained(tmp_path)
    path = tmp_path / "tf_esm_model.h5"
    half = TFEsmModel.from_pretrained(tmp_path, precision="bfloat16", add_pooling_layer=False)
    for ours, theirs in zip(half.weights, model.weights):
        expected = keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(theirs.value, ours.dtype), "float32"))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras.ops.cast(ours.value, "float32")), expected)
    del half
    gc.collect()
    assert not _mapped_ranges(path), "the mapping outlived the model"


def test_a_load_report_names_a_few_tensors_and_counts_the_rest(tmp_path, caplog):
    """An ESMFold checkpoint loaded as an encoder leaves its trunk and heads unused: the warning names five of
    them and says how many there are, rather than listing every one (thousands for the real model)."""
    import logging

    from tests.test_folding_model import _make_reference
    from tf_esm.io.weights import name_list

    assert name_list(["a", "b"]) == "[a, b]"
    assert name_list([f"t{i}" for i in range(9)]) == "[t0, t1, t2, t3, t4, ... and 4 more (9 in all)]"
    _make_reference(tmp_path, fp16_esm=False)
    with caplog.at_level(logging.WARNING, logger="tf_esm"):
        TFEsmModel.from_pretrained(str(tmp_path), add_pooling_layer=False)
    unused = [record.getMessage() for record in caplog.records if "did not use the trained" in record.getMessage()]
    assert len(unused) == 1 and "more (" in unused[0] and "in all)" in unused[0], caplog.text
    listed = unused[0].split(": [", 1)[1].split(", ... and", 1)[0]
    assert listed.count(", ") == 4  # five names



# A model directory and LoRA adapter saved by tf_esm when its Keras layers carried the reference's '.' in their names
# (`encoder/layer.0/...`; now `layer-0`: the PyTorch backend refuses a '.' in a variable's path).
# conversion_scripts/make_dotted_name_fixture.py wrote them, at the last commit with those names.
DOTTED_NAMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "dotted_layer_names")


def _reference_from_tf_esm_file(directory):
    """transformers' model for `directory`'s config, holding the tensors of its tf_esm weight file as h5py reads
    them (datasets named by reference names, `/` for `.`; a `keras_layout` matrix is the transposed reference one)."""
    import transformers

    state = {}

    def visit(location, item):
        if isinstance(item, h5py.Dataset):
            value = item[()]
            state[location.replace("/", ".")] = value.T if item.attrs.get("keras_layout", False) else value

    with h5py.File(os.path.join(directory, "tf_esm_model.h5"), "r") as handle:
        assert handle.attrs["format_version"] == 2
        handle["weights_keras_layout"].visititems(visit)
    config = transformers.EsmConfig.from_pretrained(directory)
    config._attn_implementation = "eager"
    model = transformers.EsmForSequenceClassification(config).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                                                 for k, v in state.items()}, strict=False)
    assert not unexpected and all("inv_freq" in name or "position_ids" in name for name in missing), missing
    return model


def test_a_checkpoint_and_adapter_saved_with_dotted_layer_names_load(tmp_path):
    from safetensors.numpy import load_file

    from tf_esm import TFEsmForSequenceClassification

    model = TFEsmForSequenceClassification.from_pretrained(DOTTED_NAMES, strict=True)
    assert not [variable.path for variable in model.weights if "." in variable.path]
    reference = _reference_from_tf_esm_file(DOTTED_NAMES)
    input_ids, attention_mask = batch_with_padding_and_masks()
    assert_close(model(input_ids, attention_mask=attention_mask).logits,
                 torch_outputs(reference, input_ids, attention_mask).logits, 2e-5, "logits, dotted-name checkpoint")

    # The adapter's tensors are keyed by the dotted Keras paths; loaded, the model computes the reference's
    # projections plus alpha / rank * (a @ b) (Keras' LoRA), and the adapter's classifier head.
    adapter = load_file(os.path.join(DOTTED_NAMES, "adapter.safetensors"))
    assert "esm/encoder/layer.0/attention/self/query/lora_kernel_a" in adapter
    model.load_lora_weights(os.path.join(DOTTED_NAMES, "adapter.safetensors"))
    scale = 4 / 2  # the adapter's alpha / rank
    with torch.no_grad():
        for index, layer in enumerate(reference.esm.encoder.layer):
            for target in ("query", "value"):
                prefix = f"esm/encoder/layer.{index}/attention/self/{target}/"
                update = adapter[prefix + "lora_kernel_a"] @ adapter[prefix + "lora_kernel_b"]
                getattr(layer.attention.self, target).weight.add_(torch.from_numpy(scale * update.T))
        for name in ("dense", "out_proj"):
            getattr(reference.classifier, name).weight.copy_(torch.from_numpy(adapter[f"classifier/{name}/kernel"].T))
            getattr(reference.classifier, name).bias.copy_(torch.from_numpy(adapter[f"classifier/{name}/bias"]))
    assert_close(model(input_ids, attention_mask=attention_mask).logits,
                 torch_outputs(reference, input_ids, attention_mask).logits, 2e-5, "logits, dotted-name LoRA adapter")
    # Saved again, the adapter keeps the same keys (the reference's '.'), whatever the Keras names.
    model.save_lora_weights(str(tmp_path / "again.safetensors"))
    assert sorted(load_file(str(tmp_path / "again.safetensors"))) == sorted(adapter)
