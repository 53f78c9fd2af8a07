"""The `tf-esm` command: embeddings, variant scores, contact maps, ESMFold structures, conversion and export.

Run `tf-esm --help` and `tf-esm COMMAND --help` for every option with examples. Exit codes: 0 success; 1 a
failure while running (unexpected error, a missing optional package such as matplotlib, a missing tf_esm
component); 2 a usage or input error (bad options, FASTA or CSV problems, malformed mutations, a model that cannot
be found or read, an output that exists and may not be replaced); 130 interrupted (Ctrl-C or SIGTERM; finished
work is kept and the same command resumes). Errors are one line on stderr (`tf-esm: error: ...`); `--debug` adds
the traceback and TensorFlow's own log messages.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import traceback

PROG = "tf-esm"
EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
INCLUDE_CHOICES = ("mean", "per_tok", "bos", "contacts")
HDF5_SUFFIXES = (".h5", ".hdf5")
EMBED_SETTINGS_FILE = "tf_esm_embed.json"
SETTINGS_ATTRIBUTE = "tf_esm_embed"
SUMMARY_FILE = "summary.tsv"
DEFAULT_FOLD_MODEL = "facebook/esmfold_v1"
# Seconds to sleep after each stored record: lets tests interrupt a run at a known point (not a user option).
_TEST_DELAY_ENV = "TF_ESM_TEST_RECORD_DELAY"


class CliError(Exception):
    """An error reported as one line `tf-esm: error: <message>` with exit status `code`."""

    def __init__(self, message, code=EXIT_USAGE):
        super().__init__(message)
        self.code = code


class _Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


# ---------------------------------------------------------------------------------------------------- parser

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
  tf-esm fold proteins.fasta structures/ --num-recycles 4
  tf-esm convert esm2_t6_8M_UR50D.pt esm2_t6_8M_tf
  tf-esm export esm2_t6_8M_tf serving/esm2/1

exit status: 0 success, 1 failure while running, 2 usage or input error, 130 interrupted.
Run 'tf-esm COMMAND --help' for a command's options.
"""

_EMBED_EPILOG = """\
output formats (chosen by OUTPUT's name):
  *.h5 / *.hdf5  one HDF5 file. A group per record named by its FASTA id ('%' and '/' written %25 and %2F),
                 with attributes id, length (residues embedded), sequence_length and truncated, and datasets
                 mean/<layer> (H,), per_tok/<layer> (length, H), bos/<layer> (H,) and contacts (length, length);
                 each dataset has attributes layer and length. The root attribute tf_esm_embed holds the run's
                 settings (JSON).
  anything else  a directory with one <id>.npz per record holding arrays mean_<layer>, per_tok_<layer>,
                 bos_<layer>, contacts, id, length, sequence_length and truncated, plus tf_esm_embed.json
                 with the settings.
  <layer> is the non-negative layer number (with 6 layers, --repr-layers -1 is stored as 6; 0 is the
  embedding output). Representations are float32 and exclude <cls>/<eos>; bos is the <cls> position.

resuming and crash safety:
  Records already in OUTPUT are skipped, so re-running the same command after an interruption finishes the
  job (other options must match the first run's, else it is an error; --overwrite starts over). OUTPUT is never
  left half-written: the HDF5 file is built in a hidden copy (.NAME.partial next to it, holding the old records
  plus the new ones) that replaces OUTPUT by an atomic rename every --checkpoint-interval seconds and at the end,
  so a killed run loses at most that interval's work; each .npz is written to a hidden temporary file and renamed.
  Ctrl-C / SIGTERM save the finished records before exiting. Do not run two commands on the same OUTPUT at once.
  For very large per-residue outputs prefer the directory format (each HDF5 checkpoint copies the file once).

examples:
  tf-esm embed facebook/esm2_t6_8M_UR50D proteins.fasta embeddings.h5 --repr-layers -1 --include mean per_tok
  tf-esm embed esm2_t33_650M_UR50D.pt proteins.fasta embeddings/ --repr-layers 0 32 33 --include mean bos
  tf-esm embed facebook/esm2_t6_8M_UR50D proteins.fasta contacts.h5 --include contacts --toks-per-batch 2048

  import h5py; f = h5py.File("embeddings.h5"); f["P12345"]["mean/6"][()]      # read back in Python
"""

_SCORE_EPILOG = """\
strategies (ESM-1v, Meier et al. 2021; log p from the LM head's log-softmax):
  masked-marginals  for each mutated position i: log p(mt_i | wild type with i masked) - log p(wt_i | same);
                    one forward pass per mutated position (batched). The paper's recommended score.
  wt-marginals      the same difference read from one forward pass of the unmasked wild-type sequence.
  pseudo-ppl        pseudo-log-likelihood of the mutant sequence minus that of the wild type, where
                    PLL(x) = sum over all residues i of log p(x_i | x with i masked): one forward pass per residue
                    and distinct mutant (slow). fair-esm's predict.py reports the mutant PLL alone (a constant
                    shift, same ranking) and skips the last two residues; this sums over every residue.
  A multi-mutant such as A24G:L30P scores the sum of its substitutions' scores for the marginal strategies (as
  fair-esm's label_row), and the PLL of the sequence carrying all its substitutions for pseudo-ppl. Higher scores
  mean the variant is more likely than the wild type under the model.

input and output:
  --mutations is a CSV file with a header; the --mutation-col column holds mutants like A24G. The output is the
  same CSV with one column per MODEL, named after the model (the directory or file name without .pt, or the hub
  id's name, e.g. esm1v_t33_650M_UR90S_1; a column of that name is replaced). Several MODELs give an ensemble
  (average the columns yourself). The wild-type letter must match --sequence at that position, else it is an
  error naming the mutant and its row.

examples:
  tf-esm score facebook/esm1v_t33_650M_UR90S_1 --sequence MKTAYIAKQRQISFVKSHFSRQ --mutations dms.csv --output out.csv
  tf-esm score esm1v_1/ esm1v_2/ esm1v_3/ --sequence MKTAYIAKQR --mutations dms.csv --strategy wt-marginals
  tf-esm score facebook/esm2_t6_8M_UR50D --sequence MKTAYIAKQR --mutations dms.csv --offset-idx 0 --mutation-col variant
"""

