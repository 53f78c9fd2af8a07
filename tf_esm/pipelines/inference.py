"""Fast batched embedding extraction: per-residue, mean and `<cls>` representations and contact maps.

`iter_embeddings` is what `tf-esm embed` runs. It sorts the sequences by length (longest first), cuts them into
batches under a token budget and runs every batch through one compiled forward pass that returns only what was asked
for (means are pooled inside the graph; attention probabilities are computed only for contacts). Under TensorFlow
that pass is a single shape-polymorphic graph, traced once per model and set of outputs whatever the lengths; where
programs are compiled per shape (JAX, XLA) batches are padded to a few bucket lengths so that a handful are
compiled. `trace_count(model)` says how many. Under PyTorch the pass runs eagerly (nothing is traced), without
recording gradients. Results are the numbers of a direct call of the model on each sequence
alone (fair-esm's `esm-extract` semantics; means exclude `<cls>`, `<eos>` and padding), in whatever batch they
land. A sequence longer than the model's context is embedded in overlapping windows by default (`long`), or
truncated, or refused.

On a CPU several batches run at once, one per core (`streams`): single-threaded kernels on separate batches keep
every core busy where small per-op work (softmax, layer norms, narrow attention heads) scales poorly across threads.
For the fastest CPU runs, call `configure_cpu_threads()` before TensorFlow starts (before building a model); it
makes each op single-threaded and lets as many ops run at once as there are cores. `tf-esm embed` does this.

Examples:

```python
>>> from tf_esm import TFEsmModel
>>> from tf_esm.pipelines.inference import embed_sequences
>>> model = TFEsmModel.from_pretrained("facebook/esm2_t6_8M_UR50D")
>>> results = embed_sequences(model, ["MKTAYIAK", "GSHMLE"], include=("mean", "per_tok"))
>>> results[0]["mean_representations"][6].shape, results[1]["representations"][6].shape
((320,), (6, 320))
```
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from tf_esm._deprecation import renamed_keywords
from tf_esm.backend import no_gradients
from tf_esm.configuration import default_vocab
from tf_esm.io.embedding_stores import INCLUDE_CHOICES
from tf_esm.modeling.attention import uses_blocked_attention
from tf_esm.modeling.buckets import TOKEN_LENGTH_BUCKETS, bucket_length
from tf_esm.modeling.precision import runs_on_cpu
from tf_esm.modeling.pretrained import main_layer_of
from tf_esm.pipelines.windows import (
    LONG_POLICIES, check_window, context_residues, default_overlap, embedding_windows, most_central_window)


# TensorFlow without XLA runs one shape-polymorphic graph; batches there are padded to a multiple of this only.
_ALIGNMENT = 8
# On a CPU, forward passes of about this many tokens (rows x padded length) run fastest: the activations and
# attention scores of one pass stay in cache. One stream at a time on all cores: 1024; one stream per core: 512
# (measured at every ESM-2 size up to 150M; figures in benchmarks/RESULTS.md, "Pass sizes and threads").
# `max_tokens_per_batch` still caps the pass size; this only splits batches further.
_CPU_PASS_TOKENS = 1024
_CPU_STREAM_PASS_TOKENS = 512
# Compile the TensorFlow graph with XLA. Off: on CPU, XLA's dot emitter is ~3x slower than the oneDNN kernels.
_JIT = False


class _Runner:
    """One model's compiled forward passes, one per (layers, outputs) requested.

    Under TensorFlow the graph has a (None, None) input signature: traced once, it serves every batch shape, so
    batches need no more padding than their longest member; under PyTorch the pass runs eagerly, padded the same
    way. Where a program is compiled per shape (JAX, or TensorFlow with XLA), batches are padded to bucket lengths
    and power-of-two row counts instead.
    """

    def __init__(self, main_layer):
        if not main_layer.built:
            # Variables must exist before compiling: under JAX, ones created inside the traced function leak tracers.
            main_layer.build(None)
        self.main_layer = main_layer
        self.functions = {}
        self.trace_count = 0
        self.traced_shapes = []  # (rows, length) of each trace; (None, None) for a shape-polymorphic graph
        backend = keras.backend.backend()
        self.per_shape = backend == "jax" or (backend == "tensorflow" and _JIT)
        self.on_cpu = runs_on_cpu()
        # With attention in blocks (TensorFlow on CPU) masking costs next to nothing: one graph serves batches with
        # and without padding (a second, mask-free graph measured no faster and held more memory: RESULTS.md).
        self.always_masked = uses_blocked_attention() and not self.per_shape

    def default_streams(self):
        """Batches in flight at once: one per core on a CPU under TensorFlow, else one."""
        if self.on_cpu and keras.backend.backend() == "tensorflow":
            return cpu_count()
        return 1

    def batch_tokens(self, max_tokens_per_batch, streams):
        if not self.on_cpu:
            return max_tokens_per_batch
        return min(max_tokens_per_batch, _CPU_STREAM_PASS_TOKENS if streams > 1 else _CPU_PASS_TOKENS)

    def padded_length(self, tokens):
        if self.per_shape:
            return bucket_length(tokens, TOKEN_LENGTH_BUCKETS)
        return -(-tokens // _ALIGNMENT) * _ALIGNMENT

    def padded_rows(self, rows, max_rows):
        if not self.per_shape:
            return rows
        return min(max_rows, 1 << (rows - 1).bit_length())

    def row_counts(self, length, batch_tokens):
        """Every row count a batch of `length` padded tokens can have: powers of two up to the budget's rows,
        and the budget's rows (so under JAX at most len(row_counts) programs per bucket length and variant)."""
        max_rows = max(1, batch_tokens // length)
        return sorted({self.padded_rows(rows, max_rows) for rows in range(1, max_rows + 1)})

    def function(self, layers, include, padded):
        """The forward pass; `padded=False` is the variant for batches with no padding at all (no masking)."""
        padded = padded or self.always_masked
        key = (layers, include, padded)
        if key not in self.functions:
            self.functions[key] = self._compile(self._forward(layers, include, padded))
        return self.functions[key]

    def _forward(self, layers, include, padded):
        main_layer = self.main_layer
        want_contacts = "contacts" in include
        # Only the last layer: no per-layer hidden states (a scanned encoder would otherwise emit them all).
        every_layer = any(layer != main_layer.config.num_hidden_layers for layer in layers)

        def forward(input_ids, lengths):
            input_ids, lengths = ops.convert_to_tensor(input_ids), ops.convert_to_tensor(lengths)
            positions = ops.arange(ops.shape(input_ids)[1], dtype="int32")[None, :]
            attention_mask = ops.cast(positions <= lengths[:, None] + 1, "int32")
            outputs = main_layer(input_ids, attention_mask=attention_mask if padded else None,
                                 output_hidden_states=every_layer, output_attentions=want_contacts)
            residue_mask = ops.logical_and(positions >= 1, positions <= lengths[:, None])
            residue_mask = ops.cast(residue_mask, "float32")[:, :, None]
            result = {}
            for layer in layers:
                hidden = outputs.hidden_states[layer] if every_layer else outputs.last_hidden_state
                hidden = ops.cast(hidden, "float32")
                if "per_tok" in include:
                    result[f"per_tok_{layer}"] = hidden
                if "mean" in include:
                    total = ops.sum(hidden * residue_mask, axis=1)
                    result[f"mean_{layer}"] = total / ops.cast(ops.maximum(lengths, 1), "float32")[:, None]
                if "bos" in include:
                    result[f"bos_{layer}"] = hidden[:, 0]
            if want_contacts:
                result["contacts"] = main_layer.contacts_from_attentions(input_ids, attention_mask,
                                                                         outputs.attentions)
            return result

        return forward

    def _compile(self, forward):
        backend = keras.backend.backend()
        if backend not in ("tensorflow", "jax"):
            # PyTorch: eager, nothing traced (trace_count stays 0), with no autograd record of the pass.
            def eager(input_ids, lengths):
                with no_gradients():
                    return forward(input_ids, lengths)

            return eager

        def counted(input_ids, lengths):
            self.trace_count += 1  # Python side effect: runs once per trace / compilation
            self.traced_shapes.append(tuple(input_ids.shape))
            return forward(input_ids, lengths)

        if backend == "tensorflow":
            import tensorflow as tf

            signature = [tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None,), tf.int32)]
            # No AutoGraph: `forward` has only Python control flow over Python values (the tensor-dependent
            # loops are explicit tf.while_loop / tf.cond), so converting its source would only slow the trace.
            return tf.function(counted, input_signature=signature, jit_compile=_JIT, autograph=False)
        from tf_esm.modeling import encoder_jax

        # The weights are arguments of the compiled program, not constants baked into it; the encoder's layers (a
        # LayerStack) run as one scan over its stacked weights.
        return encoder_jax.jit_with_weights(self.main_layer.variables, counted)


