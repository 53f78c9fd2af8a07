"""Batched embedding extraction (`tf_esm.pipelines.inference`) gives the numbers of a direct per-sequence model call."""

import collections

import numpy as np
import pytest

from tests._reference import torch_outputs
from tf_esm import TFEsmForMaskedLM, TFEsmModel
from tf_esm.backend import to_numpy
from tf_esm.pipelines.inference import bucket_length, embed_sequences, iter_embeddings, trace_count, traced_shapes
from tf_esm.modeling.buckets import TOKEN_LENGTH_BUCKETS

RESIDUES = "LAGVSERTIDPKQNFYMHWC"


def random_sequences(rng, lengths):
    return ["".join(rng.choice(list(RESIDUES), size=length)) for length in lengths]


def encode(sequence):
    from tf_esm.configuration import ESM2_VOCAB

    vocab = {token: index for index, token in enumerate(ESM2_VOCAB)}
    return np.asarray([[0] + [vocab[letter] for letter in sequence] + [2]], dtype=np.int32)


@pytest.fixture(scope="module")
def rotary(reference_checkpoints):
    reference = reference_checkpoints("rotary")
    return reference, TFEsmForMaskedLM.from_pretrained(reference.path)


# 150 tokens: several sequences per batch (padded, masked); 40: mostly one per batch (unpadded, no mask).
# streams: batches run one at a time, three at once from worker threads, or the default (one per core).
@pytest.mark.parametrize("max_tokens_per_batch,streams", [(150, 1), (150, 3), (40, None)])
def test_matches_direct_calls_and_reference_in_input_order(rotary, rng, max_tokens_per_batch, streams):
    reference, model = rotary
    lengths = rng.permutation([5, 40, 17, 1, 33, 60, 9, 22])
    sequences = random_sequences(rng, lengths)
    results = embed_sequences(model, sequences, repr_layers=(0, 1, -1), include=("mean", "per_tok", "bos"),
                              max_tokens_per_batch=max_tokens_per_batch, streams=streams)
    assert len(results) == len(sequences)
    for sequence, result in zip(sequences, results):
        n = len(sequence)
        assert result["length"] == n and result["truncated"] is False
        ids = encode(sequence)
        direct = model.esm(ids, output_hidden_states=True).hidden_states
        expected = torch_outputs(reference.model, ids, output_hidden_states=True).hidden_states
        assert sorted(result["representations"]) == [0, 1, 2]  # absolute indices: -1 of 2 layers is 2
        for index in (0, 1, 2):
            per_tok = result["representations"][index]
            assert per_tok.shape == (n, 32)
            np.testing.assert_allclose(per_tok, to_numpy(direct[index])[0, 1:n + 1], atol=1e-5)
            np.testing.assert_allclose(per_tok, expected[index][0, 1:n + 1].numpy(), atol=1e-5)
            np.testing.assert_allclose(result["mean_representations"][index], per_tok.mean(0), atol=1e-5)
            np.testing.assert_allclose(result["bos_representations"][index], to_numpy(direct[index])[0, 0],
                                       atol=1e-5)


def test_truncation_keeps_the_first_residues(rotary, rng):
    _, model = rotary
    sequences = random_sequences(rng, [30, 12])
    results = embed_sequences(model, sequences, include=("per_tok", "mean"), truncation_seq_length=20)
    assert [r["length"] for r in results] == [20, 12]
    assert [r["truncated"] for r in results] == [True, False]
    direct = model.esm(encode(sequences[0][:20]), output_hidden_states=True).hidden_states[-1]
    np.testing.assert_allclose(results[0]["representations"][2], to_numpy(direct)[0, 1:21], atol=1e-5)
    np.testing.assert_allclose(results[0]["mean_representations"][2], to_numpy(direct)[0, 1:21].mean(0),
                               atol=1e-5)


