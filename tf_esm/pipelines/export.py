"""SavedModel export of ESM models for TensorFlow Serving (and any TensorFlow runtime).

`export_saved_model(model, path)` writes a SavedModel with two signatures:

* `serving_default`: `sequences`, a `[batch]` string tensor of raw protein sequences, tokenized inside the graph
  exactly as `EsmTokenizer` does (`<cls> residues <eos>`, padded to the longest sequence).
* `token_ids`: `input_ids` and `attention_mask`, int32 `[batch, length]`, for clients that tokenize themselves.

Both return, aligned with the tokens (position 0 is `<cls>`, residue `j` (0-based) is at position `j + 1`):

* `sequence_embedding` `[batch, hidden]`: the final hidden states averaged over residues (no `<cls>`, `<eos>`,
  `<pad>` or padding);
* `residue_embeddings` `[batch, length, hidden]`: the final hidden states, zero at non-residue positions;
* `residue_mask` `[batch, length]` int32: 1 at residue positions;
* task models add `logits` (masked LM `[batch, length, vocab]`; sequence classification `[batch, labels]`; token
  classification `[batch, length, labels]`) and, for classifiers, `probabilities` (softmax, or sigmoid when
  `config.problem_type == "multi_label_classification"`; none for regression);
* `serving_default` also returns the `input_ids` and `attention_mask` it built.

Requests are checked inside the graph (`validate=True`, the default): a final `*` (stop codon, optionally followed by
whitespace) is dropped as in `tf_esm.io.fasta`; a sequence holding a character that is not part of any vocabulary token
(lower-case letters, digits, an inner `*`, ...) fails with the batch index, the 1-based character position in the
request string and the character; an empty (or all-whitespace) sequence fails with its batch index. A sequence longer
than `max_length` tokens fails with its batch index and length (no silent truncation), in both signatures (for
`token_ids`, the non-`<pad>` tokens of a row are counted).

Examples:

>>> import tempfile
>>> from tf_esm import EsmConfig, TFEsmModel
>>> config = EsmConfig(vocab_size=33, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
...                    intermediate_size=32, position_embedding_type="rotary", pad_token_id=1, mask_token_id=32)
>>> path = export_saved_model(TFEsmModel(config), tempfile.mkdtemp() + "/esm/1")  # or a model directory / hub id
>>> loaded = tf.saved_model.load(path)
>>> loaded.signatures["serving_default"](sequences=tf.constant(["MKTAYIAK"]))["sequence_embedding"].shape
TensorShape([1, 16])
"""

from __future__ import annotations

import os

from keras import ops

from tf_esm.backend import require_tensorflow

tf = require_tensorflow("tf_esm.pipelines.export (SavedModel export)")

from tf_esm.storage.atomic import atomic_directory, check_target, write_text_atomic
from tf_esm.configuration import ESM2_VOCAB, EsmcConfig
from tf_esm.graph_tokenizer import EsmStringTokenizer, token_alternation
from tf_esm.modeling import (
    TFEsmcForSequenceClassification,
    TFEsmcForTokenClassification,
    TFEsmcModel,
    TFEsmForSequenceClassification,
    TFEsmForTokenClassification,
    TFEsmModel,
)
from tf_esm.pipelines.auto import (  # noqa: F401  (ARCHITECTURES, architecture_class: their older home is here)
    ARCHITECTURES,
    MODEL_CLASSES,
    architecture_class,
    load_pretrained_model,
)
from tf_esm.tokenization import WHITESPACE_RUN_PATTERN

BASE_MODELS = (TFEsmModel, TFEsmcModel)
SEQUENCE_CLASSIFIERS = (TFEsmForSequenceClassification, TFEsmcForSequenceClassification)
TOKEN_CLASSIFIERS = (TFEsmForTokenClassification, TFEsmcForTokenClassification)
STRINGS_SIGNATURE = "serving_default"
_TRAILING_STOP_PATTERN = r"\*(?:" + WHITESPACE_RUN_PATTERN + ")?$"
TOKEN_IDS_SIGNATURE = "token_ids"


