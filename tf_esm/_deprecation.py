"""Renamed keyword arguments: the old spelling keeps working, with a `DeprecationWarning` naming the new one.

The public names are one vocabulary (`precision`, `stem_precision`, `max_tokens_per_batch`); the names they
replaced are mapped here, in one place, so every caller gets the same warning and the same error when both
spellings are given.
"""

from __future__ import annotations

import functools
import warnings


def apply_renames(kwargs, renames, where, stacklevel=3):
    """Move each deprecated keyword of `kwargs` (`renames`: old name -> new name) to its new name, warning once
    per name; both spellings at once is a TypeError. `where` names the callable in the messages."""
    for old, new in renames.items():
        if old not in kwargs:
            continue
        if new in kwargs:
            raise TypeError(f"{where}() got both {old}= and {new}=; {old} is the deprecated name of {new}: "
                            f"pass {new}= only.")
        warnings.warn(f"{where}({old}=...) is deprecated; use {new}=... instead.", DeprecationWarning,
                      stacklevel=stacklevel)
        kwargs[new] = kwargs.pop(old)
    return kwargs


def renamed_keywords(**renames):
    """Decorator: the function accepts each `old=` of `renames` (old name -> new name) as its new name, with a
    `DeprecationWarning`. `inspect.signature` of the result shows the new names only."""

    def decorate(function):
        method = "." in function.__qualname__

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if any(old in kwargs for old in renames):
                where = function.__qualname__
                if method and args:  # the class the caller used, not the one that defines the method
                    owner = args[0] if isinstance(args[0], type) else type(args[0])
                    where = f"{owner.__name__}.{function.__name__}"
                apply_renames(kwargs, renames, where.replace(".__init__", ""))
            return function(*args, **kwargs)

        wrapper.renamed_keywords = dict(getattr(function, "renamed_keywords", {}), **renames)
        return wrapper

    return decorate