def test_contacts_match_predict_contacts(rotary, rng):
    reference, model = rotary
    sequences = random_sequences(rng, [25, 8, 14])
    results = embed_sequences(model, sequences, include=("contacts",), max_tokens_per_batch=200)
    for sequence, result in zip(sequences, results):
        ids = encode(sequence)
        expected = to_numpy(model.predict_contacts(ids))[0]
        assert result["contacts"].shape == (len(sequence), len(sequence))
        np.testing.assert_allclose(result["contacts"], expected, atol=1e-5)
        torch_contacts = reference.model.predict_contacts(*_torch_ids(ids)).detach().numpy()[0]
        np.testing.assert_allclose(result["contacts"], torch_contacts, atol=1e-5)


def _torch_ids(ids):
    import torch

    ids = torch.as_tensor(ids, dtype=torch.long)
    return ids, torch.ones_like(ids)


def test_absolute_positions_model(reference_checkpoints, rng):
    reference = reference_checkpoints("absolute", model_class="EsmModel")
    model = TFEsmModel.from_pretrained(reference.path)
    sequences = random_sequences(rng, [50, 3, 21])
    results = embed_sequences(model, sequences, include=("per_tok",), repr_layers=(2,))
    for sequence, result in zip(sequences, results):
        expected = torch_outputs(reference.model, encode(sequence), output_hidden_states=True).hidden_states[2]
        np.testing.assert_allclose(result["representations"][2], expected[0, 1:-1].numpy(), atol=1e-5)


def test_graphs_are_reused_across_lengths_and_calls(reference_checkpoints, rng):
    reference = reference_checkpoints("rotary", model_class="EsmModel")
    model = TFEsmModel.from_pretrained(reference.path)
    lengths = rng.integers(1, 200, size=30)
    sequences = random_sequences(rng, lengths)
    progress = []
    seen = dict(iter_embeddings(model, sequences, max_tokens_per_batch=512,
                                progress_callback=lambda *done: progress.append(done)))
    assert sorted(seen) == list(range(30))
    assert progress[-1] == (30, int(lengths.sum()))
    if __import__("keras").backend.backend() == "torch":  # eager passes: nothing is traced
        assert trace_count(model) == 0 and traced_shapes(model) == []
        return
    buckets = {bucket_length(int(length) + 2, TOKEN_LENGTH_BUCKETS) for length in lengths}
    assert 0 < trace_count(model) <= len(buckets)
    embed_sequences(model, random_sequences(rng, rng.integers(1, 200, size=30)), max_tokens_per_batch=512)
    assert trace_count(model) <= len({bucket_length(n, TOKEN_LENGTH_BUCKETS) for n in range(3, 202)})
    before = trace_count(model)
    embed_sequences(model, sequences, max_tokens_per_batch=512)  # shapes seen before: nothing new is compiled
    assert trace_count(model) == before


def test_compiled_programs_are_buckets_times_row_counts_not_one_per_batch(reference_checkpoints, rng):
    """Under TensorFlow one shape-polymorphic graph serves every batch; under PyTorch the passes run eagerly. Under
    JAX each input shape is a program compiled once: batches are padded to bucket lengths and to power-of-two row
    counts (or the budget's rows), so the programs are bounded by buckets x row counts whatever the number of
    batches."""
    import keras

    from tf_esm.pipelines.inference import _runner

    reference = reference_checkpoints("rotary", model_class="EsmModel")
    model = TFEsmModel.from_pretrained(reference.path)
    lengths = rng.integers(1, 60, size=60)
    sequences = random_sequences(rng, lengths)
    batches = []
    results = embed_sequences(model, sequences, max_tokens_per_batch=128, include=("mean",),
                              progress_callback=lambda *done: batches.append(done))
    for index in (0, 59):
        direct = model.esm(encode(sequences[index]), output_hidden_states=True).hidden_states[-1]
        np.testing.assert_allclose(results[index]["mean_representations"][2], to_numpy(direct)[0, 1:-1].mean(0),
                                   atol=1e-5)
    shapes = traced_shapes(model)
    assert len(shapes) == trace_count(model) and len(batches) >= 10
    if keras.backend.backend() == "tensorflow":
        assert shapes == [(None, None)]
        return
    if keras.backend.backend() == "torch":  # eager passes: nothing is compiled
        assert shapes == []
        return
    runner = _runner(model)
    used_buckets = {bucket_length(int(n) + 2, TOKEN_LENGTH_BUCKETS) for n in lengths}
    bound = sum(len(runner.row_counts(length, 128)) for length in used_buckets)
    for rows, length in shapes:
        assert length in TOKEN_LENGTH_BUCKETS and rows in runner.row_counts(length, 128), (rows, length)
    # A shape is compiled once per variant (batches with padding are masked, batches without are not).
    assert max(collections.Counter(shapes).values()) <= 2
    assert len(shapes) <= 2 * bound and len(shapes) < len(batches), (shapes, len(batches))
    before = len(shapes)
    embed_sequences(model, random_sequences(rng, rng.permutation(lengths)), max_tokens_per_batch=128, include=("mean",))
    assert trace_count(model) == before  # new sequences of the same lengths: nothing new is compiled