_CONTACTS_EPILOG = """\
output:
  OUTDIR/<id>.npy  contact probabilities, float32 (L, L) over the residues (fair-esm's predict_contacts);
  OUTDIR/<id>.png  with --png, a heat map (needs matplotlib: pip install matplotlib).
  Ids are FASTA ids with '%' and '/' written %25 and %2F. Records whose files exist are skipped (re-running
  resumes); --overwrite recomputes them. Every file is written to a temporary name and renamed.

examples:
  tf-esm contacts facebook/esm2_t6_8M_UR50D proteins.fasta contacts/
  tf-esm contacts esm2_t33_650M_UR50D.pt proteins.fasta contacts/ --png --toks-per-batch 2048
"""

_FOLD_EPILOG = """\
output:
  OUTDIR/<id>.pdb  the structure (B-factors: per-atom pLDDT as the model outputs it, 0-1);
  OUTDIR/summary.tsv  columns id, length (residues), mean_plddt (0-100, averaged over the atoms present, as
  esm-fold reports it) and ptm, one row per record folded so far (in FASTA order). pTM is each record's own
  (the reference computes one pTM over a whole padded batch; here batching does not change the numbers).
  A record may hold several chains separated by ':' (folded as a complex with a poly-G linker, as ESMFold).
  Records whose PDB exists are skipped (re-running resumes); --overwrite refolds them.

examples:
  tf-esm fold proteins.fasta structures/
  tf-esm fold proteins.fasta structures/ --model ./esmfold_v1 --num-recycles 4 --chunk-size 64 \\
      --max-tokens-per-batch 512
"""

_CONVERT_EPILOG = """\
SRC is a fair-esm checkpoint (esm2_t6_8M_UR50D.pt, ...; its -contact-regression.pt is read from beside it) or an
HF model directory. DST receives config.json, tf_esm_model.h5 and vocab.txt; it is written to a temporary
directory and renamed, so a failed conversion leaves DST as it was.

examples:
  tf-esm convert esm2_t6_8M_UR50D.pt esm2_t6_8M_tf
  tf-esm convert ./esm1v_hf ./esm1v_tf --overwrite
"""

