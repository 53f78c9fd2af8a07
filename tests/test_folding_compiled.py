"""The inference paths of `TFEsmForProteinFolding` under TensorFlow: the default eager one, and the compiled one
(`compiled=True`): inputs padded to a length bucket, one `tf.function` per (bucket, chunk size). It must equal the eager path, padding
added for bucketing must not change any output, and `chunk_size` must still chunk inside the graph."""

import numpy as np
import pytest
import tensorflow as tf
import torch

from tests._reference import assert_within, record_parity, share_directory, share_model
from tests.folding_reference import max_abs_diff
from tests.test_folding_model import ATOL, SEQUENCES, _assert_same_atoms, _batch, _make_reference
from tf_esm.folding import TFEsmForProteinFolding, compiled_tf
from tf_esm.folding.model import DEFAULT_LENGTH_BUCKETS
from tf_esm.modeling.buckets import bucket_length
from tf_esm.folding.primitives import chunked

# Compiled vs eager (graph-optimised kernels) differ as much as eager vs the PyTorch reference: positions 1.2e-5
# Angstrom, pLDDT 1.8e-7, pTM 1.9e-9 at most (measured). So the tolerances are test_folding_model.ATOL, plus the
# outputs that test does not compare (measured value in the comment).
TOLERANCE = dict(
    ATOL,
    aligned_confidence_probs=5e-7,  # measured 5.2e-8
    lddt_head=1e-6,  # 1.8e-7
    ptm_logits=1e-5,  # 1.4e-6
    max_predicted_aligned_error=0.0,  # 0: the largest bin centre, a constant
)
INTEGER_OUTPUTS = ("aatype", "atom14_atom_exists", "atom37_atom_exists", "residx_atom14_to_atom37",
                   "residx_atom37_to_atom14", "residue_index", "chain_index")


@pytest.fixture(scope="module")
def folding_pair(tmp_path_factory):
    directory = tmp_path_factory.mktemp("esmfold_compiled")
    reference = _make_reference(directory, fp16_esm=False)
    share_directory(directory)
    share_model("test_folding_compiled.folding_pair", reference)
    model = TFEsmForProteinFolding.from_pretrained(str(directory), strict=True)
    model.compiled_inference = True  # these tests are about the compiled program: no eager first call ("auto")
    return reference, model, str(directory)


def _max_differences(ours, expected):
    assert set(ours.keys()) == set(expected.keys())
    differences = {}
    for key in expected.keys():
        a, b = np.asarray(ours[key]), np.asarray(expected[key])
        assert a.shape == b.shape, (key, a.shape, b.shape)
        if key in INTEGER_OUTPUTS:
            np.testing.assert_array_equal(a, b, err_msg=key)
        else:
            differences[key] = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
    return differences


def _assert_close(ours, expected):
    differences = _max_differences(ours, expected)
    assert set(differences) == set(TOLERANCE)
    for key, value in differences.items():
        record_parity(key, value)
    failed = {key: (value, TOLERANCE[key]) for key, value in differences.items() if not value <= TOLERANCE[key]}
    assert not failed, f"max abs differences over tolerance (difference, tolerance): {failed}"
    return differences


def test_bucket_lengths():
    assert [bucket_length(n) for n in (1, 16, 17, 64, 65, 200, 2048)] == [16, 16, 32, 64, 96, 256, 2048]
    assert bucket_length(2049) == 2560 and bucket_length(3000) == 3072  # beyond: steps of 512
    assert bucket_length(5, buckets=(8,)) == 8 and bucket_length(9, buckets=(8,)) == 16
    assert list(DEFAULT_LENGTH_BUCKETS) == sorted(DEFAULT_LENGTH_BUCKETS)


def test_compiled_infer_equals_eager_and_reference_on_a_padded_batch(folding_pair):
    reference, _, directory = folding_pair
    model = TFEsmForProteinFolding.from_pretrained(directory, strict=True)  # no graph traced yet, whatever ran before
    model.compiled_inference = True
    compiled = model.infer(SEQUENCES)  # lengths 18, 10, 5: padded to 18 as in the reference, then to bucket 32
    assert model.inference_trace_count == 1
    eager = model.infer(SEQUENCES, compiled=False)
    _assert_close(compiled, eager)
    assert compiled["positions"].shape[2] == max(map(len, SEQUENCES))  # cropped back from the bucket
    compiled_pdbs = model.output_to_pdb(compiled)
    for compiled_text, eager_text in zip(compiled_pdbs, model.output_to_pdb(eager)):
        _assert_same_atoms(compiled_text, eager_text)
    with torch.no_grad():
        for compiled_text, reference_text in zip(compiled_pdbs, reference.infer_pdbs(SEQUENCES)):
            _assert_same_atoms(compiled_text, reference_text)


