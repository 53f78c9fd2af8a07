"""`EsmTokenizer`: protein strings to ESM token ids, backed by the `tokenizers` library.

The ids are identical to `transformers.EsmTokenizer` for the same `vocab.txt`. The in-graph (TensorFlow ops only)
counterpart lives in `tf_esm.graph_tokenizer` and follows the same rules, which are spelled out here once:

1. Every vocabulary entry (residue letters, `.`, `-`, and bracketed tokens such as `<mask>`, `<cls>`, `<null_1>`)
   is matched wherever it occurs in the text, so `"MK<mask>L"` is four tokens.
2. Whitespace (anything Python's `str.isspace` accepts) between tokens is dropped.
3. Each remaining run of characters that matched no vocabulary entry, up to the next match or whitespace, becomes
   ONE `<unk>`: lower-case residues (`"acde"` -> one `<unk>`, `"aCdE"` -> `<unk> C <unk> E`), digits (`"23"` -> one
   `<unk>`), `*`, `J`, accented letters, and malformed tags such as `"<mask"` or `"<Mask>"`. Nothing is upper-cased
   or otherwise normalised, because the reference tokenizer does not do it either.

Rule 1 matches longest-first; for ESM vocabularies no two entries can overlap, so the result does not depend on
the order in which matches are found.
"""

from __future__ import annotations

import json
import os

from tf_esm.storage.atomic import write_text_atomic
from tf_esm.configuration import ESM2_VOCAB

VOCAB_FILE_NAME = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

# The "no limit" value transformers stores as model_max_length when a checkpoint does not name one.
VERY_LARGE_INTEGER = int(1e30)
_UNBOUNDED_LENGTH = int(1e20)

# Every character for which Python's `str.isspace()` is true; the reference splits unmatched text with `str.split()`.
PYTHON_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
# The same set as a regular-expression character class (valid for both Oniguruma and RE2).
WHITESPACE_RUN_PATTERN = "[" + "".join(f"\\x{{{ord(char):x}}}" for char in PYTHON_WHITESPACE) + "]+"

_SPECIAL_TOKEN_ARGS = ("cls_token", "eos_token", "mask_token", "pad_token", "unk_token")
_PADDING_CHOICES = ("longest", "max_length", "do_not_pad")
_TRUNCATION_CHOICES = ("longest_first", "only_first", "only_second", "do_not_truncate")


def write_default_vocab(path):
    """Write the standard 33-token ESM-2 vocabulary to `path` (one token per line) and return `path`.

    Args:
        path: a file path, or a directory (the file is then `vocab.txt` inside it).

    Examples:

    >>> import tempfile
    >>> path = write_default_vocab(tempfile.mkdtemp())
    >>> EsmTokenizer(path).vocab_size
    33
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, VOCAB_FILE_NAME)
    write_text_atomic(path, "\n".join(ESM2_VOCAB))
    return path


def load_vocab_file(vocab_file):
    """Read an HF-layout `vocab.txt`: one token per line, surrounding whitespace stripped, line number = id."""
    with open(vocab_file, encoding="utf-8") as handle:
        return [line.strip() for line in handle.read().splitlines()]


class BatchEncoding(dict):
    """The tokenizer's output: a dict (`input_ids`, `attention_mask`, ...) whose keys also read as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; fields: {sorted(self)}") from None