_RUNNERS = weakref.WeakKeyDictionary()


def _runner(model):
    main_layer = main_layer_of(model)
    if main_layer not in _RUNNERS:
        _RUNNERS[main_layer] = _Runner(main_layer)
    return _RUNNERS[main_layer]


def trace_count(model):
    """How many graphs (programs, under JAX/XLA) `iter_embeddings` has traced for `model` so far (0 under PyTorch,
    which runs the pass eagerly)."""
    main_layer = main_layer_of(model)
    return _RUNNERS[main_layer].trace_count if main_layer in _RUNNERS else 0


def traced_shapes(model):
    """The input shapes (rows, padded length) `iter_embeddings` has traced for `model`, one per trace, in order.
    Under TensorFlow a trace serves every shape and is listed as (None, None); under JAX each is one compiled
    program, and the shapes are bucket lengths x `row_counts` (see `_Runner.row_counts`)."""
    main_layer = main_layer_of(model)
    return list(_RUNNERS[main_layer].traced_shapes) if main_layer in _RUNNERS else []


def cpu_count():
    """Cores this process may use (its CPU affinity where the platform reports one)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def configure_cpu_threads(intra_op=1, inter_op=None):
    """TensorFlow thread pools for throughput on a CPU: by default each op runs on one thread and as many ops run
    at once as there are cores, which is what `iter_embeddings`' one-batch-per-core streams want (faster at every
    ESM-2 size measured: benchmarks/RESULTS.md). A single forward pass then uses one core, so
    for latency-bound use (one model call at a time) pass `intra_op=None` (all cores) instead.

    Call it before TensorFlow runs anything; returns whether the setting took effect (False once the runtime has
    started, when a GPU is visible (the work runs there), or under another backend)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    try:
        if tf.config.list_physical_devices("GPU"):
            return False
        tf.config.threading.set_intra_op_parallelism_threads(intra_op or cpu_count())
        tf.config.threading.set_inter_op_parallelism_threads(inter_op or cpu_count())
    except RuntimeError:
        return False
    return True