def test_the_default_eager_path_traces_each_layer_stack_and_the_structure_module_once(folding_pair, monkeypatch):
    """The default under TensorFlow (`compiled_inference = None`): every call eager at its own length, each stack
    of identical layers (the stem's layers, the trunk's blocks) through one traced function and the structure
    module through one program for any length, on the calling thread; no whole-model compile."""
    from tf_esm.modeling import layers_tf

    _, _, directory = folding_pair
    model = TFEsmForProteinFolding.from_pretrained(directory, strict=True)
    assert model.compiled_inference is None
    stacks = []
    original_stack = layers_tf.apply_stack

    def recording_stack(stack, *args, **kwargs):  # the stem's layers and the trunk's blocks (each a LayerStack)
        name = "stem" if stack is model.esm.encoder.layer else "trunk"
        stacks.append((tf.executing_eagerly(), layers_tf.traceable_stack(stack), name))
        return original_stack(stack, *args, **kwargs)

    monkeypatch.setattr(layers_tf, "apply_stack", recording_stack)
    traced, original_traced = [], compiled_tf.traced_structure_module

    def recording_traced(module):
        program = original_traced(module)
        if tf.executing_eagerly():  # not the program's own trace, which runs the module's layers
            traced.append(program is not None)
        return program

    monkeypatch.setattr(compiled_tf, "traced_structure_module", recording_traced)
    first = model.infer(SEQUENCES)
    assert model.inference_trace_count == 0
    assert {name for _, _, name in stacks} == {"stem", "trunk"}, stacks
    assert all(eager and traced_once for eager, traced_once, _ in stacks), stacks
    assert traced and all(traced)  # each trunk pass (recycling) calls the structure module's program
    model.infer("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQV")  # another length: no compile either
    assert model.inference_trace_count == 0
    # One program serves the structure module at every length.
    assert compiled_tf._structure_program(model.trunk.structure_module).experimental_get_tracing_count() == 1
    _assert_close(first, _reference_outputs(folding_pair))
    with pytest.raises(ValueError, match="compiled must be True, False or 'auto'"):
        model.infer(SEQUENCES, compiled="yes")


def _reference_outputs(folding_pair):
    """The outputs of SEQUENCES through the compiled program of a fresh model (the other path)."""
    _, _, directory = folding_pair
    model = TFEsmForProteinFolding.from_pretrained(directory, strict=True)
    return model.infer(SEQUENCES, compiled=True)


def test_auto_is_an_opt_in_whose_history_dependence_is_bounded(folding_pair):
    """"auto" (opt-in): the first call at a length bucket eager, later ones compiled, so the outputs of one input
    depend on what ran before; the two differ by no more than the eager and compiled paths do (TOLERANCE)."""
    _, _, directory = folding_pair
    model = TFEsmForProteinFolding.from_pretrained(directory, strict=True)
    model.compiled_inference = "auto"
    first = model.infer(SEQUENCES)  # bucket 32: eager
    assert model.inference_trace_count == 0
    second = model.infer(SEQUENCES)  # compiled
    assert model.inference_trace_count == 1
    model.infer(SEQUENCES[1:])  # still bucket 32: the same program
    assert model.inference_trace_count == 1
    differences = _assert_close(first, second)
    assert max(differences.values()) > 0  # the two paths are not bitwise equal: why "auto" is not the default


def test_one_graph_serves_a_bucket_whatever_the_batch_size_and_recycles(folding_pair):
    _, model, _ = folding_pair
    model.infer(SEQUENCES[:1])  # bucket 32 (traced here unless an earlier test did)
    traces = model.inference_trace_count
    aatype, mask = _batch([SEQUENCES[0] + "GSHMLEDPVKL", SEQUENCES[1]])  # length 29: still bucket 32
    masking_pattern = np.zeros_like(aatype)
    masking_pattern[0, 3] = masking_pattern[1, 1] = 1
    compiled = model(aatype, attention_mask=mask, masking_pattern=masking_pattern, num_recycles=0)
    model.infer_pdbs(SEQUENCES[1::-1], num_recycles=1)  # longest 18: bucket 32
    assert model.inference_trace_count == traces
    eager = model(aatype, attention_mask=mask, masking_pattern=masking_pattern, num_recycles=0, compiled=False)
    _assert_close(compiled, eager)


