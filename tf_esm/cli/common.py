"""What every `tf-esm` subcommand shares: exit codes, `CliError`, argument types, the console, model loading,
output directories and the SIGTERM handler.

Imports stay inside functions where they would pull in TensorFlow, so `tf-esm --help` and `--version` start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys

PROG = "tf-esm"
EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class CliError(Exception):
    """An error reported as one line `tf-esm: error: <message>` with exit status `code`."""

    def __init__(self, message, code=EXIT_USAGE):
        super().__init__(message)
        self.code = code


class _Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        if action.default in (None, False):  # flags and "no default": nothing worth showing
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError(f"{message} (see '{self.prog} --help')")


def _at_least(parse, minimum, wanted, unparsable=None):
    """An argparse `type`: `parse(text)`, refused (NaN too) below `minimum` with "expected <wanted>, got ..."."""

    def convert(text):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unparsable or wanted}, got {text!r}") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return convert


positive_int = _at_least(int, 1, "a positive integer")
non_negative_int = _at_least(int, 0, "a non-negative integer")
non_negative_float = _at_least(float, 0, "a non-negative number of seconds", unparsable="a number of seconds")


def add_common(parser):
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bar and no summary line (warnings and errors still go to stderr)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on errors print the traceback, and let TensorFlow's own log messages through")


def add_model_argument(parser, help_text="model directory, fair-esm .pt / esm-package ESM C .pth file or hub id"):
    parser.add_argument("model", metavar="MODEL", help=help_text)


class _DeprecatedSpelling(argparse.Action):
    """An option's old spelling: stores into the new option's destination and warns on stderr (while parsing,
    before anything slow starts)."""

    def __init__(self, option_strings, dest, new_option, **kwargs):
        self.new_option = new_option
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{PROG}: warning: {option_string} is deprecated; use {self.new_option}.", file=sys.stderr,
              flush=True)
        setattr(namespace, self.dest, values)


def add_token_budget_argument(parser, help_text, default=4096, old_spelling=None):
    """`--max-tokens-per-batch N` (every subcommand's name for its batch token budget, as the Python keyword
    `max_tokens_per_batch`); `old_spelling`, a name it replaced, still works with a warning."""
    parser.add_argument("--max-tokens-per-batch", type=positive_int, default=default, metavar="N", help=help_text)
    if old_spelling:
        parser.add_argument(old_spelling, dest="max_tokens_per_batch", type=positive_int, metavar="N",
                            default=argparse.SUPPRESS, action=_DeprecatedSpelling,
                            new_option="--max-tokens-per-batch")


def add_fasta_argument(parser, help_text):
    parser.add_argument("fasta", metavar="FASTA", help=help_text)


class Console:
    """stderr output of one run: warnings always, progress and summaries unless quiet."""

    def __init__(self, quiet):
        self.quiet = quiet

    def info(self, message):
        if not self.quiet:
            print(f"{PROG}: {message}", file=sys.stderr, flush=True)

    def warning(self, message):
        print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)

    def progress(self, total, unit, total_work=None):
        from tf_esm.progress import ProgressBar

        return ProgressBar(total, unit=unit, total_work=total_work, enabled=False if self.quiet else None)


class LogHandler(logging.Handler):
    """tf_esm's library warnings as `tf-esm: warning: ...` lines."""

    def emit(self, record):
        print(f"{PROG}: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr, flush=True)


def read_records(path):
    from tf_esm.io.fasta import read_fasta

    return read_fasta(path)


def configure_threads():
    """Throughput threading for the batch-embedding commands (see `tf_esm.pipelines.inference.configure_cpu_threads`)."""
    from tf_esm.pipelines.inference import configure_cpu_threads

    configure_cpu_threads()


def load_model(reference, model_class=None, embedding=False, precision="float32", **model_kwargs):
    """A model from a directory, a fair-esm .pt file or a hub id; the class named by config.json by default.
    `embedding`: only the encoder's outputs are used, so a base model is built without its pooler. `precision`:
    see `from_pretrained` (bfloat16 warns, through the library logger, on a CPU without bfloat16 instructions).
    `model_kwargs`: constructor arguments of the model class (e.g. ESMFold's `stem_precision`)."""
    from tf_esm.io.weights import CheckpointError

    try:
        return _load_model_unchecked(os.fspath(reference), model_class, embedding, precision, model_kwargs)
    except CheckpointError:
        raise
    except ValueError as error:  # e.g. a configuration this model class cannot use
        raise CliError(f"cannot load MODEL {reference}: {error}") from None


def _load_model_unchecked(reference, model_class, embedding, precision, model_kwargs):
    from tf_esm.modeling import TFEsmModel
    from tf_esm.pipelines.auto import reference_class

    model_class = model_class or reference_class(reference)
    kwargs = dict(model_kwargs)
    if embedding and model_class is TFEsmModel:
        kwargs["add_pooling_layer"] = False
    if precision != "float32":
        kwargs["precision"] = precision
    return model_class.from_pretrained(reference, **kwargs)


def check_contacts_supported(model, what):
    """ESM C has no contact head: asking it for contacts is an error that says what to use instead."""
    if getattr(model.config, "model_type", None) == "esmc":
        raise CliError(f"{what}: ESM C models have no contact-prediction head (no released contact regression "
                       "exists for them); embed without contacts, or read their attention maps in Python "
                       "(model(..., output_attentions=True)).")


# Output directories this run created: a run that fails removes those still empty (see `main`).
created_directories = []


def make_output_directory(path, what):
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"{what} {path} exists and is not a directory.")
    if not os.path.isdir(path):
        os.makedirs(path)
        created_directories.append(path)


