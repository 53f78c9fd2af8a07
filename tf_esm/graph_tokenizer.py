"""Protein strings -> ESM token ids with TensorFlow ops only, for `tf.data`, Keras models and SavedModels.

`EsmStringTokenizer` (a Keras layer) and `tokenize_strings` (a plain function) give the same ids as
`tf_esm.EsmTokenizer` for the same strings and vocabulary, including its rules for vocabulary tokens written in the
text (`<mask>`), whitespace (dropped) and unknown characters (each run -> one `<unk>`); see
`tf_esm.tokenization` for the rules. They are built from `tf.strings` regular expressions (RE2), a
`tf.lookup.StaticHashTable` and `tf.RaggedTensor`, so they trace into graphs and serialise into SavedModels.

How the rules map onto string ops: every vocabulary match is wrapped in a separator character, every whitespace run
is replaced by it, the string is split at the separator, empty pieces are dropped, and each piece is looked up
(a piece that is not a vocabulary token is an unknown run, so the lookup's default `<unk>` id is the right answer).
"""

from __future__ import annotations

import os

import keras

from tf_esm.backend import require_tensorflow

tf = require_tensorflow("tf_esm.graph_tokenizer (EsmStringTokenizer, tokenizing tf.string tensors)")

from tf_esm.configuration import ESM2_VOCAB
from tf_esm.tokenization import WHITESPACE_RUN_PATTERN, load_vocab_file

# Control characters used as the split separator and as its stand-in when it occurs in the input (both are
# non-whitespace characters outside the vocabulary, so swapping one for the other does not change the tokens).
_SEPARATOR_CANDIDATES = tuple(chr(code) for code in range(0x00, 0x09))


def _as_token_list(vocab):
    if vocab is None:
        return list(ESM2_VOCAB)
    if isinstance(vocab, (str, os.PathLike)):
        return load_vocab_file(vocab)
    if hasattr(vocab, "all_tokens"):  # an EsmTokenizer
        return list(vocab.all_tokens)
    return [str(token) for token in vocab]


def regex_literal(text):
    r"""`text` as an RE2 pattern that matches exactly `text`: ASCII letters and digits as they are, every other
    character written as `\x{...}` (so no character of a vocabulary token is ever a metacharacter).

    >>> print(regex_literal("<mask>"))
    \x{3c}mask\x{3e}
    """
    return "".join(char if char.isalnum() and char.isascii() else f"\\x{{{ord(char):x}}}" for char in text)


def token_alternation(tokens):
    r"""An RE2 alternation (no group) matching any of `tokens` (empty ones skipped), longest first, so that RE2's
    leftmost-first alternation takes the longest vocabulary token at each position.

    >>> print(token_alternation(["A", "<eos>", "AB"]))
    \x{3c}eos\x{3e}|AB|A
    """
    unique = dict.fromkeys(token for token in tokens if token)
    return "|".join(regex_literal(token) for token in sorted(unique, key=len, reverse=True))


class _StringToIds:
    """The vocabulary compiled into regular expressions and a lookup table; call it on a string tensor."""

    def __init__(self, tokens, unk_token, cls_token, pad_token, eos_token, character_level=False):
        token_to_id = {token: index for index, token in enumerate(tokens) if token}  # later duplicates win
        self.character_level = bool(character_level)
        missing = [token for token in (unk_token, cls_token, pad_token, eos_token) if token not in token_to_id]
        if missing:
            raise ValueError(f"Special token(s) {missing} are not in the vocabulary.")
        self.unk_id, self.cls_id = token_to_id[unk_token], token_to_id[cls_token]
        self.pad_id, self.eos_id = token_to_id[pad_token], token_to_id[eos_token]
        used = "".join(token_to_id)
        separator, stand_in = [char for char in _SEPARATOR_CANDIDATES if char not in used][:2]
        self.separator, self.stand_in = separator, stand_in
        self.separator_pattern = regex_literal(separator)
        self.separator_rewrite = separator + r"\0" + separator
        self.token_pattern = token_alternation(token_to_id)
        if self.character_level:  # any other single character (whitespace too) is a piece of its own: one <unk>
            self.token_pattern += "|(?s:.)"
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(token_to_id), tf.string), tf.constant(list(token_to_id.values()), tf.int64)
            ),
            default_value=self.unk_id,
        )

    def ragged_ids(self, strings):
        """[batch] strings -> [batch, None] int32 ids without special tokens."""
        text = tf.strings.regex_replace(strings, self.separator_pattern, self.stand_in)
        text = tf.strings.regex_replace(text, self.token_pattern, self.separator_rewrite)
        if not self.character_level:
            text = tf.strings.regex_replace(text, WHITESPACE_RUN_PATTERN, self.separator)
        pieces = tf.strings.split(text, self.separator)
        pieces = tf.ragged.boolean_mask(pieces, tf.strings.length(pieces) > 0)
        return tf.cast(tf.ragged.map_flat_values(self.table.lookup, pieces), tf.int32)