class EsmTokenizer:
    """Tokenizer for ESM protein language models, producing the same ids as `transformers.EsmTokenizer`.

    Each residue letter is one token; vocabulary entries written in the text (`<mask>`, `<cls>`, ...) are single
    tokens; whitespace is ignored; any other run of characters becomes a single `<unk>` (see the module docstring
    for the exact rules). With `add_special_tokens=True` a sequence is encoded as `<cls> A <eos>` and a pair as
    `<cls> A <eos> B <eos>`. Padding is on the right with `<pad>`; truncation removes tokens from the right.

    Args:
        vocab_file: path to an HF-layout `vocab.txt` (one token per line; the line number is the id).
        unk_token, cls_token, pad_token, mask_token, eos_token: the special tokens; each must be in the vocabulary.
        model_max_length: the length `truncation=True` (and `padding="max_length"`) fall back to when no
            `max_length` is given. The default, like transformers without a `tokenizer_config.json`, means no limit.

    Examples:

    >>> import tempfile
    >>> tokenizer = EsmTokenizer(write_default_vocab(tempfile.mkdtemp()))
    >>> tokenizer("MKT<mask>L")["input_ids"]
    [0, 20, 15, 11, 32, 4, 2]
    >>> batch = tokenizer(["MKTL", "MK"], padding=True, return_tensors="np")
    >>> batch.input_ids.tolist(), batch.attention_mask.tolist()
    ([[0, 20, 15, 11, 4, 2], [0, 20, 15, 2, 1, 1]], [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    >>> tokenizer.decode([0, 20, 15, 2], skip_special_tokens=True)
    'M K'
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE_NAME}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"
    pad_token_type_id = 0

    def __init__(
        self,
        vocab_file,
        unk_token="<unk>",
        cls_token="<cls>",
        pad_token="<pad>",
        mask_token="<mask>",
        eos_token="<eos>",
        model_max_length=VERY_LARGE_INTEGER,
    ):
        self.vocab_file = os.fspath(vocab_file)
        self.all_tokens = load_vocab_file(self.vocab_file)
        # Later duplicates win, as in the reference; the id -> token direction keeps every line.
        self._token_to_id = {token: index for index, token in enumerate(self.all_tokens)}
        self.unk_token, self.cls_token, self.pad_token = unk_token, cls_token, pad_token
        self.mask_token, self.eos_token = mask_token, eos_token
        self.model_max_length = int(model_max_length) if model_max_length is not None else VERY_LARGE_INTEGER
        missing = [token for token in self.special_tokens_map.values() if token not in self._token_to_id]
        if missing:
            raise ValueError(f"Special token(s) {missing} are not in the vocabulary {self.vocab_file!r}.")
        self._backend = _build_backend(self._token_to_id, list(self.special_tokens_map.values()), unk_token)

    # ----------------------------------------------------------------------------------------------- loading/saving

    @classmethod
    def from_pretrained(cls, path_or_hub_id, **overrides):
        """Load from a directory (or hub id) holding `vocab.txt` and optionally `tokenizer_config.json`.

        Special tokens and `model_max_length` are read from `tokenizer_config.json` / `special_tokens_map.json`
        when present; keyword `overrides` take precedence.

        Args:
            path_or_hub_id: a local directory, a path to a `vocab.txt`, or a hub id like
                `"facebook/esm2_t6_8M_UR50D"`.
            **overrides: constructor arguments (`model_max_length`, `mask_token`, ...).

        Examples:

        >>> import tempfile
        >>> directory = tempfile.mkdtemp()
        >>> _ = EsmTokenizer(write_default_vocab(directory)).save_pretrained(directory)
        >>> EsmTokenizer.from_pretrained(directory).mask_token_id
        32
        """
        from tf_esm.storage.hub import resolve_file

        reference = os.fspath(path_or_hub_id)
        vocab_file = resolve_file(reference, VOCAB_FILE_NAME)
        kwargs = {}
        if not os.path.isfile(reference):
            for filename in (SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE):  # the config has the last word
                path = resolve_file(reference, filename, required=False)
                if path is not None:
                    with open(path, encoding="utf-8") as handle:
                        kwargs.update(_constructor_kwargs(json.load(handle)))
        kwargs.update(overrides)
        return cls(vocab_file, **kwargs)

    def save_vocabulary(self, save_directory, filename_prefix=None):
        """Write the vocabulary as `[prefix-]vocab.txt` in `save_directory`; return the tuple of written paths."""
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE_NAME
        path = os.path.join(os.fspath(save_directory), name)
        write_text_atomic(path, "\n".join(self.all_tokens))
        return (path,)

    def save_pretrained(self, save_directory, filename_prefix=None):
        """Write `tokenizer_config.json`, `special_tokens_map.json` and `vocab.txt` as transformers lays them out.

        The directory loads back with this class and with `transformers.AutoTokenizer`/`EsmTokenizer`.
        Returns the tuple of written paths.
        """
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_pretrained needs a directory, got the file {save_directory!r}.")
        os.makedirs(save_directory, exist_ok=True)
        prefix = filename_prefix + "-" if filename_prefix else ""
        config_path = os.path.join(save_directory, prefix + TOKENIZER_CONFIG_FILE)
        special_path = os.path.join(save_directory, prefix + SPECIAL_TOKENS_MAP_FILE)
        write_text_atomic(config_path, _to_json(self._tokenizer_config()))
        write_text_atomic(special_path, _to_json(self.special_tokens_map))
        return (config_path, special_path) + self.save_vocabulary(save_directory, filename_prefix)

    def _tokenizer_config(self):
        decoder = {}
        for token in self.special_tokens_map.values():
            decoder[str(self._token_to_id[token])] = {
                "content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                "special": True,
            }
        config = {"added_tokens_decoder": dict(sorted(decoder.items(), key=lambda item: int(item[0])))}
        config.update(self.special_tokens_map)
        config.update(clean_up_tokenization_spaces=False, model_max_length=self.model_max_length,
                      tokenizer_class="EsmTokenizer")
        return dict(sorted(config.items()))

    # ------------------------------------------------------------------------------------------------ vocabulary

    @property
    def backend_tokenizer(self):
        """The underlying `tokenizers.Tokenizer` (no special tokens added: this class adds them itself)."""
        return self._backend

    @property
    def vocab_size(self):
        return len(self.all_tokens)

    def __len__(self):
        return len(self.all_tokens)

    def get_vocab(self):
        """Token -> id mapping."""
        return dict(self._token_to_id)

    @property
    def special_tokens_map(self):
        return {name: getattr(self, name) for name in _SPECIAL_TOKEN_ARGS}

    @property
    def all_special_tokens(self):
        return [self.eos_token, self.unk_token, self.pad_token, self.cls_token, self.mask_token]

    @property
    def all_special_ids(self):
        return [self._token_to_id[token] for token in self.all_special_tokens]

    unk_token_id = property(lambda self: self._token_to_id[self.unk_token])
    cls_token_id = property(lambda self: self._token_to_id[self.cls_token])
    pad_token_id = property(lambda self: self._token_to_id[self.pad_token])
    mask_token_id = property(lambda self: self._token_to_id[self.mask_token])
    eos_token_id = property(lambda self: self._token_to_id[self.eos_token])

    def token_to_id(self, token):
        return self._token_to_id.get(token, self.unk_token_id)

    def id_to_token(self, index):
        return self.all_tokens[index] if 0 <= index < len(self.all_tokens) else self.unk_token

    def convert_tokens_to_ids(self, tokens):
        """One token -> its id; a list of tokens -> a list of ids. Unknown tokens map to `unk_token_id`."""
        if isinstance(tokens, str):
            return self.token_to_id(tokens)
        return [self.token_to_id(token) for token in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        """One id -> its token; a list of ids -> a list of tokens. Ids outside the vocabulary give `unk_token`."""
        if isinstance(ids, int) or getattr(ids, "ndim", None) == 0:
            return self.id_to_token(int(ids))
        skipped = set(self.all_special_ids) if skip_special_tokens else ()
        return [self.id_to_token(int(index)) for index in _to_list(ids) if int(index) not in skipped]

    # ------------------------------------------------------------------------------------------------ tokenising

    def tokenize(self, text):
        """Split `text` into token strings; characters that become `<unk>` are returned as written, like HF.

        Examples:

        >>> import tempfile
        >>> EsmTokenizer(write_default_vocab(tempfile.mkdtemp())).tokenize("MK <mask>x1")
        ['M', 'K', '<mask>', 'x1']
        """
        encoding = self._backend.encode(text, add_special_tokens=False)
        return [text[start:end] for start, end in encoding.offsets]

    def _encode_texts(self, texts):
        return [encoding.ids for encoding in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        """`<cls> ids0 <eos>`, or `<cls> ids0 <eos> ids1 <eos>` for a pair."""
        cls, eos = [self.cls_token_id], [self.eos_token_id]
        if token_ids_1 is None:
            return cls + list(token_ids_0) + eos
        return cls + list(token_ids_0) + eos + list(token_ids_1) + eos

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        """1 for each special token position, 0 for residues.

        Args:
            token_ids_0: ids of the first sequence.
            token_ids_1: ids of the second sequence, if any.
            already_has_special_tokens: `token_ids_0` already holds `<cls>`/`<eos>`; flag every special id in it.
        """
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("Pass a single id list when already_has_special_tokens=True.")
            special = set(self.all_special_ids)
            return [1 if index in special else 0 for index in token_ids_0]
        mask = [1] + [0] * len(token_ids_0) + [1]
        if token_ids_1 is not None:
            mask += [0] * len(token_ids_1) + [1]
        return mask

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None):
        """0 over `<cls> ids0 <eos>`, then 1 over `ids1 <eos>` for a pair."""
        first = [0] * (len(token_ids_0) + 2)
        return first if token_ids_1 is None else first + [1] * (len(token_ids_1) + 1)

    def num_special_tokens_to_add(self, pair=False):
        return 3 if pair else 2

    def __call__(
        self,
        text,
        text_pair=None,
        add_special_tokens=True,
        padding=False,
        truncation=None,
        max_length=None,
        pad_to_multiple_of=None,
        return_tensors=None,
        return_token_type_ids=False,
        return_attention_mask=True,
        return_special_tokens_mask=False,
        return_length=False,
    ):
        """Encode one sequence (or pair), or a batch of them, into a `BatchEncoding`.

        Args:
            text: a protein string or a list of them.
            text_pair: an optional second string (or list, matching `text`), encoded as `<cls> A <eos> B <eos>`.
            add_special_tokens: add `<cls>`/`<eos>`.
            padding: `False`/`"do_not_pad"`, `True`/`"longest"` (longest in the batch) or `"max_length"`.
            truncation: `True`/`"longest_first"`, `"only_first"`, `"only_second"` or `False`. As in transformers,
                giving `max_length` without `padding` or `truncation` turns truncation on.
            max_length: target length for truncation and `padding="max_length"` (special tokens included).
                Defaults to `model_max_length`.
            pad_to_multiple_of: round the padded length up to a multiple of this.
            return_tensors: `None` (Python lists), `"np"` (int64 arrays) or `"tf"` (int32 tensors). A single string
                then gets a batch axis of 1.
            return_token_type_ids, return_attention_mask, return_special_tokens_mask, return_length: which extra
                fields to return.

        Returns:
            A `BatchEncoding` with `input_ids` and, as requested, `attention_mask`, `token_type_ids`,
            `special_tokens_mask` and `length`.

        Examples:

        >>> import tempfile
        >>> tokenizer = EsmTokenizer(write_default_vocab(tempfile.mkdtemp()))
        >>> tokenizer("MKTAYIAK", truncation=True, max_length=5)["input_ids"]
        [0, 20, 15, 11, 2]
        >>> tokenizer("MK", "LV")["input_ids"]
        [0, 20, 15, 2, 4, 7, 2]
        """
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        if text_pair is None:
            pairs = None
        else:
            pairs = list(text_pair) if isinstance(text_pair, (list, tuple)) else [text_pair]
            if len(pairs) != len(texts) or batched != isinstance(text_pair, (list, tuple)):
                raise ValueError("`text_pair` must be a string when `text` is, or a list as long as `text`.")
        for value in texts + (pairs or []):
            if not isinstance(value, str):
                raise TypeError(f"Expected protein strings, got {type(value).__name__}: {value!r}.")

        padding, truncation, max_length = self._resolve_strategies(padding, truncation, max_length)
        first_ids = self._encode_texts(texts)
        second_ids = self._encode_texts(pairs) if pairs is not None else [None] * len(texts)

        rows = []
        for ids, pair_ids in zip(first_ids, second_ids):
            if truncation != "do_not_truncate" and max_length:
                special = self.num_special_tokens_to_add(pair_ids is not None) if add_special_tokens else 0
                excess = len(ids) + len(pair_ids or []) + special - max_length
                ids, pair_ids = _truncate(ids, pair_ids, excess, truncation)
            if add_special_tokens:
                row = {"input_ids": self.build_inputs_with_special_tokens(ids, pair_ids),
                       "token_type_ids": self.create_token_type_ids_from_sequences(ids, pair_ids),
                       "special_tokens_mask": self.get_special_tokens_mask(ids, pair_ids)}
            else:
                sequence = ids + (pair_ids or [])
                row = {"input_ids": sequence, "token_type_ids": [0] * len(sequence),
                       "special_tokens_mask": [0] * len(sequence)}
            row["attention_mask"] = [1] * len(row["input_ids"])
            row["length"] = len(row["input_ids"])
            rows.append(row)

        target = None
        if padding == "longest" and rows:
            target = max(len(row["input_ids"]) for row in rows)
        elif padding == "max_length":
            target = max_length
        if target is not None and pad_to_multiple_of and target % pad_to_multiple_of:
            target = (target // pad_to_multiple_of + 1) * pad_to_multiple_of
        if target is not None:
            fills = {"input_ids": self.pad_token_id, "token_type_ids": self.pad_token_type_id,
                     "special_tokens_mask": 1, "attention_mask": 0}
            for row in rows:
                missing = target - len(row["input_ids"])
                for key, fill in fills.items():
                    row[key] = row[key] + [fill] * missing

        wanted = {"input_ids": True, "token_type_ids": return_token_type_ids,
                  "special_tokens_mask": return_special_tokens_mask, "attention_mask": return_attention_mask}
        fields = {key: [row[key] for row in rows] for key, keep in wanted.items() if keep}
        if return_length:  # transformers reports a batch's lengths before padding, a single sequence's after
            fields["length"] = [row["length"] if batched else len(row["input_ids"]) for row in rows]
        if not batched and return_tensors is None:
            fields = {key: value[0] for key, value in fields.items()}
        return BatchEncoding({key: _as_tensor(value, return_tensors, key) for key, value in fields.items()})

    def _resolve_strategies(self, padding, truncation, max_length):
        # Mirrors transformers: a bare max_length means "truncate"; no usable length means "don't pad/truncate".
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"
        padding = {False: "do_not_pad", None: "do_not_pad", True: "longest"}.get(padding, padding)
        truncation = {False: "do_not_truncate", None: "do_not_truncate", True: "longest_first"}.get(
            truncation, truncation
        )
        if padding not in _PADDING_CHOICES:
            raise ValueError(f"padding must be one of {_PADDING_CHOICES} or a bool, got {padding!r}.")
        if truncation not in _TRUNCATION_CHOICES:
            raise ValueError(f"truncation must be one of {_TRUNCATION_CHOICES} or a bool, got {truncation!r}.")
        if max_length is None:
            bounded = self.model_max_length <= _UNBOUNDED_LENGTH
            if padding == "max_length" and not bounded:
                padding = "do_not_pad"
            if truncation != "do_not_truncate" and not bounded:
                truncation = "do_not_truncate"
            if bounded and (padding == "max_length" or truncation != "do_not_truncate"):
                max_length = self.model_max_length
        return padding, truncation, max_length

    def encode(self, text, text_pair=None, add_special_tokens=True, padding=False, truncation=None,
               max_length=None):
        """The `input_ids` of one sequence (or pair) as a list of ints."""
        return self(text, text_pair, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                    max_length=max_length, return_attention_mask=False)["input_ids"]

    # ------------------------------------------------------------------------------------------------- decoding

    def decode(self, token_ids, skip_special_tokens=False):
        """Ids -> space-separated tokens (`"<cls> M K <eos>"`), as transformers' `EsmTokenizer.decode` writes them.

        Args:
            token_ids: an int, a list of ints, or a 1-D NumPy array / tensor.
            skip_special_tokens: drop `<cls>`, `<eos>`, `<pad>`, `<unk>` and `<mask>`.
        """
        tokens = self.convert_ids_to_tokens(token_ids, skip_special_tokens=skip_special_tokens)
        return tokens if isinstance(tokens, str) else " ".join(tokens)

    def batch_decode(self, sequences, skip_special_tokens=False):
        """`decode` applied to each row of a list of id lists or a 2-D array / tensor."""
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in _to_list(sequences)]

    def __repr__(self):
        return (f"EsmTokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
                f"vocab_file={self.vocab_file!r})")


def _build_backend(token_to_id, special_tokens, unk_token):
    """A `tokenizers.Tokenizer` that implements rules 1-3 of the module docstring."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel(vocab=token_to_id, unk_token=unk_token))
    # Text between vocabulary matches is cut at whitespace; each piece is looked up whole, so it becomes one <unk>.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(WHITESPACE_RUN_PATTERN), behavior="removed")
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in special_tokens])
    residues = [token for token in token_to_id if token and token not in special_tokens]
    backend.add_tokens([AddedToken(token, normalized=False, special=False) for token in residues])
    return backend