_EXPORT_EPILOG = """\
Writes a TensorFlow SavedModel for TF Serving with two signatures: serving_default (a string tensor of protein
sequences, tokenized in the graph) and token_ids (input_ids, attention_mask). Outputs: sequence_embedding,
residue_embeddings, residue_mask, plus logits/probabilities for task models. DIR is written to a temporary
directory and renamed. See tf_esm.export.

examples:
  tf-esm export facebook/esm2_t6_8M_UR50D serving/esm2/1
  tf-esm export ./my_classifier serving/classifier/1 --max-length 1024 --overwrite
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        if action.default in (None, False):  # flags and "no default": nothing worth showing
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
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


_positive_int = _at_least(int, 1, "a positive integer")
_non_negative_int = _at_least(int, 0, "a non-negative integer")
_non_negative_float = _at_least(float, 0, "a non-negative number of seconds", unparsable="a number of seconds")


def _version():
    from importlib import metadata

    try:
        return metadata.version("tf_esm")  # without importing tf_esm (and TensorFlow) for --version
    except metadata.PackageNotFoundError:
        return "unknown"


def _add_common(parser):
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bar and no summary line (warnings and errors still go to stderr)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on errors print the traceback, and let TensorFlow's own log messages through")


def build_parser():
    """The `tf-esm` argument parser (sub-commands embed, score, contacts, fold, convert, export)."""
    parser = _Parser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_common(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    def command(name, help_text, epilog):
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                                  formatter_class=_Formatter)
        _add_common(sub)
        return sub

    embed = command("embed", "Per-residue, mean-pooled and <cls> representations and contacts for a FASTA file.",
                    _EMBED_EPILOG)
    embed.add_argument("model", metavar="MODEL", help="model directory, fair-esm .pt file or hub id")
    embed.add_argument("fasta", metavar="FASTA", help="input FASTA file (records keyed by the header's first word; "
                                                      "gzip/bzip2/xz read as such; - reads standard input)")
    embed.add_argument("output", metavar="OUTPUT", help="an .h5/.hdf5 file, or a directory of .npz files")
    embed.add_argument("--repr-layers", type=int, nargs="+", default=[-1], metavar="LAYER",
                       help="layers to store: 0 is the embedding output, N the last of N layers, negative "
                            "counts from the end (-1 = last)")
    embed.add_argument("--include", nargs="+", choices=INCLUDE_CHOICES, default=["mean"], metavar="KIND",
                       help="what to store: mean (average over residues), per_tok (every residue), bos (the "
                            "<cls> token) and/or contacts (predicted contact map); choices: "
                            + ", ".join(INCLUDE_CHOICES))
    embed.add_argument("--toks-per-batch", type=_positive_int, default=4096, metavar="N",
                       help="token budget of one batch (rows x padded length); lower it if memory runs out")
    embed.add_argument("--truncation-seq-length", type=_positive_int, default=1022, metavar="N",
                       help="embed only the first N residues of longer sequences (a warning names each one)")
    embed.add_argument("--checkpoint-interval", type=_non_negative_float, default=300.0, metavar="SECONDS",
                       help="HDF5 output: replace OUTPUT with the records finished so far this often")
    embed.add_argument("--overwrite", action="store_true",
                       help="recompute every record instead of resuming (an existing HDF5 file is replaced at "
                            "the first checkpoint; in a directory each record's file is replaced)")

    score = command("score", "Zero-shot variant-effect scores (ESM-1v) for the mutants listed in a CSV file.",
                    _SCORE_EPILOG)
    score.add_argument("models", metavar="MODEL", nargs="+",
                       help="one or more masked-LM models (directory, fair-esm .pt or hub id); one output "
                            "column each")
    score.add_argument("--sequence", required=True, help="the wild-type protein sequence the mutants refer to")
    score.add_argument("--mutations", required=True, metavar="FILE.csv",
                       help="CSV file with a header and a column of mutants (A24G, or A24G:L30P for several)")
    score.add_argument("--mutation-col", default="mutant", metavar="NAME", help="the CSV column holding mutants")
    score.add_argument("--offset-idx", type=int, default=1, metavar="N",
                       help="the position number of the sequence's first residue in the mutant names")
    score.add_argument("--strategy", choices=("masked-marginals", "wt-marginals", "pseudo-ppl"),
                       default="masked-marginals", help="scoring strategy (see below)")
    score.add_argument("--output", metavar="FILE.csv",
                       help="where to write the scored CSV (written to a temporary file and renamed); "
                            "default: standard output")
    score.add_argument("--toks-per-batch", type=_positive_int, default=4096, metavar="N",
                       help="token budget of one batch of masked forward passes")

    contacts = command("contacts", "Contact maps (.npy, and optional PNG heat maps) for a FASTA file.",
                       _CONTACTS_EPILOG)
    contacts.add_argument("model", metavar="MODEL", help="model directory, fair-esm .pt file or hub id")
    contacts.add_argument("fasta", metavar="FASTA", help="input FASTA file (gzip/bzip2/xz read as such; - reads "
                                                         "standard input)")
    contacts.add_argument("outdir", metavar="OUTDIR", help="output directory (created if needed)")
    contacts.add_argument("--png", action="store_true", help="also write a heat-map plot per record "
                                                             "(needs matplotlib)")
    contacts.add_argument("--toks-per-batch", type=_positive_int, default=4096, metavar="N",
                          help="token budget of one batch")
    contacts.add_argument("--truncation-seq-length", type=_positive_int, default=1022, metavar="N",
                          help="use only the first N residues of longer sequences (a warning names each one)")
    contacts.add_argument("--overwrite", action="store_true", help="recompute records whose files exist")

    fold = command("fold", "Predict structures with ESMFold: one PDB per FASTA record and a pLDDT/pTM summary.",
                   _FOLD_EPILOG)
    fold.add_argument("fasta", metavar="FASTA", help="input FASTA file (':' separates the chains of a complex; "
                                                     "gzip/bzip2/xz read as such; - reads standard input)")
    fold.add_argument("outdir", metavar="OUTDIR", help="output directory (created if needed)")
    fold.add_argument("--model", default=DEFAULT_FOLD_MODEL, help="ESMFold model directory or hub id")
    fold.add_argument("--num-recycles", type=_non_negative_int, default=None, metavar="N",
                      help="trunk recycling iterations (default: the model's max_recycles, 4 for esmfold_v1)")
    fold.add_argument("--chunk-size", type=_positive_int, default=None, metavar="N",
                      help="evaluate the pair stack's axial attention in chunks of N rows: less memory for long "
                           "proteins, same result (try 128, 64, 32)")
    fold.add_argument("--max-tokens-per-batch", type=_positive_int, default=1024, metavar="N",
                      help="fold several short sequences together up to N positions (residues plus linkers) "
                           "per batch")
    fold.add_argument("--overwrite", action="store_true", help="refold records whose PDB exists")

    convert = command("convert", "Convert a fair-esm .pt checkpoint or an HF directory into a tf_esm directory.",
                      _CONVERT_EPILOG)
    convert.add_argument("src", metavar="SRC", help="fair-esm .pt file or HF model directory")
    convert.add_argument("dst", metavar="DST", help="output directory (must not exist or be empty)")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")

    export = command("export", "Export a model as a TensorFlow SavedModel for TF Serving.", _EXPORT_EPILOG)
    export.add_argument("model", metavar="MODEL", help="model directory, fair-esm .pt file or hub id")
    export.add_argument("dir", metavar="DIR", help="SavedModel directory, e.g. serving/esm2/1")
    export.add_argument("--max-length", default="auto", metavar="N|auto|none",
                        help="longest request in tokens; auto: the position table's limit for absolute "
                             "positions, none for rotary ones")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")
    return parser


# ----------------------------------------------------------------------------------------------- shared steps


class _Console:
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


class _LogHandler(logging.Handler):
    """tf_esm's library warnings as `tf-esm: warning: ...` lines."""

    def emit(self, record):
        print(f"{PROG}: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr, flush=True)


def _read_records(path):
    from tf_esm.fasta import read_fasta

    return read_fasta(path)


def _configure_threads():
    """Throughput threading for the batch-embedding commands (see `tf_esm.inference.configure_cpu_threads`)."""
    from tf_esm.inference import configure_cpu_threads

    configure_cpu_threads()


def _load_model(reference, model_class=None, embedding=False):
    """A model from a directory, a fair-esm .pt file or a hub id; the class named by config.json by default.
    `embedding`: only the encoder's outputs are used, so a base model is built without its pooler."""
    from tf_esm.weights import CheckpointError

    try:
        return _load_model_unchecked(os.fspath(reference), model_class, embedding)
    except CheckpointError:
        raise
    except ValueError as error:  # e.g. a configuration this model class cannot use
        raise CliError(f"cannot load MODEL {reference}: {error}") from None


def _load_model_unchecked(reference, model_class, embedding):
    from tf_esm.modeling import TFEsmForMaskedLM, TFEsmModel

    if model_class is None:
        if reference.endswith(".pt") and os.path.isfile(reference):
            model_class = TFEsmForMaskedLM  # fair-esm checkpoints are masked language models
        else:
            from tf_esm.configuration import EsmConfig
            from tf_esm.export import architecture_class

            model_class = architecture_class(EsmConfig.from_pretrained(reference))
    kwargs = {"add_pooling_layer": False} if embedding and model_class is TFEsmModel else {}
    return model_class.from_pretrained(reference, **kwargs)


def _offline_message(repo_id, command):
    """What to do when a hub id cannot be downloaded, in the command line's terms."""
    from tf_esm.hub import offline_reason

    directory = repo_id.split("/")[-1]
    where = f"--model ./{directory}" if command == "fold" else f"./{directory} as MODEL"
    return (f"{offline_reason(repo_id)} On a machine that is online run `hf download {repo_id} --local-dir "
            f"{directory}` (or copy the model directory from elsewhere), then pass {where}.")


def _load_tokenizer(reference):
    """The model's own vocabulary when it has a vocab.txt, else None (the standard ESM vocabulary)."""
    from tf_esm.hub import resolve_file
    from tf_esm.tokenization import VOCAB_FILE_NAME, EsmTokenizer

    if os.path.isfile(reference):
        return None
    if resolve_file(reference, VOCAB_FILE_NAME, required=False) is None:
        return None
    return EsmTokenizer.from_pretrained(reference)


def _model_name(reference):
    """`facebook/esm1v_t33_650M_UR90S_1` -> `esm1v_t33_650M_UR90S_1`; `/models/esm1v.pt` -> `esm1v`."""
    name = os.path.basename(os.path.normpath(reference))
    return name[:-3] if name.endswith(".pt") else name


def record_key(record_id):
    """A FASTA id as a file or HDF5 group name: `%` -> `%25`, `/` -> `%2F`, a leading `.` -> `%2E`."""
    key = record_id.replace("%", "%25").replace("/", "%2F")
    return "%2E" + key[1:] if key.startswith(".") else key


def record_id_from_key(key):
    """The inverse of `record_key`."""
    from urllib.parse import unquote

    return unquote(key)


def _fsync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_atomic(path, write):
    """Call `write(handle)` on a hidden temporary file beside `path`, then rename it to `path`."""
    directory, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(directory, f".{name}.partial")
    try:
        with open(partial, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise


def _remove_stale_partials(directory):
    """Temporary files that a killed run left behind (`.NAME.partial`)."""
    for name in os.listdir(directory):
        if name.startswith(".") and name.endswith(".partial"):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))


