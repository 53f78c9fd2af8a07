"""The `tf-esm` parser and `main`: dispatch to a subcommand, and turn every error into one line and an exit status."""

from __future__ import annotations

import logging
import os
import sys
import traceback

from tf_esm.backend import check_keras_importable
from tf_esm.cli import contacts, convert, embed, export, fold, score
from tf_esm.cli.common import (
    EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, PROG, CliError, Console, Formatter, LogHandler, Parser, add_common,
    created_directories, remove_empty_created_directories)

SUBCOMMANDS = (embed, score, contacts, fold, convert, export)
_MODULES = {module.NAME: module for module in SUBCOMMANDS}

_DESCRIPTION = """\
ESM protein language models and ESMFold in TensorFlow / Keras 3.

MODEL is a model directory (HF layout or written by tf_esm), a fair-esm .pt checkpoint, or a hub id such as
facebook/esm2_t6_8M_UR50D (downloaded and cached when online; offline, pass a local directory).
"""

_EPILOG = """\
examples:
  tf-esm embed facebook/esm2_t6_8M_UR50D proteins.fasta embeddings.h5 --repr-layers -1 --include mean per_tok
  tf-esm score facebook/esm1v_t33_650M_UR90S_1 --sequence MKTAYIAKQR --mutations dms.csv --output scored.csv
  tf-esm contacts facebook/esm2_t6_8M_UR50D proteins.fasta contacts/ --png
  tf-esm fold facebook/esmfold_v1 proteins.fasta structures/ --num-recycles 0
  tf-esm convert esm2_t6_8M_UR50D.pt esm2_t6_8M_tf
  tf-esm export esm2_t6_8M_tf serving/esm2/1

exit status: 0 success, 1 failure while running, 2 usage or input error, 130 interrupted.
Run 'tf-esm COMMAND --help' for a command's options.
"""


def _version():
    from importlib import metadata

    try:
        return metadata.version("tf_esm")  # without importing tf_esm (and TensorFlow) for --version
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser():
    """The `tf-esm` argument parser (sub-commands embed, score, contacts, fold, convert, export)."""
    parser = Parser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG, formatter_class=Formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    add_common(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for module in SUBCOMMANDS:
        sub = commands.add_parser(module.NAME, help=module.HELP, description=module.HELP, epilog=module.EPILOG,
                                  formatter_class=Formatter)
        add_common(sub)
        module.add_arguments(sub)
    return parser


def _input_errors():
    """Exception types that mean a wrong input (exit 2): files, sequences, mutants, models, outputs."""
    from tf_esm.io.fasta import FastaError
    from tf_esm.storage.hub import ModelNotFoundError
    from tf_esm.io.embedding_stores import EmbeddingStoreError
    from tf_esm.pipelines.scoring import MutationError
    from tf_esm.io.weights import CheckpointError

    return (FastaError, MutationError, ModelNotFoundError, CheckpointError, EmbeddingStoreError, FileExistsError,
            FileNotFoundError)


def _offline_message(repo_id):
    """What to do when a hub id cannot be downloaded, in the command line's terms."""
    from tf_esm.storage.hub import offline_reason

    directory = repo_id.split("/")[-1]
    return (f"{offline_reason(repo_id)} On a machine that is online run `hf download {repo_id} --local-dir "
            f"{directory}` (or copy the model directory from elsewhere), then pass ./{directory} as MODEL.")


def _one_line(text):
    return " ".join(str(text).split())


def import_tensorflow_quietly():
    from tf_esm.startup import import_tensorflow_quietly as import_quietly

    try:
        import_quietly(for_command=True)
    except ImportError:
        pass  # reported, with its message, by the command that needs it


def main(argv=None):
    """Run `tf-esm` with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    handler = LogHandler(logging.WARNING)
    library_logger = logging.getLogger("tf_esm")
    library_logger.addHandler(handler)
    propagate, library_logger.propagate = library_logger.propagate, False
    hub_logger = logging.getLogger("huggingface_hub")
    hub_level = hub_logger.level
    if not debug:
        hub_logger.setLevel(logging.ERROR)  # its retry messages; the failure is reported as one line
    created_directories.clear()
    try:
        status = _dispatch(argv, debug)
    finally:
        library_logger.removeHandler(handler)
        library_logger.propagate = propagate
        hub_logger.setLevel(hub_level)
    if status != 0:
        remove_empty_created_directories()
    created_directories.clear()
    return status


def console_main():
    """The `tf-esm` executable: `main()`, then exit with its status through the interpreter's ordinary shutdown
    (exit handlers, buffered files and other libraries' clean-up all run)."""
    sys.exit(main())


def _parse(argv):
    """`embed ... -- BEAM OPTIONS`: what follows the first `--` is kept as `args.pipeline_args` (Apache Beam's
    options, for `embed --runner`); for every other command `--` keeps argparse's meaning."""
    parser = build_parser()
    if "--" in argv:
        cut = argv.index("--")
        # The top-level options take no values, so the first word that is not an option is the command.
        if next((word for word in argv[:cut] if not word.startswith("-")), None) == "embed":
            args = parser.parse_args(argv[:cut])
            args.pipeline_args = argv[cut + 1:]
            return args
    args, extras = parser.parse_known_args(argv)
    if extras:  # argparse's own message names the words but not what the command expects
        usage = getattr(_MODULES[args.command], "USAGE", None)
        shape = f"usage: {usage}; " if usage else ""
        raise CliError(f"unrecognized arguments: {' '.join(extras)} ({shape}see 'tf-esm {args.command} --help')")
    return args


def _dispatch(argv, debug):
    """Parse `argv` and run its command; every error becomes one line on stderr and an exit status."""
    args = None
    try:
        try:
            args = _parse(argv)
        except SystemExit as exit_request:  # --help / --version
            return int(exit_request.code or 0)
        console = Console(getattr(args, "quiet", False))
        # Each command's own checks of its arguments (and of the optional packages they need), before TensorFlow.
        check = getattr(_MODULES[args.command], "check_arguments", None)
        if check is not None:
            check(args, console)
        if not debug:
            import_tensorflow_quietly()
        try:
            check_keras_importable()  # after the quiet import: Keras under TensorFlow would print TF's start-up
        except ImportError as error:
            raise CliError(str(error), code=EXIT_FAILURE) from error
        commands = {module.NAME: module.run for module in SUBCOMMANDS}
        return commands[args.command](args, console)
    except CliError as error:
        if debug:
            _print_traceback(error)
        _print_error(error)
        return error.code
    except KeyboardInterrupt:
        _print_error("interrupted.")
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the command line reports every failure as one line
        if debug:
            _print_traceback(error)
        if getattr(error, "offline_repo", None):  # a hub id while offline (tf_esm.storage.hub.ModelNotFoundError)
            _print_error(_offline_message(error.offline_repo))
            return EXIT_USAGE
        if isinstance(error, _input_errors()):
            _print_error(error)
            return EXIT_USAGE
        hint = "" if debug else " (run with --debug for the traceback)"
        _print_error(f"{type(error).__name__}: {error}{hint}")
        return EXIT_FAILURE


def _print_traceback(error):
    """--debug: the traceback, including the exception a CliError was raised from (`raise ... from None` hides
    it from Python's own printing)."""
    cause = error.__cause__ or error.__context__
    if cause is not None and error.__suppress_context__ and error.__cause__ is None:
        traceback.print_exception(cause)
        print("\nwhich was reported as:\n", file=sys.stderr)
    traceback.print_exception(error)


def _print_error(message):
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)