def _encode(string_to_ids, strings, add_special_tokens, max_length, pad_to, ragged):
    strings = tf.convert_to_tensor(strings, dtype=tf.string)
    rank = strings.shape.rank
    if rank is None:
        raise ValueError("The strings tensor needs a known rank (0, 1, or 2 with a last dimension of 1).")
    if rank == 2:
        if strings.shape[-1] != 1:
            raise ValueError(f"Expected strings of shape [batch] or [batch, 1], got {strings.shape}.")
        strings = tf.squeeze(strings, axis=-1)
    elif rank == 0:
        strings = tf.reshape(strings, [1])
    elif rank != 1:
        raise ValueError(f"Expected strings of shape [], [batch] or [batch, 1], got {strings.shape}.")

    ids = string_to_ids.ragged_ids(strings)
    if max_length is not None:
        ids = ids[:, : max(max_length - (2 if add_special_tokens else 0), 0)]
    if add_special_tokens:
        column = tf.ones_like(ids.row_lengths(), dtype=tf.int32)[:, None]
        ids = tf.concat([column * string_to_ids.cls_id, ids, column * string_to_ids.eos_id], axis=1)

    if ragged:
        outputs = {"input_ids": ids, "attention_mask": tf.ones_like(ids)}
    else:
        dense = ids.to_tensor(default_value=string_to_ids.pad_id, shape=[None, pad_to])
        width = tf.shape(dense)[1]
        mask = tf.sequence_mask(ids.row_lengths(), maxlen=width, dtype=tf.int32)
        outputs = {"input_ids": dense, "attention_mask": mask}
    if rank == 0:
        outputs = {key: value[0] for key, value in outputs.items()}
    return outputs


def _check_lengths(max_length, pad_to):
    if pad_to is not None and max_length is None:
        max_length = pad_to  # a fixed width must not silently cut tokens off without truncation rules
    if max_length is not None and pad_to is not None and max_length > pad_to:
        raise ValueError(f"max_length ({max_length}) cannot exceed pad_to ({pad_to}).")
    return max_length


def tokenize_strings(
    strings,
    vocab=None,
    add_special_tokens=True,
    max_length=None,
    pad_to=None,
    ragged=False,
    unk_token="<unk>",
    cls_token="<cls>",
    pad_token="<pad>",
    eos_token="<eos>",
    character_level=False,
):
    """Tokenize a tensor of protein strings with TensorFlow ops (usable inside `tf.data.Dataset.map`).

    It builds its lookup table on every call (cheap: one small table per trace); for a model or SavedModel, use the
    `EsmStringTokenizer` layer, which owns its table.

    Args:
        strings: `tf.string` tensor of shape `[]`, `[batch]` or `[batch, 1]`.
        vocab: a list of tokens in id order, a path to a `vocab.txt`, an `EsmTokenizer`, or `None` for ESM-2's.
        add_special_tokens: wrap each sequence as `<cls> ... <eos>`.
        max_length: truncate to this many tokens, special tokens included (`EsmTokenizer(truncation=True)`).
        pad_to: pad (and truncate, if `max_length` is not given) to exactly this width; otherwise dense outputs are
            padded to the longest sequence in the batch.
        ragged: return `tf.RaggedTensor`s instead of padded tensors.
        unk_token, cls_token, pad_token, eos_token: the special tokens.
        character_level: ESM C's rules (`EsmcTokenizer`): each character outside the vocabulary is one `<unk>`.

    Returns:
        A dict with int32 `input_ids` (padded with the pad id) and `attention_mask` (1 for real tokens), of shape
        `[batch, length]`, or `[length]` for a scalar input.

    Examples:

    >>> out = tokenize_strings(tf.constant(["MKT<mask>L", "MK"]))
    >>> out["input_ids"].numpy().tolist()
    [[0, 20, 15, 11, 32, 4, 2], [0, 20, 15, 2, 1, 1, 1]]
    >>> dataset = tf.data.Dataset.from_tensor_slices(["MKTAYIAK", "GV"]).map(lambda s: tokenize_strings(s))
    >>> [row["input_ids"].numpy().tolist() for row in dataset]
    [[0, 20, 15, 11, 5, 19, 12, 5, 15, 2], [0, 6, 7, 2]]
    """
    max_length = _check_lengths(max_length, pad_to)
    string_to_ids = _StringToIds(_as_token_list(vocab), unk_token, cls_token, pad_token, eos_token,
                                 character_level=character_level)
    return _encode(string_to_ids, strings, add_special_tokens, max_length, pad_to, ragged)