# Output directories this run created: a run that fails removes those still empty (see `main`).
_created_directories = []


def _make_output_directory(path, what):
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"{what} {path} exists and is not a directory.")
    if not os.path.isdir(path):
        os.makedirs(path)
        _created_directories.append(path)


def _remove_empty_created_directories():
    while _created_directories:
        with contextlib.suppress(OSError):  # not empty (a record was saved) or already gone: keep it
            os.rmdir(_created_directories.pop())


def _warn_truncated(console, records, limit):
    for record in records:
        if len(record.sequence) > limit:
            console.warning(f"record {record.id!r} has {len(record.sequence)} residues; using the first {limit} "
                            "(--truncation-seq-length).")


def _check_position_table(model, records, truncation):
    """Absolute-position models (ESM-1b, ESM-1v) cannot embed more residues than their position table holds."""
    from tf_esm.export import default_max_length

    limit = default_max_length(model.config)
    if limit is None:
        return
    residues = limit - 2  # <cls> and <eos> take two positions
    for record in records:
        if min(len(record.sequence), truncation) > residues:
            raise CliError(f"record {record.id!r} has {len(record.sequence)} residues, but this model's absolute "
                           f"position table holds at most {residues} (+ <cls>/<eos>); pass "
                           f"--truncation-seq-length {residues} (or less) to use the first {residues} residues.")


@contextlib.contextmanager
def _sigterm_as_interrupt():
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