def test_bucket_padding_changes_no_output(folding_pair):
    """Padding appended for a bucket is hidden from every residue: with `unpadded_length` the outputs (padding
    rows of shorter sequences and pTM included) equal those of the unpadded batch; without it, the extra
    positions are ordinary masked padding and the real residues' outputs are unchanged all the same."""
    _, model, _ = folding_pair
    aatype, mask = _batch(SEQUENCES)
    length = aatype.shape[1]
    extra = 9
    padded_aatype = np.pad(aatype, ((0, 0), (0, extra)))
    padded_mask = np.pad(mask, ((0, 0), (0, extra)))
    unpadded = model(aatype, attention_mask=mask, num_recycles=0, compiled=False)
    cropped = model(padded_aatype, attention_mask=padded_mask, num_recycles=0, unpadded_length=length,
                    compiled=False)
    _assert_close(cropped, unpadded)  # measured: positions 7.6e-6, pLDDT 1.2e-7, pTM 9.3e-10

    padded = model(padded_aatype, attention_mask=padded_mask, num_recycles=0, compiled=False)
    for row, sequence in enumerate(SEQUENCES):
        n = len(sequence)
        for key in ("positions", "frames", "states"):
            real = np.asarray(padded[key])[:, row, :n]
            assert_within(f"padded {key}", max_abs_diff(real, np.asarray(unpadded[key])[:, row, :n]), ATOL[key])
        for key in ("plddt", "s_s"):
            real = np.asarray(padded[key])[row, :n]
            assert_within(f"padded {key}", max_abs_diff(real, np.asarray(unpadded[key])[row, :n]), ATOL[key])
        pae = np.asarray(padded["predicted_aligned_error"])[row, :n, :n]
        assert_within("padded predicted_aligned_error",
                      max_abs_diff(pae, np.asarray(unpadded["predicted_aligned_error"])[row, :n, :n]),
                      ATOL["predicted_aligned_error"])


def test_chunk_size_is_effective_inside_the_graph(folding_pair):
    _, model, _ = folding_pair
    aatype, mask = _batch(SEQUENCES)
    whole = model(aatype, attention_mask=mask, num_recycles=0)
    traces = model.inference_trace_count
    chunked_output = model(aatype, attention_mask=mask, num_recycles=0, chunk_size=5)
    assert model.inference_trace_count == traces + 1  # a new chunk size is a new graph
    _assert_close(chunked_output, whole)  # measured 0 (eager chunking: positions 6.7e-6)


def test_chunked_runs_as_one_sequential_loop_in_a_graph():
    """Inside `tf.function` the chunk function is traced once and runs in a loop, for static or unknown
    lengths alike (eagerly it is a Python loop over static slices)."""
    calls = []

    def double_rows(rows, row_bias):
        calls.append(rows.shape)
        return 2.0 * rows + row_bias

    x = np.random.default_rng(0).normal(size=(2, 13, 3)).astype("float32")
    bias = np.ones((1, 1, 3), "float32")  # size 1 along the chunked axis: passed whole
    expected = 2.0 * x + bias
    for length in (13, None):
        calls.clear()
        function = tf.function(lambda t: chunked(double_rows, (t, bias), chunk_size=5))
        graph = function.get_concrete_function(tf.TensorSpec((None, length, 3), tf.float32))
        assert len(calls) == 1 and calls[0][1] == 5
        loops = [f for f in graph.graph.as_graph_def().library.function if "while_body" in f.signature.name]
        assert loops
        np.testing.assert_allclose(graph(tf.constant(x)).numpy(), expected, atol=1e-6)
    calls.clear()
    np.testing.assert_allclose(np.asarray(chunked(double_rows, (x, bias), chunk_size=5)), expected, atol=1e-6)
    assert [shape[1] for shape in calls] == [5, 5, 3]


def test_training_calls_stay_eager(folding_pair):
    _, model, _ = folding_pair
    aatype, mask = _batch(SEQUENCES[2:])
    traces = model.inference_trace_count
    output = model(aatype, attention_mask=mask, num_recycles=0, training=True)
    assert np.all(np.isfinite(np.asarray(output["positions"])))
    assert model.inference_trace_count == traces
