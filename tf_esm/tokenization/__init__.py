"""Tokenizers: `EsmTokenizer` (ESM-1, ESM-2, ESMFold; `esm.py`) and `EsmcTokenizer` (ESM C; `esmc.py`), and the
choice between them for a model directory (`load_tokenizer`, `resolve_tokenizer`)."""

from __future__ import annotations

import json
import os

from tf_esm.tokenization.esm import (  # noqa: F401 (the public names of tf_esm.tokenization)
    PYTHON_WHITESPACE,
    TOKENIZER_CONFIG_FILE,
    VOCAB_FILE_NAME,
    WHITESPACE_RUN_PATTERN,
    BatchEncoding,
    EsmTokenizer,
    load_vocab_file,
    write_default_vocab,
)
from tf_esm.tokenization.esmc import TOKENIZER_FILE_NAME, EsmcTokenizer

__all__ = ["BatchEncoding", "EsmTokenizer", "EsmcTokenizer", "PYTHON_WHITESPACE", "TOKENIZER_FILE_NAME",
           "VOCAB_FILE_NAME", "WHITESPACE_RUN_PATTERN", "load_tokenizer", "load_vocab_file", "resolve_tokenizer",
           "tokenizer_class_for", "write_default_vocab"]


def tokenizer_class_for(reference):
    """`EsmcTokenizer` for an ESM C directory (its `tokenizer_config.json` or `config.json` says so), else
    `EsmTokenizer`."""
    from tf_esm.storage.hub import resolve_file

    for filename, key, value in ((TOKENIZER_CONFIG_FILE, "tokenizer_class", "EsmcTokenizer"),
                                 ("config.json", "model_type", "esmc")):
        try:
            path = resolve_file(os.fspath(reference), filename, required=False)
        except Exception:  # a file path or an unreachable hub id: decided by the other file, or ESM
            path = None
        if path is not None:
            with open(path, encoding="utf-8") as handle:
                try:
                    if json.load(handle).get(key) == value:
                        return EsmcTokenizer
                except (json.JSONDecodeError, AttributeError):
                    pass
    return EsmTokenizer


def load_tokenizer(reference, **overrides):
    """The tokenizer of a model directory or hub id: `EsmcTokenizer` for ESM C, else `EsmTokenizer`."""
    return tokenizer_class_for(reference).from_pretrained(reference, **overrides)


def resolve_tokenizer(tokenizer=None):
    """An `EsmTokenizer` (or `EsmcTokenizer`) from an instance, a model directory / vocab file / hub id, or `None`
    (ESM-2 vocabulary)."""
    import tempfile

    if isinstance(tokenizer, EsmTokenizer):
        return tokenizer
    if tokenizer is None:
        with tempfile.TemporaryDirectory() as directory:  # the tokenizer reads its vocabulary in __init__
            return EsmTokenizer(write_default_vocab(directory))
    if isinstance(tokenizer, (str, os.PathLike)):
        return load_tokenizer(tokenizer)
    raise TypeError(f"tokenizer must be an EsmTokenizer, a model directory or None, got {type(tokenizer).__name__}.")