@keras.saving.register_keras_serializable(package="tf_esm")
class EsmStringTokenizer(keras.layers.Layer):
    """Keras layer: a batch of raw protein strings -> `input_ids` and `attention_mask`, inside the graph.

    Gives the same ids as `EsmTokenizer(...)(strings, padding=True, truncation=max_length is not None,
    max_length=max_length)`. TensorFlow backend only.

    Args:
        vocab: a list of tokens in id order, a path to a `vocab.txt`, an `EsmTokenizer`, or `None` for ESM-2's.
            Stored in the config as the token list.
        add_special_tokens: wrap each sequence as `<cls> ... <eos>`.
        max_length: truncate to this many tokens, special tokens included.
        pad_to: output width; sequences are padded (and, without `max_length`, truncated) to it, giving a static
            shape. By default outputs are padded to the longest sequence in the batch.
        ragged: return `tf.RaggedTensor`s instead of padded tensors (for `tf.data` pipelines).
        unk_token, cls_token, pad_token, eos_token: the special tokens.
        character_level: ESM C's rules (`EsmcTokenizer`): every character outside the vocabulary, whitespace
            included, is one `<unk>` (instead of each run of them, with whitespace dropped).
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).

    Examples:

    >>> tokenizer = EsmStringTokenizer(pad_to=8)
    >>> out = tokenizer(tf.constant(["MKT<mask>L", "MKx"]))
    >>> out["input_ids"].numpy().tolist()
    [[0, 20, 15, 11, 32, 4, 2, 1], [0, 20, 15, 3, 2, 1, 1, 1]]
    >>> strings = keras.Input(shape=(), dtype="string")
    >>> model = keras.Model(strings, EsmStringTokenizer()(strings))
    """

    def __init__(
        self,
        vocab=None,
        add_special_tokens=True,
        max_length=None,
        pad_to=None,
        ragged=False,
        unk_token="<unk>",
        cls_token="<cls>",
        pad_token="<pad>",
        eos_token="<eos>",
        character_level=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab = _as_token_list(vocab)
        self.character_level = bool(character_level)
        self.add_special_tokens = bool(add_special_tokens)
        self.pad_to = None if pad_to is None else int(pad_to)
        self.max_length_setting = None if max_length is None else int(max_length)
        self.max_length = _check_lengths(self.max_length_setting, self.pad_to)
        self.ragged = bool(ragged)
        self.special_tokens = {"unk_token": unk_token, "cls_token": cls_token, "pad_token": pad_token,
                               "eos_token": eos_token}
        self._string_to_ids = _StringToIds(self.vocab, unk_token, cls_token, pad_token, eos_token,
                                           character_level=self.character_level)
        self.lookup_table = self._string_to_ids.table  # an attribute, so SavedModel export tracks the resource
        self.built = True

    @classmethod
    def from_pretrained(cls, path_or_hub_id, **kwargs):
        """The in-graph tokenizer of a checkpoint: the vocabulary and special tokens of its `vocab.txt` and
        `tokenizer_config.json` (as `EsmTokenizer.from_pretrained` reads them), so ids match the checkpoint's own
        tokenizer. `path_or_hub_id`: a model directory, a `vocab.txt` or a hub id; `kwargs`: constructor arguments
        (`max_length`, `pad_to`, `ragged`, ...).

        >>> tokenizer = EsmStringTokenizer.from_pretrained("facebook/esm2_t6_8M_UR50D", max_length=1024)
        """
        from tf_esm.tokenization import EsmcTokenizer, load_tokenizer

        tokenizer = load_tokenizer(path_or_hub_id)
        special = {name: getattr(tokenizer, name) for name in ("unk_token", "cls_token", "pad_token", "eos_token")}
        special["character_level"] = isinstance(tokenizer, EsmcTokenizer)
        return cls(vocab=tokenizer, **{**special, **kwargs})

    @property
    def vocab_size(self):
        return len(self.vocab)

    @property
    def pad_token_id(self):
        return self._string_to_ids.pad_id

    def call(self, strings):
        return _encode(self._string_to_ids, strings, self.add_special_tokens, self.max_length, self.pad_to,
                       self.ragged)

    def compute_output_spec(self, strings):
        batch = strings.shape[0] if len(strings.shape) else None
        shape = (self.pad_to,) if len(strings.shape) == 0 else (batch, self.pad_to)
        return {key: keras.KerasTensor(shape, dtype="int32", ragged=self.ragged)
                for key in ("input_ids", "attention_mask")}

    def get_config(self):
        config = super().get_config()
        config.update(vocab=list(self.vocab), add_special_tokens=self.add_special_tokens,
                      max_length=self.max_length_setting, pad_to=self.pad_to, ragged=self.ragged,
                      character_level=self.character_level, **self.special_tokens)
        return config