# --------------------------------------------------------------------------------------------- pooling (keras.ops)


def residue_mask(input_ids, attention_mask, non_residue_ids):
    """1 where a token is a residue: attended to and not one of `non_residue_ids` (`<cls>`, `<eos>`, `<pad>`)."""
    input_ids = ops.cast(input_ids, "int32")
    keep = ops.cast(attention_mask, "bool")
    for token_id in non_residue_ids:
        keep = ops.logical_and(keep, ops.not_equal(input_ids, int(token_id)))
    return ops.cast(keep, "int32")


def mean_over_residues(hidden_states, mask):
    """Average `hidden_states` `[batch, length, hidden]` over positions where `mask` is 1 (zeros if none)."""
    weights = ops.cast(mask, hidden_states.dtype)[..., None]
    total = ops.sum(hidden_states * weights, axis=1)
    return total / ops.maximum(ops.sum(weights, axis=1), 1.0)


# ------------------------------------------------------------------------------------------------- serving module


class _Untracked:
    """A plain attribute holder; `tf.Module` does not follow it when building the SavedModel object graph."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)


class EsmServingModule(tf.Module):
    """A `tf.Module` holding an ESM model, an in-graph tokenizer and the serving functions.

    Args:
        model: a built `TFEsmModel`, `TFEsmForMaskedLM`, `TFEsmForSequenceClassification` or
            `TFEsmForTokenClassification`, or their ESM C counterparts (`TFEsmcModel`, ...).
        vocab: the tokenizer vocabulary: a token list in id order, a `vocab.txt` path, an `EsmTokenizer`, or `None`
            for `config.vocab_list` (the standard ESM-2 vocabulary when that is unset).
        max_length: the longest accepted input in tokens (`<cls>`/`<eos>` included), or `None` for no check.
        validate: reject sequences with characters outside the vocabulary (instead of encoding them as `<unk>`) and
            empty sequences, after dropping a final `*` (see the module docstring).
    """

    def __init__(self, model, vocab=None, max_length=None, validate=True):
        super().__init__(name="esm_serving")
        if not isinstance(model, MODEL_CLASSES):
            raise TypeError(f"Expected one of {[cls.__name__ for cls in MODEL_CLASSES]}, got {type(model).__name__}.")
        if not model.built:
            model.build()
        config = model.config
        esmc = isinstance(config, EsmcConfig)
        tokenizer = EsmStringTokenizer(vocab if vocab is not None else (config.vocab_list or list(ESM2_VOCAB)),
                                       ragged=True, character_level=esmc, name="string_tokenizer")
        # ESM C's embedding table has 64 rows for its 33 tokens; every ESM-1/ESM-2 model has one row per token.
        if len(tokenizer.vocab) > config.vocab_size or (not esmc and len(tokenizer.vocab) != config.vocab_size):
            raise ValueError(f"The vocabulary has {len(tokenizer.vocab)} tokens but the model expects "
                             f"config.vocab_size={config.vocab_size}; pass the model's vocab.txt.")
        # The SavedModel holds only what the serving functions capture: the model's variables and the lookup
        # table. The Keras objects stay outside the tracked object graph (saving them costs time and adds
        # nothing a server can use), so they are kept behind a plain Python holder.
        self._keras = _Untracked(model=model, tokenizer=tokenizer)
        self.model_variables = [variable.value for variable in model.variables]
        self.lookup_table = tokenizer.lookup_table
        tokens = self.tokenizer.vocab
        self.special_ids = {name: tokens.index(self.tokenizer.special_tokens[f"{name}_token"])
                            for name in ("cls", "eos", "pad")}
        self.max_length = None if max_length is None else int(max_length)
        self.validate = bool(validate)
        # Whitespace between residues is dropped by ESM's tokenizer; ESM C's makes it <unk>, so it is invalid there.
        allowed = token_alternation(tokens) if esmc else f"{token_alternation(tokens)}|{WHITESPACE_RUN_PATTERN}"
        self._valid_prefix = f"^(?:{allowed})*"
        self._allowed_note = ("(allowed: the vocabulary tokens, e.g. upper-case residue letters"
                              + ("; ESM C's tokenizer takes no whitespace)" if esmc else ", and whitespace)"))
        self.problem_type = getattr(config, "problem_type", None)
        if isinstance(model, SEQUENCE_CLASSIFIERS) and self.problem_type is None:
            self.problem_type = "regression" if config.num_labels == 1 else "single_label_classification"

    @property
    def model(self):
        return self._keras.model

    @property
    def tokenizer(self):
        return self._keras.tokenizer

    def _check_characters(self, sequences):
        rest = tf.strings.regex_replace(sequences, self._valid_prefix, "", replace_global=False)
        bad = tf.where(tf.strings.length(rest) > 0)[:, 0]
        rest_bad = tf.gather(rest, bad)
        positions = (tf.strings.length(tf.gather(sequences, bad), unit="UTF8_CHAR")
                     - tf.strings.length(rest_bad, unit="UTF8_CHAR") + 1)
        characters = tf.strings.substr(rest_bad, 0, 1, unit="UTF8_CHAR")
        return tf.debugging.Assert(
            tf.equal(tf.size(bad), 0),
            ["Invalid character in sequence(s) at batch index", bad, "1-based position", positions, "character",
             characters, self._allowed_note],
            summarize=10)

    def _check_lengths(self, lengths):
        too_long = tf.where(lengths > self.max_length)[:, 0]
        return tf.debugging.Assert(
            tf.equal(tf.size(too_long), 0),
            ["Sequence(s) at batch index", too_long, "have", tf.gather(lengths, too_long),
             f"tokens with <cls>/<eos>; this model takes at most {self.max_length}"], summarize=10)

    def _check_not_empty(self, lengths):
        empty = tf.where(lengths <= 2)[:, 0]  # <cls> and <eos> only
        return tf.debugging.Assert(
            tf.equal(tf.size(empty), 0),
            ["Empty sequence(s) (no residues) at batch index", empty], summarize=10)

    def _tokenize(self, sequences):
        checks = []
        if self.validate:
            if "*" not in self.tokenizer.vocab:  # a final stop codon is dropped, as tf_esm.io.fasta does
                sequences = tf.strings.regex_replace(sequences, _TRAILING_STOP_PATTERN, "")
            checks.append(self._check_characters(sequences))
        ids = self.tokenizer(sequences)["input_ids"]
        if self.validate:
            checks.append(self._check_not_empty(ids.row_lengths()))
        if self.max_length is not None:
            checks.append(self._check_lengths(ids.row_lengths()))
        with tf.control_dependencies(checks):
            input_ids = tf.identity(ids.to_tensor(default_value=self.special_ids["pad"]))
        attention_mask = tf.sequence_mask(ids.row_lengths(), maxlen=tf.shape(input_ids)[1], dtype=tf.int32)
        return input_ids, attention_mask

    def _outputs(self, input_ids, attention_mask):
        model = self.model
        if isinstance(model, BASE_MODELS):
            outputs = model(input_ids, attention_mask=attention_mask, training=False)
            hidden = outputs.last_hidden_state
        else:
            outputs = model(input_ids, attention_mask=attention_mask, output_hidden_states=True, training=False)
            hidden = outputs.hidden_states[-1]
        hidden = tf.cast(hidden, tf.float32)
        mask = residue_mask(input_ids, attention_mask, self.special_ids.values())
        result = {
            "sequence_embedding": mean_over_residues(hidden, mask),
            "residue_embeddings": hidden * tf.cast(mask, hidden.dtype)[..., None],
            "residue_mask": mask,
        }
        if not isinstance(model, BASE_MODELS):
            logits = tf.cast(outputs.logits, tf.float32)
            result["logits"] = logits
            if isinstance(model, TOKEN_CLASSIFIERS):
                result["probabilities"] = tf.nn.softmax(logits, axis=-1)
            elif isinstance(model, SEQUENCE_CLASSIFIERS) and self.problem_type != "regression":
                multi = self.problem_type == "multi_label_classification"
                result["probabilities"] = tf.sigmoid(logits) if multi else tf.nn.softmax(logits, axis=-1)
        return result

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sequences")])
    def serve_sequences(self, sequences):
        """Raw protein strings -> embeddings (and logits), plus the `input_ids` / `attention_mask` used."""
        input_ids, attention_mask = self._tokenize(sequences)
        result = dict(self.serve_token_ids(input_ids, attention_mask))  # one traced model graph for both
        result.update(input_ids=input_ids, attention_mask=attention_mask)
        return result

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                                  tf.TensorSpec([None, None], tf.int32, name="attention_mask")])
    def serve_token_ids(self, input_ids, attention_mask):
        """Token ids and attention mask -> embeddings (and logits)."""
        if self.max_length is not None:  # clients that tokenize themselves get the same length check
            lengths = tf.reduce_sum(tf.cast(tf.not_equal(input_ids, self.special_ids["pad"]), tf.int64), axis=1)
            with tf.control_dependencies([self._check_lengths(lengths)]):
                input_ids = tf.identity(input_ids)
        return self._outputs(input_ids, attention_mask)

    def signatures(self):
        return {STRINGS_SIGNATURE: self.serve_sequences.get_concrete_function(),
                TOKEN_IDS_SIGNATURE: self.serve_token_ids.get_concrete_function()}


# ------------------------------------------------------------------------------------------------------- writing


def default_max_length(config):
    """`config.default_max_length()` (the name examples and older code import from here)."""
    return config.default_max_length()


def export_saved_model(model, path: str | os.PathLike, vocab=None, max_length: int | str | None = "auto",
                       validate: bool = True, overwrite: bool = False, model_class: type | None = None) -> str:
    """Write `model` as a SavedModel with the `serving_default` (strings) and `token_ids` signatures.

    The SavedModel is written into a temporary directory next to `path` and renamed into place, so `path` never
    holds a partial export. `assets.extra/config.json` records the model configuration (TF Serving ignores it).

    Args:
        model: an ESM Keras model, or a model directory / hub id (loaded with `model_class`, or the class named by
            `config.json`'s `architectures`; `TFEsmModel` when none is named).
        path: the export directory, e.g. `models/esm2/1` (TF Serving expects a numbered version directory).
        vocab: the vocabulary (see `EsmServingModule`); for a model directory, its `vocab.txt` when present.
        max_length: longest accepted request in tokens; `"auto"`: the position-table limit for absolute position
            embeddings, unlimited for rotary ones; `None`: no check.
        validate: reject characters outside the vocabulary (see the module docstring).
        overwrite: replace an existing non-empty `path`; otherwise that is a `FileExistsError`.
        model_class: the class to load a model directory with.

    Returns:
        The absolute export path.
    """
    path = os.path.abspath(os.fspath(path))
    check_target(path, overwrite)
    if isinstance(model, (str, os.PathLike)):
        from tf_esm.storage.hub import resolve_file

        reference = os.fspath(model)
        if vocab is None:
            vocab = resolve_file(reference, "vocab.txt", required=False)
        model = load_pretrained_model(reference, model_class)
    elif model_class is not None:
        raise ValueError("model_class applies only when `model` is a directory or hub id.")
    if max_length == "auto":
        max_length = model.config.default_max_length()
    module = EsmServingModule(model, vocab=vocab, max_length=max_length, validate=validate)

    with atomic_directory(path, overwrite=overwrite) as staging:
        tf.saved_model.save(module, staging, signatures=module.signatures())
        write_text_atomic(os.path.join(staging, "assets.extra", "config.json"), model.config.to_json_string())
    return path


def export_pretrained(model_dir, path, model_class=None, **kwargs):
    """Load `model_dir` (a `save_pretrained` / HF directory, or a hub id) and export it; see `export_saved_model`."""
    return export_saved_model(model_dir, path, model_class=model_class, **kwargs)
