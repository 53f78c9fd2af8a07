"""The `tf-esm` command: embeddings, variant scores, contact maps, ESMFold structures, conversion and export.

Run `tf-esm --help` and `tf-esm COMMAND --help` for every option with examples. Exit codes: 0 success; 1 a
failure while running (unexpected error, a missing optional package such as matplotlib, a missing tf_esm
component); 2 a usage or input error (bad options, FASTA or CSV problems, malformed mutations, a model that cannot
be found or read, an output that exists and may not be replaced); 130 interrupted (Ctrl-C or SIGTERM; finished
work is kept and the same command resumes). Errors are one line on stderr (`tf-esm: error: ...`); `--debug` adds
the traceback and TensorFlow's own log messages.

One module per subcommand (`embed`, `score`, `contacts`, `fold`, `convert`, `export`), each with its arguments,
help text and `run`; `common` holds what they share and `dispatch` the parser and `main`.
"""

from tf_esm.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, PROG, CliError
from tf_esm.cli.dispatch import build_parser, main
from tf_esm.cli.fold import fold_summary
from tf_esm.io.embedding_stores import INCLUDE_CHOICES, record_id_from_key, record_key

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_USAGE", "INCLUDE_CHOICES", "PROG", "CliError", "build_parser",
           "fold_summary", "main", "record_id_from_key", "record_key"]