def test_a_model_never_called_before_embeds(reference_checkpoints):
    """A freshly constructed model builds its variables before the forward pass is compiled (under JAX, variables
    created inside the traced function leaked tracers)."""
    from tf_esm.configuration import EsmConfig

    config = EsmConfig.from_dict(reference_checkpoints("rotary").config.to_dict())
    model = TFEsmModel(config, add_pooling_layer=False)
    result = embed_sequences(model, ["MKTAYIAK"], include=("per_tok",))[0]
    direct = model.esm(encode("MKTAYIAK"), output_hidden_states=True).hidden_states[-1]
    np.testing.assert_allclose(result["representations"][2], to_numpy(direct)[0, 1:-1], atol=1e-5)


def test_rejects_bad_arguments(rotary):
    _, model = rotary
    with pytest.raises(ValueError, match="repr_layers"):
        embed_sequences(model, ["MK"], repr_layers=(5,))
    with pytest.raises(ValueError, match="include"):
        embed_sequences(model, ["MK"], include=("logits",))


def test_tokenizer_vocabulary_gives_the_same_results(rotary, rng, tmp_path):
    from tf_esm.tokenization import EsmTokenizer, write_default_vocab

    _, model = rotary
    sequences = random_sequences(rng, [11, 4])
    tokenizer = EsmTokenizer(write_default_vocab(str(tmp_path)))
    with_tokenizer = embed_sequences(model, sequences, include=("mean",), tokenizer=tokenizer)
    default = embed_sequences(model, sequences, include=("mean",))
    for a, b in zip(with_tokenizer, default):
        np.testing.assert_array_equal(a["mean_representations"][2], b["mean_representations"][2])


def _stream_threads():
    import threading

    return [thread for thread in threading.enumerate() if thread.name.startswith("tf_esm_embed")]


def test_streams_stop_cleanly_when_the_caller_stops_or_a_batch_fails(rotary, rng, monkeypatch):
    from tf_esm.pipelines import inference

    _, model = rotary
    sequences = random_sequences(rng, [30] * 12)
    embeddings = iter_embeddings(model, sequences, max_tokens_per_batch=40, streams=2)
    index, first = next(embeddings)
    assert first["mean_representations"][2].shape == (32,)
    embeddings.close()  # e.g. the CLI interrupted: queued batches are dropped, running ones finish
    assert _stream_threads() == []

    real_function = inference._Runner.function
    calls = []

    def failing_function(self, *args):
        function = real_function(self, *args)

        def run(input_ids, lengths):
            calls.append(len(lengths))
            if len(calls) == 3:
                raise RuntimeError("batch 3 failed")
            return function(input_ids, lengths)

        return run

    monkeypatch.setattr(inference._Runner, "function", failing_function)
    done = []
    with pytest.raises(RuntimeError, match="batch 3 failed"):
        for index, _ in iter_embeddings(model, sequences, max_tokens_per_batch=40, streams=2):
            done.append(index)
    assert len(done) == 2  # the two batches before the failing one were delivered, in plan order
    assert _stream_threads() == []
    with pytest.raises(ValueError, match="streams"):
        embed_sequences(model, ["MK"], streams=0)