def _test_delay():
    delay = float(os.environ.get(_TEST_DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)


# ---------------------------------------------------------------------------------------------------- embed


class _Hdf5Store:
    """Embeddings in one HDF5 file, built in a hidden copy that replaces OUTPUT at checkpoints (see --help)."""

    def __init__(self, path, settings, overwrite, checkpoint_interval):
        import h5py

        self.h5py = h5py
        self.path = os.path.abspath(path)
        directory, name = os.path.split(self.path)
        self.partial = os.path.join(directory, f".{name}.partial")
        self.checkpoint_interval = checkpoint_interval
        if os.path.isdir(self.path):
            raise CliError(f"OUTPUT {path} is a directory; an .h5/.hdf5 OUTPUT must be a file.")
        os.makedirs(directory, exist_ok=True)
        self.done = set()
        if os.path.exists(self.path) and not overwrite:
            self.done = self._existing_records(path, settings)
            shutil.copyfile(self.path, self.partial)
            self.file = h5py.File(self.partial, "a")
        else:
            self.file = h5py.File(self.partial, "w")
            self.file.attrs[SETTINGS_ATTRIBUTE] = json.dumps(settings, sort_keys=True)
        self.pending = 0
        self.saved = len(self.done)
        self.last_commit = time.monotonic()

    def _existing_records(self, path, settings):
        try:
            with self.h5py.File(self.path, "r") as existing:
                stored = existing.attrs.get(SETTINGS_ATTRIBUTE)
                ids = {group.attrs["id"] for group in existing.values() if "id" in group.attrs}
        except OSError:
            raise CliError(f"OUTPUT {path} exists and is not an HDF5 file; choose another OUTPUT or pass "
                           "--overwrite.") from None
        if stored is None:
            raise CliError(f"OUTPUT {path} exists but was not written by 'tf-esm embed'; choose another OUTPUT or "
                           "pass --overwrite.")
        _check_settings(path, json.loads(stored), settings)
        return ids

    def add(self, record_id, sequence_length, result):
        key = record_key(record_id)
        if key in self.file:  # --overwrite of a record carried over in the copy
            del self.file[key]
        group = self.file.create_group(key)
        try:
            length = int(result["length"])
            for kind, arrays in _result_arrays(result):
                dataset = group.create_dataset(kind if kind == "contacts" else f"{kind}/{arrays[0]}",
                                               data=arrays[1])
                dataset.attrs["length"] = length
                if kind != "contacts":
                    dataset.attrs["layer"] = arrays[0]
            group.attrs["length"] = length
            group.attrs["sequence_length"] = int(sequence_length)
            group.attrs["truncated"] = bool(result["truncated"])
            group.attrs["id"] = record_id  # written last: marks the record complete
        except BaseException:
            del self.file[key]
            raise
        self.pending += 1
        if time.monotonic() - self.last_commit >= self.checkpoint_interval:
            self.commit(reopen=True)

    def commit(self, reopen=False):
        """Atomically replace OUTPUT with everything written so far."""
        if self.file is None:
            return
        self.file.close()
        self.file = None
        _fsync(self.partial)
        os.replace(self.partial, self.path)
        self.saved += self.pending
        self.pending = 0
        self.last_commit = time.monotonic()
        if reopen:
            shutil.copyfile(self.path, self.partial)
            self.file = self.h5py.File(self.partial, "a")

    def discard(self):
        if self.file is not None:
            with contextlib.suppress(Exception):
                self.file.close()
            self.file = None
        with contextlib.suppress(OSError):
            os.remove(self.partial)


class _NpzStore:
    """Embeddings as one `<id>.npz` per record in a directory, each written to a temporary name and renamed."""

    def __init__(self, path, settings, overwrite):
        self.path = path
        _make_output_directory(path, "OUTPUT")
        settings_path = os.path.join(path, EMBED_SETTINGS_FILE)
        _remove_stale_partials(path)
        names = os.listdir(path)
        if os.path.exists(settings_path) and not overwrite:
            with open(settings_path, encoding="utf-8") as handle:
                try:
                    stored = json.load(handle)
                except ValueError:
                    raise CliError(f"{settings_path} is not valid JSON; pass --overwrite to start over.") from None
            _check_settings(path, stored, settings)
        elif names and not overwrite:
            raise CliError(f"OUTPUT directory {path} is not empty and was not written by 'tf-esm embed'; choose "
                           "another OUTPUT or pass --overwrite.")
        else:
            text = json.dumps(settings, indent=2, sort_keys=True) + "\n"
            _write_atomic(settings_path, lambda handle: handle.write(text.encode("utf-8")))
        self.done = set() if overwrite else {
            record_id_from_key(name[:-4]) for name in names if name.endswith(".npz") and not name.startswith(".")}
        self.saved = len(self.done)

    def add(self, record_id, sequence_length, result):
        import numpy as np

        arrays = {"id": np.asarray(record_id), "length": np.asarray(int(result["length"])),
                  "sequence_length": np.asarray(int(sequence_length)),
                  "truncated": np.asarray(bool(result["truncated"]))}
        for kind, (layer, array) in _result_arrays(result):
            arrays[kind if kind == "contacts" else f"{kind}_{layer}"] = array
        _write_atomic(os.path.join(self.path, record_key(record_id) + ".npz"),
                      lambda handle: np.savez(handle, **arrays))
        self.saved += 1

    def commit(self, reopen=False):
        pass

    def discard(self):
        pass


def _result_arrays(result):
    """(kind, (layer, array)) for every array of an `iter_embeddings` result; kinds named as --include."""
    import numpy as np

    for kind, field in (("mean", "mean_representations"), ("per_tok", "representations"),
                        ("bos", "bos_representations")):
        for layer, array in sorted(result.get(field, {}).items()):
            yield kind, (int(layer), np.asarray(array, dtype=np.float32))
    if "contacts" in result:
        yield "contacts", (None, np.asarray(result["contacts"], dtype=np.float32))


def _check_settings(path, stored, settings):
    different = [f"{key}: {stored.get(key)!r} then, {value!r} now" for key, value in settings.items()
                 if stored.get(key) != value]
    if different:
        raise CliError(f"OUTPUT {path} was written with other settings ({'; '.join(different)}); resume with the "
                       "same options, choose another OUTPUT, or pass --overwrite.")


def _model_identity(reference):
    return os.path.abspath(reference) if os.path.exists(reference) else reference


def run_embed(args, console):
    records = _read_records(args.fasta)
    hdf5 = args.output.lower().endswith(HDF5_SUFFIXES)
    if hdf5:
        _require_module("h5py", "HDF5 output")
    _configure_threads()
    model = _load_model(args.model, embedding=True)
    from tf_esm.inference import _resolve_layers, iter_embeddings

    try:
        layers = _resolve_layers(args.repr_layers, model.config.num_hidden_layers)
    except ValueError:
        n = model.config.num_hidden_layers
        raise CliError(f"--repr-layers {' '.join(map(str, args.repr_layers))}: this model has layers 0..{n} "
                       f"(or -{n + 1}..-1).") from None
    include = sorted(set(args.include))
    settings = {"model": _model_identity(args.model), "repr_layers": list(layers) if include != ["contacts"] else [],
                "include": include, "truncation_seq_length": args.truncation_seq_length,
                "num_layers": model.config.num_hidden_layers, "hidden_size": model.config.hidden_size}
    _check_position_table(model, records, args.truncation_seq_length)
    if hdf5:
        store = _Hdf5Store(args.output, settings, args.overwrite, args.checkpoint_interval)
    else:
        store = _NpzStore(args.output, settings, args.overwrite)
    todo = [record for record in records if record.id not in store.done]
    skipped = len(records) - len(todo)
    if not todo:
        store.discard()
        console.info(f"all {len(records)} records are already in {args.output}; nothing to do.")
        return 0
    _warn_truncated(console, todo, args.truncation_seq_length)
    residues = sum(min(len(record.sequence), args.truncation_seq_length) for record in todo)
    bar = console.progress(len(todo), "seq", total_work=residues)
    try:
        with _sigterm_as_interrupt():
            for index, result in iter_embeddings(model, [record.sequence for record in todo], repr_layers=layers,
                                                 include=include, toks_per_batch=args.toks_per_batch,
                                                 truncation_seq_length=args.truncation_seq_length):
                store.add(todo[index].id, len(todo[index].sequence), result)
                bar.update(1, work=result["length"])
                _test_delay()
            store.commit()
    except KeyboardInterrupt:
        bar.close()
        store.commit()
        raise CliError(f"interrupted; {store.saved} records are saved in {args.output}. Run the same command again "
                       "to finish.", code=EXIT_INTERRUPTED) from None
    except BaseException:
        bar.close()
        store.discard()
        raise
    bar.close()
    note = f" ({skipped} already there, skipped)" if skipped else ""
    console.info(f"embedded {len(todo)} records into {args.output}{note}.")
    return 0


# ---------------------------------------------------------------------------------------------------- score


def _read_mutations_csv(path, column):
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except OSError as error:
        raise CliError(f"--mutations {path}: cannot read ({error.strerror}).") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise CliError(f"--mutations {path}: not a readable CSV file ({error}).") from None
    if not rows:
        raise CliError(f"--mutations {path}: the file is empty (expected a header row).")
    header, body = rows[0], [row for row in rows[1:] if any(cell.strip() for cell in row)]
    if column not in header:
        raise CliError(f"--mutations {path}: no column {column!r} (columns: {', '.join(header)}); choose one with "
                       "--mutation-col.")
    if not body:
        raise CliError(f"--mutations {path}: no mutants below the header.")
    return header, body, header.index(column)


def run_score(args, console):
    from tf_esm.fasta import clean_sequence
    from tf_esm.scoring import MutationError, count_forward_passes, parse_mutant, score_mutants

    sequence = clean_sequence(args.sequence, name="--sequence")
    if args.output and os.path.exists(args.output) and os.path.samefile(args.output, args.mutations):
        raise CliError("--output must not be the --mutations file (the input is never replaced).")
    header, rows, column = _read_mutations_csv(args.mutations, args.mutation_col)
    mutants = []
    for number, row in enumerate(rows, start=2):
        text = row[column] if column < len(row) else ""
        try:
            mutants.append(parse_mutant(text, sequence, args.offset_idx))
        except MutationError as error:
            raise CliError(f"--mutations {args.mutations}, row {number}: {error}") from None
    names = [_model_name(reference) for reference in args.models]
    if len(set(names)) < len(names):
        names = list(args.models)  # two models share a name: use the references as given
    columns = {}
    for reference, name in zip(args.models, names):
        model = _load_model(reference)
        if not hasattr(model, "lm_head"):
            raise CliError(f"MODEL {reference}: {type(model).__name__} has no language-model head; scoring needs a "
                           "masked-LM checkpoint (e.g. facebook/esm1v_t33_650M_UR90S_1).")
        tokenizer = _load_tokenizer(reference)
        bar = console.progress(count_forward_passes(sequence, mutants, args.strategy), "fwd")
        try:
            columns[name] = score_mutants(model, sequence, mutants, strategy=args.strategy, tokenizer=tokenizer,
                                          toks_per_batch=args.toks_per_batch,
                                          progress_callback=lambda n: bar.update(n))
        except MutationError as error:
            raise CliError(f"MODEL {reference}: {error}") from None
        finally:
            bar.close()
    _write_scores(args.output, header, rows, columns)
    if args.output:
        console.info(f"scored {len(rows)} mutants with {len(columns)} model(s) ({args.strategy}) into {args.output}.")
    return 0


def _write_scores(path, header, rows, columns):
    import csv
    import io

    header = list(header)
    positions = {}
    for name in columns:
        if name not in header:
            header.append(name)
        positions[name] = header.index(name)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for number, row in enumerate(rows):
        row = list(row) + [""] * (len(header) - len(row))
        for name, scores in columns.items():
            row[positions[name]] = repr(float(scores[number]))
        writer.writerow(row)
    if path is None:
        sys.stdout.write(text.getvalue())
        sys.stdout.flush()
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        _write_atomic(path, lambda handle: handle.write(text.getvalue().encode("utf-8")))


# ------------------------------------------------------------------------------------------------- contacts


def _require_module(module, purpose, code=EXIT_FAILURE):
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        package = {"h5py": "h5py", "matplotlib": "matplotlib"}.get(module, module)
        raise CliError(f"{purpose} needs {module}, which is not installed: pip install {package}", code=code) from None


def _write_contact_png(path, record_id, contacts):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(contacts, cmap="Blues", vmin=0.0, vmax=1.0, origin="upper")
    figure.colorbar(image, ax=axes, label="contact probability")
    axes.set_title(record_id)
    axes.set_xlabel("residue")
    axes.set_ylabel("residue")
    figure.tight_layout()
    _write_atomic(path, lambda handle: figure.savefig(handle, format="png"))


def run_contacts(args, console):
    import numpy as np

    records = _read_records(args.fasta)
    if args.png:
        _require_module("matplotlib", "--png")
    _make_output_directory(args.outdir, "OUTDIR")
    _remove_stale_partials(args.outdir)

    def outputs(record):
        base = os.path.join(args.outdir, record_key(record.id))
        return base + ".npy", (base + ".png" if args.png else None)

    todo = [record for record in records
            if args.overwrite or not all(p is None or os.path.exists(p) for p in outputs(record))]
    skipped = len(records) - len(todo)
    if not todo:
        console.info(f"all {len(records)} records already have contact maps in {args.outdir}; nothing to do.")
        return 0
    _configure_threads()
    model = _load_model(args.model, embedding=True)
    _check_position_table(model, todo, args.truncation_seq_length)
    from tf_esm.inference import iter_embeddings

    _warn_truncated(console, todo, args.truncation_seq_length)
    bar = console.progress(len(todo), "seq",
                           total_work=sum(min(len(r.sequence), args.truncation_seq_length) for r in todo))
    try:
        with _sigterm_as_interrupt():
            for index, result in iter_embeddings(model, [record.sequence for record in todo], repr_layers=(),
                                                 include=("contacts",), toks_per_batch=args.toks_per_batch,
                                                 truncation_seq_length=args.truncation_seq_length):
                record = todo[index]
                npy_path, png_path = outputs(record)
                contacts = np.asarray(result["contacts"], dtype=np.float32)
                _write_atomic(npy_path, lambda handle: np.save(handle, contacts))
                if png_path:
                    _write_contact_png(png_path, record.id, contacts)
                bar.update(1, work=result["length"])
                _test_delay()
    except KeyboardInterrupt:
        raise CliError(f"interrupted; finished records are saved in {args.outdir}. Run the same command again to "
                       "finish.", code=EXIT_INTERRUPTED) from None
    finally:
        bar.close()
    note = f" ({skipped} already there, skipped)" if skipped else ""
    console.info(f"wrote contact maps of {len(todo)} records to {args.outdir}{note}.")
    return 0


# ----------------------------------------------------------------------------------------------------- fold


def _fold_records(path):
    """FASTA records whose chains (split at ':') each follow the sequence policy of tf_esm.fasta."""
    from tf_esm.fasta import clean_sequence, read_fasta

    records = []
    for record in read_fasta(path, validate=False):
        chains = "".join(record.sequence.split()).split(":")
        cleaned = [clean_sequence(chain, name=f"{path}, record {record.id!r}"
                                  + (f", chain {number}" if len(chains) > 1 else ""))
                   for number, chain in enumerate(chains, start=1)]
        records.append((record.id, ":".join(cleaned)))
    return records


def _fold_batches(lengths, max_tokens):
    """Indices grouped longest first, several per batch while their lengths sum to at most `max_tokens`
    (at least one per batch), as esm-fold batches."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current, tokens = [], [], 0
    for index in order:
        if current and tokens + lengths[index] > max_tokens:
            batches.append(current)
            current, tokens = [], 0
        current.append(index)
        tokens += lengths[index]
    if current:
        batches.append(current)
    return batches


def fold_summary(output, lengths):
    """(mean pLDDT, pTM) of each row of a `TFEsmForProteinFolding.infer` output whose rows hold `lengths` positions
    (linkers included).

    Mean pLDDT is on 0-100, averaged over the atoms present, as esm-fold reports it. The model's own `ptm` is one
    number for the whole padded batch (as in the reference); here each row's pTM comes from its own unpadded
    aligned-error logits, which is the value the model gives when that sequence is folded alone.
    """
    import numpy as np

    from tf_esm.folding.heads import compute_tm

    plddt = np.asarray(output["plddt"], dtype=np.float64)
    exists = np.asarray(output["atom37_atom_exists"], dtype=np.float64)
    mean_plddt = 100.0 * (plddt * exists).sum(axis=(1, 2)) / exists.sum(axis=(1, 2))
    ptm_logits = np.asarray(output["ptm_logits"])
    ptm = [float(np.asarray(compute_tm(ptm_logits[row:row + 1, :n, :n]))) for row, n in enumerate(lengths)]
    return [(float(m), p) for m, p in zip(mean_plddt, ptm)]


def _read_summary(path):
    rows = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        for line in lines[1:]:
            fields = line.split("\t")
            if len(fields) == 4:
                rows[fields[0]] = fields
    return rows


def run_fold(args, console):
    records = _fold_records(args.fasta)
    try:
        from tf_esm.folding import InvalidSequenceError, TFEsmForProteinFolding
        from tf_esm.folding.model import encode_sequence
    except ImportError as error:
        raise CliError(f"'fold' needs tf_esm.folding (ESMFold), which cannot be imported here: {error}",
                       code=EXIT_FAILURE) from None
    positions = {}  # encoded length (chains plus linkers) of each record
    for record_id, sequence in records:
        try:
            positions[record_id] = len(encode_sequence(sequence)[0])
        except InvalidSequenceError as error:
            raise CliError(f"{args.fasta}, record {record_id!r}: {error}") from None
    _make_output_directory(args.outdir, "OUTDIR")
    _remove_stale_partials(args.outdir)
    summary_path = os.path.join(args.outdir, SUMMARY_FILE)
    summary = {} if args.overwrite else _read_summary(summary_path)

    def pdb_path(record_id):
        return os.path.join(args.outdir, record_key(record_id) + ".pdb")

    todo = [r for r in records if args.overwrite or not os.path.exists(pdb_path(r[0]))]
    skipped = len(records) - len(todo)
    if not todo:
        console.info(f"all {len(records)} records already have structures in {args.outdir}; nothing to do.")
        return 0
    model = _load_model(args.model, TFEsmForProteinFolding)

    def write_summary():
        lines = ["id\tlength\tmean_plddt\tptm"]
        lines += ["\t".join(summary[record_id]) for record_id, _ in records if record_id in summary]
        _write_atomic(summary_path, lambda handle: handle.write(("\n".join(lines) + "\n").encode("utf-8")))

    bar = console.progress(len(todo), "seq", total_work=sum(len(s.replace(":", "")) for _, s in todo))
    try:
        with _sigterm_as_interrupt():
            lengths = [positions[record_id] for record_id, _ in todo]
            for batch in _fold_batches(lengths, args.max_tokens_per_batch):
                sequences = [todo[i][1] for i in batch]
                output = model.infer(sequences, num_recycles=args.num_recycles, chunk_size=args.chunk_size)
                pdbs = model.output_to_pdb(output)
                scores = fold_summary(output, [lengths[i] for i in batch])
                for i, pdb, (mean_plddt, ptm) in zip(batch, pdbs, scores, strict=True):
                    record_id, sequence = todo[i]
                    _write_atomic(pdb_path(record_id), lambda handle: handle.write(pdb.encode("utf-8")))
                    residues = len(sequence.replace(":", ""))
                    summary[record_id] = [record_id, str(residues), f"{mean_plddt:.2f}", f"{ptm:.4f}"]
                write_summary()
                bar.update(len(batch), work=sum(len(s.replace(":", "")) for s in sequences))
                _test_delay()
    except KeyboardInterrupt:
        write_summary()
        raise CliError(f"interrupted; finished structures are saved in {args.outdir}. Run the same command again "
                       "to finish.", code=EXIT_INTERRUPTED) from None
    finally:
        bar.close()
    note = f" ({skipped} already there, skipped)" if skipped else ""
    console.info(f"folded {len(todo)} records into {args.outdir}{note}; summary in {summary_path}.")
    return 0


# ---------------------------------------------------------------------------------------- convert and export


def run_convert(args, console):
    from tf_esm.fair_esm import convert_checkpoint

    try:
        convert_checkpoint(args.src, args.dst, overwrite=args.overwrite)
    except FileExistsError as error:
        raise CliError(str(error).replace("overwrite=True (--overwrite)", "--overwrite")) from None
    console.info(f"converted {args.src} into {args.dst}.")
    return 0


def run_export(args, console):
    try:
        from tf_esm.export import export_saved_model
    except ImportError as error:
        raise CliError(f"'export' needs tf_esm.export, which cannot be imported here: {error}",
                       code=EXIT_FAILURE) from None
    text = str(args.max_length).lower()
    if text in ("auto", "none"):
        max_length = None if text == "none" else "auto"
    else:
        try:
            max_length = _positive_int(text)
        except argparse.ArgumentTypeError:
            raise CliError(f"--max-length: expected a positive integer, 'auto' or 'none', got {args.max_length!r}.")
    model = args.model
    if model.endswith(".pt") and os.path.isfile(model):
        model = _load_model(model)
    try:
        path = export_saved_model(model, args.dir, max_length=max_length, overwrite=args.overwrite)
    except FileExistsError as error:
        raise CliError(str(error).replace("overwrite=True", "--overwrite")) from None
    console.info(f"exported {args.model} as a SavedModel to {path}.")
    return 0


_COMMANDS = {"embed": run_embed, "score": run_score, "contacts": run_contacts, "fold": run_fold,
             "convert": run_convert, "export": run_export}


# ----------------------------------------------------------------------------------------------------- main


def _input_errors():
    """Exception types that mean a wrong input (exit 2): files, sequences, mutants, models."""
    from tf_esm.fasta import FastaError
    from tf_esm.hub import ModelNotFoundError
    from tf_esm.scoring import MutationError
    from tf_esm.weights import CheckpointError

    return (FastaError, MutationError, ModelNotFoundError, CheckpointError, FileExistsError, FileNotFoundError)


def _one_line(text):
    return " ".join(str(text).split())


def _import_tensorflow_quietly():
    from tf_esm.startup import import_tensorflow_quietly

    try:
        import_tensorflow_quietly(for_command=True)
    except ImportError:
        pass  # reported, with its message, by the command that needs it


def main(argv=None):
    """Run `tf-esm` with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    handler = _LogHandler(logging.WARNING)
    library_logger = logging.getLogger("tf_esm")
    library_logger.addHandler(handler)
    propagate, library_logger.propagate = library_logger.propagate, False
    hub_logger = logging.getLogger("huggingface_hub")
    hub_level = hub_logger.level
    if not debug:
        hub_logger.setLevel(logging.ERROR)  # its retry messages; the failure is reported as one line
    _created_directories.clear()
    try:
        status = _dispatch(argv, debug)
    finally:
        library_logger.removeHandler(handler)
        library_logger.propagate = propagate
        hub_logger.setLevel(hub_level)
    if status != 0:
        _remove_empty_created_directories()
    _created_directories.clear()
    return status


def _dispatch(argv, debug):
    """Parse `argv` and run its command; every error becomes one line on stderr and an exit status."""
    args = None
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_request:  # --help / --version
            return int(exit_request.code or 0)
        console = _Console(getattr(args, "quiet", False))
        if not debug:
            _import_tensorflow_quietly()
        return _COMMANDS[args.command](args, console)
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
        if getattr(error, "offline_repo", None):  # a hub id while offline (tf_esm.hub.ModelNotFoundError)
            _print_error(_offline_message(error.offline_repo, getattr(args, "command", None)))
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


if __name__ == "__main__":
    sys.exit(main())
