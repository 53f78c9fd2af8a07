"""`EsmcTokenizer`: protein strings to ESM C token ids, as transformers' `EsmcTokenizer` gives them."""

from __future__ import annotations

import json
import os

from tf_esm.configuration import ESMC_VOCAB
from tf_esm.storage.atomic import write_text_atomic
from tf_esm.tokenization.esm import (
    TOKENIZER_CONFIG_FILE,
    VERY_LARGE_INTEGER,
    EsmTokenizer,
    _constructor_kwargs,
    _to_json,
)

TOKENIZER_FILE_NAME = "tokenizer.json"


class EsmcTokenizer(EsmTokenizer):
    """Tokenizer for ESM C, producing the same ids as `transformers.EsmcTokenizer` (and the `esm` package's).

    Its rules differ from `EsmTokenizer`'s as transformers' do: every character is one token, so a character outside
    the vocabulary (lower case, whitespace, `*`, ...) is one `<unk>` each; `<cls>`, `<pad>`, `<eos>`, `<unk>` and
    `<mask>` written in the text are single tokens; `|` (id 31) is the chain break between the chains of a complex.
    Sequences are encoded as `<cls> A <eos>`, padded on the right with `<pad>` and truncated from the right.

    Args:
        tokenizer_file: transformers' `tokenizer.json` (optional: the vocabulary is fixed by the released weights,
            `tf_esm.configuration.ESMC_VOCAB`, and used when no file is given).
        chain_break_token: the token between chains (`|`).
        unk_token, cls_token, pad_token, mask_token, eos_token, model_max_length: as `EsmTokenizer`'s.

    Examples:

    >>> tokenizer = EsmcTokenizer()
    >>> tokenizer("ACDEFGHIKLMNPQRSTVWY")["input_ids"]
    [0, 5, 23, 13, 9, 18, 6, 21, 12, 15, 4, 20, 17, 14, 16, 10, 8, 11, 7, 22, 19, 2]
    >>> tokenizer(["MKT|AY", "MK"], padding=True)["input_ids"]
    [[0, 20, 15, 11, 31, 5, 19, 2], [0, 20, 15, 2, 1, 1, 1, 1]]
    """

    vocab_files_names = {"tokenizer_file": TOKENIZER_FILE_NAME}

    def __init__(self, tokenizer_file=None, unk_token="<unk>", cls_token="<cls>", pad_token="<pad>",
                 mask_token="<mask>", eos_token="<eos>", chain_break_token="|", model_max_length=VERY_LARGE_INTEGER):
        from tokenizers import AddedToken, Tokenizer
        from tokenizers.models import BPE

        self.vocab_file = None
        self.tokenizer_file = os.fspath(tokenizer_file) if tokenizer_file is not None else None
        if self.tokenizer_file is not None:
            backend = Tokenizer.from_file(self.tokenizer_file)
            token_to_id = backend.get_vocab(with_added_tokens=True)
            self.all_tokens = [None] * (max(token_to_id.values()) + 1)
            for token, index in token_to_id.items():
                self.all_tokens[index] = token
            if None in self.all_tokens:
                raise ValueError(f"{self.tokenizer_file}: the vocabulary has gaps (ids "
                                 f"{[i for i, token in enumerate(self.all_tokens) if token is None][:5]}...).")
        else:
            self.all_tokens = list(ESMC_VOCAB)
            token_to_id = {token: index for index, token in enumerate(self.all_tokens)}
            # Character level: BPE with no merges looks each character up alone (an unknown one is one <unk>).
            backend = Tokenizer(BPE(token_to_id, merges=[], unk_token=str(unk_token)))
        self._token_to_id = {token: index for index, token in enumerate(self.all_tokens)}
        self.unk_token, self.cls_token, self.pad_token = unk_token, cls_token, pad_token
        self.mask_token, self.eos_token, self.chain_break_token = mask_token, eos_token, chain_break_token
        self.model_max_length = int(model_max_length) if model_max_length is not None else VERY_LARGE_INTEGER
        missing = [token for token in list(self.special_tokens_map.values()) + [chain_break_token]
                   if token not in self._token_to_id]
        if missing:
            raise ValueError(f"Special token(s) {missing} are not in the ESM C vocabulary "
                             f"({self.tokenizer_file or 'ESMC_VOCAB'}).")
        backend.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                    for token in list(self.special_tokens_map.values()) + [chain_break_token]])
        # This class pads, truncates and adds <cls>/<eos> itself (a saved file may switch the backend's own on).
        backend.no_padding()
        backend.no_truncation()
        self._backend = backend

    chain_break_token_id = property(lambda self: self._token_to_id[self.chain_break_token])

    @classmethod
    def from_pretrained(cls, path_or_hub_id, **overrides):
        """Load from a directory (or hub id) holding transformers' `tokenizer.json` and `tokenizer_config.json`
        (a directory without them gets the released vocabulary); keyword `overrides` take precedence."""
        from tf_esm.storage.hub import resolve_file

        reference = os.fspath(path_or_hub_id)
        if os.path.isfile(reference):
            return cls(reference, **overrides)
        kwargs = {"tokenizer_file": resolve_file(reference, TOKENIZER_FILE_NAME, required=False)}
        path = resolve_file(reference, TOKENIZER_CONFIG_FILE, required=False)
        if path is not None:
            with open(path, encoding="utf-8") as handle:
                config = json.load(handle)
            kwargs.update(_constructor_kwargs(config))
            if isinstance(config.get("chain_break_token"), str):
                kwargs["chain_break_token"] = config["chain_break_token"]
        kwargs.update(overrides)
        return cls(**kwargs)

    def save_pretrained(self, save_directory, filename_prefix=None):
        """Write `tokenizer.json` and `tokenizer_config.json` as transformers' `EsmcTokenizer` lays them out (the
        directory loads back with this class and with `transformers.AutoTokenizer`). Returns the written paths."""
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_pretrained needs a directory, got the file {save_directory!r}.")
        os.makedirs(save_directory, exist_ok=True)
        prefix = filename_prefix + "-" if filename_prefix else ""
        tokenizer_path = os.path.join(save_directory, prefix + TOKENIZER_FILE_NAME)
        config_path = os.path.join(save_directory, prefix + TOKENIZER_CONFIG_FILE)
        write_text_atomic(tokenizer_path, self._backend.to_str(pretty=True))
        config = dict(self.special_tokens_map, bos_token=self.cls_token, chain_break_token=self.chain_break_token,
                      backend="tokenizers", extra_special_tokens=[], model_max_length=self.model_max_length,
                      tokenizer_class="EsmcTokenizer")
        write_text_atomic(config_path, _to_json(dict(sorted(config.items()))))
        return tokenizer_path, config_path

    def save_vocabulary(self, save_directory, filename_prefix=None):
        """Write the vocabulary as `[prefix-]tokenizer.json`; return the tuple of written paths."""
        name = (filename_prefix + "-" if filename_prefix else "") + TOKENIZER_FILE_NAME
        path = os.path.join(os.fspath(save_directory), name)
        write_text_atomic(path, self._backend.to_str(pretty=True))
        return (path,)

    @property
    def all_special_tokens(self):
        return super().all_special_tokens + [self.chain_break_token]

    def __repr__(self):
        return (f"EsmcTokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
                f"tokenizer_file={self.tokenizer_file!r})")