def _token_table(model, tokenizer):
    """(residue letter -> id lookup array, cls id, eos id, pad id)."""
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        cls_id, eos_id, pad_id = (vocab[tokenizer.cls_token], vocab[tokenizer.eos_token],
                                  vocab[tokenizer.pad_token])
    else:
        vocab_list = default_vocab(model.config)
        vocab = {token: index for index, token in enumerate(vocab_list)}
        cls_id, eos_id, pad_id = vocab["<cls>"], vocab["<eos>"], vocab["<pad>"]
    table = np.full(256, vocab.get("<unk>", -1), dtype=np.int32)
    for token, index in vocab.items():
        if len(token) == 1 and ord(token) < 256:
            table[ord(token)] = index
    return table, cls_id, eos_id, pad_id


def _resolve_layers(repr_layers, num_layers):
    resolved = []
    for layer in repr_layers:
        index = layer if layer >= 0 else num_layers + 1 + layer
        if not 0 <= index <= num_layers:
            raise ValueError(f"repr_layers entry {layer} is out of range for a {num_layers}-layer model "
                             f"(valid: {-(num_layers + 1)}..{num_layers}).")
        resolved.append(index)
    return tuple(dict.fromkeys(resolved))


def _plan_batches(token_lengths, max_tokens_per_batch, padded_length, pad_single_rows=True):
    """Longest first, cut into batches of rows x padded length (of the batch's longest) within the budget.

    With `pad_single_rows=False` a batch of one sequence keeps its exact length (it then needs no mask).
    """
    order = np.argsort(-np.asarray(token_lengths), kind="stable")
    batches = []
    current, width = [], None

    def close():
        exact = token_lengths[current[0]]
        batches.append((current, exact if len(current) == 1 and not pad_single_rows else width))

    for index in order:
        if current and (len(current) + 1) * width > max_tokens_per_batch:
            close()
            current = []
        if not current:
            width = padded_length(token_lengths[index])
        current.append(int(index))
    if current:
        close()
    return batches