@pytest.mark.skipif(__import__("keras").backend.backend() != "jax", reason="the layer scan is JAX's compiled path")
def test_jax_programs_run_the_encoder_layers_as_one_scan(reference_checkpoints, rng, monkeypatch):
    """Under JAX the embedding programs run the encoder's layers (a LayerStack) as one `lax.scan` over their
    stacked weights (tf_esm/modeling/encoder_jax.py): every layer's hidden states, means and contacts equal the unrolled program's
    and a direct call's, to fp32 rounding (XLA fuses the two programs differently)."""
    from tf_esm.pipelines.inference import _runner
    from tf_esm.modeling import encoder_jax

    reference = reference_checkpoints("rotary", model_class="EsmModel")
    sequences = random_sequences(rng, [5, 17, 30, 9])
    options = dict(repr_layers=(0, 1, 2), include=("mean", "per_tok", "contacts"), max_tokens_per_batch=128)
    programs, results = {}, {}
    for scan in (True, False):
        monkeypatch.setattr(encoder_jax, "SCAN_STACKS", scan)
        model = TFEsmModel.from_pretrained(reference.path)
        results[scan] = embed_sequences(model, sequences, **options)
        function = _runner(model).function((0, 1, 2), ("contacts", "mean", "per_tok"), True)
        ids = np.zeros((2, 32), dtype=np.int32)
        programs[scan] = function.jitted.lower(*function.arguments(ids, np.zeros(2, np.int32))).as_text()
    assert "stablehlo.while" in programs[True] and "stablehlo.while" not in programs[False]
    model = TFEsmModel.from_pretrained(reference.path)
    for index, sequence in enumerate(sequences):
        direct = model.esm(encode(sequence), output_hidden_states=True)
        contacts = to_numpy(model.esm.predict_contacts(encode(sequence)))[0]
        scanned, unrolled = results[True][index], results[False][index]
        for layer in (0, 1, 2):
            np.testing.assert_allclose(scanned["representations"][layer], unrolled["representations"][layer],
                                       atol=1e-5)
            np.testing.assert_allclose(scanned["representations"][layer],
                                       to_numpy(direct.hidden_states[layer])[0, 1:-1], atol=1e-5)
            np.testing.assert_allclose(scanned["mean_representations"][layer],
                                       unrolled["mean_representations"][layer], atol=1e-5)
        np.testing.assert_allclose(scanned["contacts"], unrolled["contacts"], atol=1e-5)
        np.testing.assert_allclose(scanned["contacts"], contacts, atol=1e-5)


@pytest.mark.skipif(__import__("keras").backend.backend() != "jax", reason="JAX's matmul precision")
def test_jax_programs_use_full_float32_products_on_a_gpu(reference_checkpoints, monkeypatch):
    """On a GPU JAX's default float32 product is TensorFloat-32 (~1e-3 off the reference): tf_esm's programs are
    traced at "highest" there unless the user chose a precision. (The GPU is simulated: only tracing is checked.)"""
    import jax

    from tf_esm.pipelines.inference import _runner

    reference = reference_checkpoints("rotary", model_class="EsmModel")
    ids, lengths = np.zeros((1, 16), dtype=np.int32), np.zeros(1, np.int32)

    def products(**settings):
        model = TFEsmModel.from_pretrained(reference.path)
        function = _runner(model).function((2,), ("mean",), True)
        with jax.default_matmul_precision(settings["user"]) if settings else __import__("contextlib").nullcontext():
            text = function.jitted.lower(*function.arguments(ids, lengths)).as_text()
        return {line.split("precision = ")[1].split("]")[0] for line in text.splitlines() if "dot_general" in line
                and "precision = " in line}

    assert products() == {"[DEFAULT, DEFAULT"}  # on a CPU float32 products are float32 already
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert products() == {"[HIGHEST, HIGHEST"}
    assert products(user="tensorfloat32") == {"[HIGH, HIGH"}  # the user's choice wins (TF32 is HIGH)