def remove_empty_created_directories():
    while created_directories:
        with contextlib.suppress(OSError):  # not empty (a record was saved) or already gone: keep it
            os.rmdir(created_directories.pop())


def warn_truncated(console, records, limit):
    for record in records:
        if len(record.sequence) > limit:
            console.warning(f"record {record.id!r} has {len(record.sequence)} residues; using the first {limit} "
                            "(--truncation-seq-length).")


def check_position_table(model, records, truncation):
    """Absolute-position models (ESM-1b, ESM-1v) cannot embed more residues than their position table holds."""
    limit = model.config.default_max_length()
    if limit is None:
        return
    residues = limit - 2  # <cls> and <eos> take two positions
    for record in records:
        if min(len(record.sequence), truncation) > residues:
            raise CliError(f"record {record.id!r} has {len(record.sequence)} residues, but this model's absolute "
                           f"position table holds at most {residues} (+ <cls>/<eos>); pass "
                           f"--truncation-seq-length {residues} (or less) to use the first {residues} residues.")


def require_module(module, purpose, code=EXIT_FAILURE):
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise CliError(f"{purpose} needs {module}, which is not installed: pip install {module}", code=code) from None


# Optional packages the commands use: the pip name and the extra of setup.cfg that installs it.
OPTIONAL_PACKAGES = {"pyarrow": ("pyarrow", "parquet"), "apache_beam": ("apache-beam", "beam"),
                     "matplotlib": ("matplotlib", "plot"), "torch": ("torch", "torch")}


def require_installed(module, purpose):
    """Exit 2 with the install line when the optional package `module` is missing. Called right after parsing
    (`check_arguments`), before TensorFlow starts: `find_spec` looks the package up without importing it."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pip_name, extra = OPTIONAL_PACKAGES[module]
        raise CliError(f"{purpose} needs {pip_name}, which is not installed: pip install {pip_name} (or, in the "
                       f"tf_esm checkout: pip install -e \".[{extra}]\")")


def check_model_packages(*references):
    """A fair-esm .pt file, or a directory whose only weights are PyTorch .bin files, is read with torch."""
    for reference in references:
        if reference.endswith((".pt", ".pth")) and os.path.isfile(reference):
            kind = "a fair-esm .pt file" if reference.endswith(".pt") else "an esm-package ESM C .pth file"
            require_installed("torch", f"MODEL {reference} ({kind})")
        elif os.path.isdir(reference):
            names = os.listdir(reference)
            if (any(name.endswith(".bin") for name in names)
                    and not any(name.endswith((".safetensors", ".h5")) for name in names)):
                require_installed("torch", f"MODEL {reference} (PyTorch .bin weights)")


def skipped_note(skipped):
    """The end of a run's summary line: how many records an earlier run had already done."""
    return f" ({skipped} already there, skipped)" if skipped else ""


def interrupted(what, where):
    """The error a Ctrl-C / SIGTERM ends a resumable run with."""
    return CliError(f"interrupted; {what} are saved in {where}. Run the same command again to finish.",
                    code=EXIT_INTERRUPTED)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Turn SIGTERM into KeyboardInterrupt so finished work is saved (main thread only)."""
    def handler(signum, frame):
        raise _Interrupted()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