@renamed_keywords(toks_per_batch="max_tokens_per_batch")
def iter_embeddings(model, sequences: Sequence[str], repr_layers: Sequence[int] = (-1,),
                    include: Sequence[str] = ("mean",), max_tokens_per_batch: int = 4096,
                    truncation_seq_length: int | None = None, tokenizer=None,
                    progress_callback: Callable[[int, int], None] | None = None,
                    streams: int | None = None, long: str | None = None, window: int | None = None,
                    overlap: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(index, result)` for every sequence (in an order of the batching's choosing).

    Args:
        model: A `TFEsmModel`, `TFEsmForMaskedLM` or any `TFEsmPreTrainedModel` (its `.esm` encoder is used).
        sequences: list of residue strings (one letter per residue, already validated).
        repr_layers: hidden-state indices to return: 0 is the embedding output, `num_layers` the final layer
            (after the final layer norm, as fair-esm); negative indices count from the end (-1 = last).
        include: any of "mean", "per_tok", "bos", "contacts".
        max_tokens_per_batch: the most tokens (rows x padded length) in one forward pass (`toks_per_batch`, its
            deprecated name, still works). On a CPU passes are kept
            to about 1024 tokens whatever this says, which is faster there; the results do not depend on it.
        truncation_seq_length: with `long="truncate"`, the residues kept per sequence (default: the model's
            context). Giving it without `long` selects "truncate" (its meaning before windows existed).
        long: what to do with a sequence longer than the model's context (`windows.context_residues`: 1,022
            residues for ESM-2 and ESM-1b/1v): "window" (the default) embeds it in overlapping windows of
            `window` residues, each a forward pass with its own `<cls>`/`<eos>`, and takes each residue's vector
            from the window where it is most central (`windows.most_central_window`): the mean is over all
            residues of the merged vectors, `bos` is the first window's `<cls>`; "truncate" keeps the first
            `truncation_seq_length` residues (fair-esm's `esm-extract`); "error" raises ValueError naming the
            sequence. "window" is the default because it is the only one that gives a vector for every residue
            and a mean over the whole protein, and it changes nothing for a sequence that fits the context.
            Contact maps are not put together from windows (ValueError: use "truncate").
        window: residues per window (default: the model's context; at most that for an absolute position table).
        overlap: the least number of residues neighbouring windows share (default: a quarter of the window).
        tokenizer: an `EsmTokenizer` whose vocabulary maps the residues; default: the model's vocabulary.
        progress_callback: called as `progress_callback(num_sequences_done, num_residues_done)` after each batch.
        streams: how many batches run at once (each from its own thread). Default: one per core on a CPU under
            TensorFlow, else 1. The results do not depend on it.

    Yields:
        `(index, result)`, `index` the position in `sequences`; `result` has "length" (residues used),
        "truncated" (residues were dropped), "windows" (forward passes the sequence was cut into: 1 unless it was
        windowed), and as requested "representations" {layer: (length, hidden)}, "mean_representations"
        {layer: (hidden,)}, "bos_representations" {layer: (hidden,)}, "contacts" (length, length). Layer keys
        are absolute indices, as fair-esm's `extract.py` and `tf-esm embed` key them: asking for -1 of a
        6-layer model gives key 6. Representations exclude `<cls>` and `<eos>` (`bos` is the `<cls>` position).
    """
    include = tuple(sorted(set(include)))
    unknown = set(include) - set(INCLUDE_CHOICES)
    if unknown:
        raise ValueError(f"Unknown include entries {sorted(unknown)}; choose from {list(INCLUDE_CHOICES)}.")
    main_layer = main_layer_of(model)
    layers = _resolve_layers(repr_layers, main_layer.config.num_hidden_layers)
    plans = _long_plans(sequences, main_layer.config, long, truncation_seq_length, window, overlap, include)
    whole = [index for index, plan in enumerate(plans) if len(plan) == 1]
    windowed = [index for index, plan in enumerate(plans) if len(plan) > 1]
    done = [0, 0]

    def finished():
        if progress_callback is not None:
            progress_callback(done[0], done[1])

    if whole:
        pieces = [sequences[index][slice(*plans[index][0])] for index in whole]
        for item, result in _iter_passes(model, pieces, layers, include, max_tokens_per_batch, tokenizer, finished,
                                         streams):
            index = whole[item]
            result["truncated"] = result["length"] < len(sequences[index])
            result["windows"] = 1
            done[0] += 1
            done[1] += result["length"]
            yield index, result
    if not windowed:
        return
    # Every window of every long protein in one stream of batches; a protein is merged once its last window is in.
    owners = [(index, number) for index in windowed for number in range(len(plans[index]))]
    pieces = [sequences[index][slice(*plans[index][number])] for index, number in owners]
    window_include = tuple(sorted((set(include) | {"per_tok"}) - {"mean"}))
    pending = {index: {} for index in windowed}
    for item, result in _iter_passes(model, pieces, layers, window_include, max_tokens_per_batch, tokenizer,
                                     finished, streams):
        index, number = owners[item]
        pending[index][number] = result
        if len(pending[index]) == len(plans[index]):
            merged = _merge_windows(pending.pop(index), plans[index], len(sequences[index]), layers, include)
            done[0] += 1
            done[1] += merged["length"]
            yield index, merged


def _long_plans(sequences, config, long, truncation_seq_length, window, overlap, include):
    """Per sequence, the residue ranges its forward passes take: one range (whole or truncated) or its windows."""
    if long is None:
        long = "truncate" if truncation_seq_length is not None else "window"
    if long not in LONG_POLICIES:
        raise ValueError(f"long must be one of {list(LONG_POLICIES)}, got {long!r}.")
    context = context_residues(config)
    absolute = config.default_max_length() is not None
    if long == "truncate":
        keep = truncation_seq_length if truncation_seq_length is not None else context
        return [[(0, len(sequence) if keep is None else min(len(sequence), keep))] for sequence in sequences]
    if long == "error":
        for index, sequence in enumerate(sequences):
            if context is not None and len(sequence) > context:
                raise ValueError(f"sequences[{index}] has {len(sequence)} residues, more than this model's context of "
                                 f"{context} (+ <cls>/<eos>); pass long='window' or long='truncate'.")
        return [[(0, len(sequence))] for sequence in sequences]
    if window is None:
        window = context
    if window is None:
        return [[(0, len(sequence))] for sequence in sequences]
    if absolute and window > context:
        raise ValueError(f"window {window} is more residues than this model's absolute position table holds "
                         f"({context} + <cls>/<eos>).")
    overlap = default_overlap(window) if overlap is None else overlap
    check_window(window, overlap)
    plans = [embedding_windows(len(sequence), window, overlap) for sequence in sequences]
    if "contacts" in include:
        for index, plan in enumerate(plans):
            if len(plan) > 1:
                raise ValueError(f"sequences[{index}] has {len(sequences[index])} residues, more than the window of "
                                 f"{window}, and contact maps are not put together from windows; pass "
                                 "long='truncate' (or a larger window on a rotary model).")
    return plans


def _merge_windows(results, windows, num_residues, layers, include):
    """One long protein's result from its windows' (per-residue vectors taken from the most central window; the
    mean over all residues of those; `<cls>` from the first window)."""
    source = most_central_window(windows, num_residues)
    merged = {"length": num_residues, "truncated": False, "windows": len(windows)}
    representations = {}
    for layer in layers:
        rows = np.empty((num_residues, results[0]["representations"][layer].shape[-1]), np.float32)
        for number, (start, end) in enumerate(windows):
            taken = np.flatnonzero(source == number)
            rows[taken] = results[number]["representations"][layer][taken - start]
        representations[layer] = rows
    if "per_tok" in include:
        merged["representations"] = representations
    if "mean" in include:
        merged["mean_representations"] = {
            layer: rows.astype(np.float64).mean(axis=0).astype(np.float32) for layer, rows in representations.items()}
    if "bos" in include:
        merged["bos_representations"] = results[0]["bos_representations"]
    return merged


def _iter_passes(model, sequences, layers, include, max_tokens_per_batch, tokenizer, batch_done, streams):
    """`(index, result)` for every sequence, each run whole in one forward pass (the batching of `iter_embeddings`);
    `batch_done()` is called after each batch's results are yielded."""
    main_layer = main_layer_of(model)
    table, cls_id, eos_id, pad_id = _token_table(model, tokenizer)
    runner = _runner(model)
    residue_counts = [len(sequence) for sequence in sequences]
    token_lengths = [count + 2 for count in residue_counts]

    length_limit = None
    if getattr(main_layer.config, "position_embedding_type", None) == "absolute":
        length_limit = main_layer.config.max_position_embeddings - (main_layer.embeddings.padding_idx + 1)

    def padded_length(tokens):
        # Never pad past an absolute-position table (padding there is harmless but rejected as too long).
        padded = runner.padded_length(tokens)
        return max(min(padded, length_limit), tokens) if length_limit is not None else padded

    if streams is None:
        streams = runner.default_streams()
    if int(streams) < 1:
        raise ValueError(f"streams must be at least 1, got {streams!r}.")
    streams = int(streams)
    batch_tokens = runner.batch_tokens(max_tokens_per_batch, streams)

    def prepare(batch, length):
        rows = runner.padded_rows(len(batch), max(1, batch_tokens // length))
        padded = rows > len(batch) or any(token_lengths[i] != length for i in batch)
        input_ids = np.full((rows, length), pad_id, dtype=np.int32)
        input_ids[len(batch):, :2] = (cls_id, eos_id)  # filler rows: empty sequences
        lengths = np.zeros(rows, dtype=np.int32)
        lengths[:len(batch)] = [residue_counts[i] for i in batch]
        for row, index in enumerate(batch):
            count = residue_counts[index]
            codes = np.frombuffer(sequences[index].encode("latin-1"), dtype=np.uint8)
            input_ids[row, 0] = cls_id
            input_ids[row, 1:count + 1] = table[codes]
            input_ids[row, count + 1] = eos_id
        return runner.function(layers, include, padded), input_ids, lengths

    def run(function, input_ids, lengths):
        return {name: ops.convert_to_numpy(value) for name, value in function(input_ids, lengths).items()}

    def results(batch, outputs):
        for row, index in enumerate(batch):
            count = residue_counts[index]
            result = {"length": count}
            if "per_tok" in include:
                result["representations"] = {
                    layer: outputs[f"per_tok_{layer}"][row, 1:count + 1].copy() for layer in layers}
            if "mean" in include:
                result["mean_representations"] = {
                    layer: outputs[f"mean_{layer}"][row].copy() for layer in layers}
            if "bos" in include:
                result["bos_representations"] = {
                    layer: outputs[f"bos_{layer}"][row].copy() for layer in layers}
            if "contacts" in include:
                result["contacts"] = outputs["contacts"][row, :count, :count].copy()
            yield index, result

    plan = _plan_batches(token_lengths, batch_tokens, padded_length, runner.per_shape)

    def finished(batch):
        batch_done()

    if streams == 1:
        for batch, length in plan:
            yield from results(batch, run(*prepare(batch, length)))
            finished(batch)
        return

    import collections
    from concurrent.futures import ThreadPoolExecutor

    # Batches are handed out in plan order and their results taken in the same order; one more than `streams` is
    # queued so a core never waits while the caller consumes results.
    pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="tf_esm_embed")
    pending = collections.deque()
    try:
        for batch, length in plan:
            pending.append((batch, pool.submit(run, *prepare(batch, length))))
            if len(pending) > streams:
                batch, future = pending.popleft()
                yield from results(batch, future.result())
                finished(batch)
        while pending:
            batch, future = pending.popleft()
            yield from results(batch, future.result())
            finished(batch)
    finally:  # stopped early (error, interrupt, generator closed): drop queued batches, let running ones end
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def embed_sequences(model, sequences: Sequence[str], **kwargs) -> list[dict[str, Any]]:
    """`iter_embeddings` collected into a list in input order (same keyword arguments)."""
    results = [None] * len(sequences)
    for index, result in iter_embeddings(model, sequences, **kwargs):
        results[index] = result
    return results