def _truncate(ids, pair_ids, excess, strategy):
    """Drop `excess` tokens from the right the way transformers' `truncate_sequences` does."""
    if excess <= 0:
        return ids, pair_ids
    if strategy == "only_first" or (strategy == "longest_first" and pair_ids is None):
        return ids[: max(len(ids) - excess, 0)], pair_ids
    if strategy == "only_second":
        return (ids, pair_ids[: max(len(pair_ids) - excess, 0)]) if pair_ids else (ids, pair_ids)
    # longest_first on a pair: first even out the lengths, then take the rest alternately (extra one from the pair).
    first_remove = min(abs(len(pair_ids) - len(ids)), excess)
    second_remove = excess - first_remove
    if len(ids) > len(pair_ids):
        from_ids, from_pair = first_remove + second_remove // 2, second_remove - second_remove // 2
    else:
        from_ids, from_pair = second_remove // 2, first_remove + second_remove - second_remove // 2
    return ids[: max(len(ids) - from_ids, 0)], pair_ids[: max(len(pair_ids) - from_pair, 0)]


def _as_tensor(rows, return_tensors, key):
    if return_tensors is None:
        return rows
    if return_tensors not in ("np", "tf"):
        raise ValueError(f"return_tensors must be None, 'np' or 'tf', got {return_tensors!r}.")
    import numpy as np

    if key == "length":
        array = np.asarray(rows, dtype=np.int64)
    elif len({len(row) for row in rows}) > 1:
        raise ValueError(
            f"Cannot stack {key} of different lengths into one tensor; pass padding=True (or 'max_length')."
        )
    else:
        array = np.asarray(rows, dtype=np.int64).reshape(len(rows), len(rows[0]) if rows else 0)
    if return_tensors == "np":
        return array
    from tf_esm.backend import require_tensorflow

    tf = require_tensorflow("return_tensors='tf'", instead="Use return_tensors='np' (every backend takes NumPy).")

    return tf.constant(array, dtype=tf.int32)


def _to_list(values):
    """Lists, tuples, NumPy arrays and eager tensors -> (nested) Python lists."""
    if hasattr(values, "numpy"):
        values = values.numpy()
    if hasattr(values, "tolist"):
        return values.tolist()
    return [_to_list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else value
            for value in values]


def _constructor_kwargs(config):
    """The `EsmTokenizer` arguments stored in a transformers `tokenizer_config.json` / `special_tokens_map.json`."""
    kwargs = {}
    for name in _SPECIAL_TOKEN_ARGS:
        token = config.get(name)
        if isinstance(token, dict):  # older files store AddedToken dicts
            token = token.get("content")
        if isinstance(token, str):
            kwargs[name] = token
    if isinstance(config.get("model_max_length"), (int, float)):
        kwargs["model_max_length"] = int(config["model_max_length"])
    return kwargs


def _to_json(mapping):
    return json.dumps(mapping, indent=2, ensure_ascii=False) + "\n"
