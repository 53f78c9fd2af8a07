"""`tf-esm embed`: representations and contact maps of a FASTA file into HDF5, Parquet or .npz files."""

from __future__ import annotations

import os

from tf_esm.cli.common import (
    EXIT_FAILURE, CliError, add_fasta_argument, add_model_argument, add_token_budget_argument, check_contacts_supported,
    check_model_packages,
    check_position_table, configure_threads, interrupted, load_model, make_output_directory, non_negative_float,
    non_negative_int, positive_int, read_records, require_installed, require_module, sigterm_as_interrupt,
    skipped_note, warn_truncated)
from tf_esm.io.embedding_stores import (
    HDF5_SUFFIXES, INCLUDE_CHOICES, PARQUET_SUFFIX, NpzStore, check_resume, sequence_digest)

NAME = "embed"
HELP = "Per-residue, mean-pooled and <cls> representations and contacts for a FASTA file."
EPILOG = """\
output formats (chosen by OUTPUT's name, or --format):
  *.h5 / *.hdf5  one HDF5 file, columnar (N records, D = hidden size):
                   ids (N,) UTF-8 strings; lengths, sequence_lengths (N,) int32; truncated (N,) bool;
                   windows (N,) int32
                   input_indices (N,) int64 (FASTA position); sequence_sha256 (N,) strings
                   mean/<layer>, bos/<layer>  (N, D) float32
                   per_tok/<layer> (sum of lengths, D) float32 with per_tok_offsets (N+1,): record i is rows
                     per_tok_offsets[i]:per_tok_offsets[i+1]
                   contacts (sum of length**2,) float32 with contacts_offsets (N+1,): record i is that slice
                     reshaped (length, length)
                 root attributes tf_esm_embed (the run's settings, JSON) and tf_esm_layout.
  *.parquet      one Parquet file; a directory with --format parquet: shards part-00000.parquet, ...
                 columns id, length, sequence_length, truncated, windows, input_index, sequence_sha256,
                 mean_<layer> and bos_<layer>
                 (fixed_size_list<float32>[D]), per_tok_<layer> (list of them), contacts (list<float32>,
                 length*length row-major); the settings are in the schema metadata key tf_esm_embed.
  anything else  a directory with one <id>.npz per record holding arrays mean_<layer>, per_tok_<layer>,
                 bos_<layer>, contacts, id, length, sequence_length, truncated, windows, input_index and
                 sequence_sha256, plus tf_esm_embed.json with the settings.
  <layer> is the non-negative layer number (with 6 layers, --repr-layers -1 is stored as 6; 0 is the
  embedding output). Representations are float32 and exclude <cls>/<eos>; bos is the <cls> position.
  Records are stored as computed (longest first) with their FASTA position; tf_esm.io.read_embeddings returns
  them in FASTA order (sort by input_index / input_indices when reading the files otherwise).

long proteins (--long):
  The context is the longest input the model is meant to take: 1022 residues (+ <cls>/<eos>) for ESM-2 and
  ESM-1b/1v (an absolute position table's size, else config max_position_embeddings - 2 tokens).
  window    (default) a longer record is embedded in overlapping windows of --window residues (default: the
            context) spread evenly with at least --window-overlap residues shared (default: a quarter of the
            window); each window is a forward pass with its own <cls>/<eos>. Each residue's vector comes from
            the window where it sits furthest from a cut end (so it is one real forward pass's output, with at
            least half the overlap of context on each side); mean is over all residues; bos is the first
            window's <cls>. windows = their number; truncated = false. Contacts are not put together from
            windows (an error: use --long truncate). Records within the context are embedded as before.
  truncate  the first --truncation-seq-length residues (fair-esm's esm-extract); truncated = true, windows = 1.
            Given alone, --truncation-seq-length N selects it.
  error     stop with an error naming the first record longer than the context.

resuming and crash safety:
  Records already in OUTPUT are skipped, so re-running the same command after an interruption finishes the
  job. Other options or another model must match the first run's, and every stored record must be in FASTA
  at the same position with the same sequence (records may be appended to FASTA), else it is an error that
  names them, never a stale vector; --overwrite starts over. OUTPUT is never
  left half-written. HDF5: new records go to segment files in a hidden journal (.NAME.journal/ next to it),
  each closed durably every --checkpoint-interval seconds; at the end (and on Ctrl-C / SIGTERM) OUTPUT's old
  records and the journal are written to a new file that replaces OUTPUT by an atomic rename. A killed run
  leaves OUTPUT as it was plus the journal, which the next run counts as done and merges. Parquet: a shard is
  written (temporary file, rename) every --checkpoint-interval seconds or 64 MiB; a .parquet file is rebuilt
  from itself and its shards (.NAME.parts/) at the end. Each .npz is written to a temporary file and renamed.
  An .h5 written by an older tf-esm (one group per record) cannot be resumed; read_embeddings reads it.
  Do not run two commands on the same OUTPUT at once.

many files, many workers (Apache Beam; in the tf_esm checkout: pip install -e ".[beam]"):
  With --runner, FASTA is a file pattern (quote it: 'shards/*.fasta'; gs:// and other Beam file systems work),
  OUTPUT a directory of Parquet shards part-NNNNN.parquet (columns id, length, sequence_length, truncated,
  mean_<layer>, bos_<layer>, per_tok_<layer>, contacts), and everything after `--` goes to Beam's
  PipelineOptions. Each file is read whole (records are never split), batches follow --max-tokens-per-batch, each
  worker process loads the model once. A Beam run does not resume: OUTPUT must hold no shards (or --overwrite).
  tf-esm embed esm2_dir 'shards/*.fasta' out/ --runner DirectRunner -- --direct_num_workers=2 \
      --direct_running_mode=multi_processing

examples:
  tf-esm embed facebook/esm2_t6_8M_UR50D proteins.fasta embeddings.h5 --repr-layers -1 --include mean per_tok
  tf-esm embed esm2_t33_650M_UR50D.pt proteins.fasta embeddings/ --repr-layers 0 32 33 --include mean bos
  tf-esm embed facebook/esm2_t6_8M_UR50D proteins.fasta shards/ --format parquet
  tf-esm embed facebook/esm2_t6_8M_UR50D proteins.fasta contacts.h5 --include contacts --max-tokens-per-batch 2048

  from tf_esm.io import read_embeddings; ids, means = read_embeddings("embeddings.h5")   # (N, D), last layer
"""


def add_arguments(parser):
    add_model_argument(parser)
    add_fasta_argument(parser, "input FASTA file (records keyed by the header's first word; gzip/bzip2/xz read as "
                               "such; - reads standard input)")
    parser.add_argument("output", metavar="OUTPUT",
                        help="an .h5/.hdf5 file, a .parquet file, or a directory (of .npz files, or of Parquet "
                             "shards with --format parquet)")
    parser.add_argument("--format", choices=("auto", "hdf5", "parquet", "npz"), default="auto",
                        help="output format; auto (default) goes by OUTPUT's name: .h5/.hdf5, .parquet, else npz")
    parser.add_argument("--repr-layers", type=int, nargs="+", default=[-1], metavar="LAYER",
                        help="layers to store: 0 is the embedding output, N the last of N layers, negative "
                             "counts from the end (-1 = last)")
    parser.add_argument("--include", nargs="+", choices=INCLUDE_CHOICES, default=["mean"], metavar="KIND",
                        help="what to store: mean (average over residues), per_tok (every residue), bos (the "
                             "<cls> token) and/or contacts (predicted contact map); choices: "
                             + ", ".join(INCLUDE_CHOICES))
    add_token_budget_argument(parser, "token budget of one batch (rows x padded length); lower it if memory runs "
                                      "out", old_spelling="--toks-per-batch")
    parser.add_argument("--long", choices=LONG_POLICIES, default=None,
                        help="a record longer than the model's context (1022 residues for ESM-2 and ESM-1b/1v): "
                             "window (the default) embeds it in overlapping windows; truncate keeps the first "
                             "--truncation-seq-length residues (the default when that option is given); error "
                             "stops naming it (see below)")
    parser.add_argument("--truncation-seq-length", type=positive_int, default=None, metavar="N",
                        help="with --long truncate: embed only the first N residues of longer records (a warning "
                             "names each one); default: the model's context")
    parser.add_argument("--window", type=positive_int, default=None, metavar="N",
                        help="with --long window: residues per window; default: the model's context")
    parser.add_argument("--window-overlap", type=non_negative_int, default=None, metavar="N",
                        help="with --long window: the least number of residues neighbouring windows share; "
                             "default: a quarter of the window")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="bfloat16: weights and matmuls in bfloat16, layer norms, softmax and pooling in "
                             "float32; faster on a CPU with bfloat16 instructions (avx512_bf16, amx_bf16; slower "
                             "without them), at a small cost in accuracy (README, benchmarks/RESULTS.md). Results "
                             "are stored as float32 either way")
    parser.add_argument("--checkpoint-interval", type=non_negative_float, default=300.0, metavar="SECONDS",
                        help="HDF5 and Parquet output: make the records finished so far durable this often")
    parser.add_argument("--runner", choices=BEAM_RUNNERS, metavar="RUNNER",
                        help="run as an Apache Beam pipeline on RUNNER (" + ", ".join(BEAM_RUNNERS) + "): FASTA "
                             "is a file pattern, OUTPUT a directory of Parquet shards; Beam options go after --")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute every record instead of resuming (an existing HDF5 or Parquet file is "
                             "replaced at the end; in a directory each record's file or shard is replaced)")


PRECISIONS = ("float32", "bfloat16")  # tf_esm.modeling.precision.PRECISIONS, without importing Keras for --help
LONG_POLICIES = ("window", "truncate", "error")  # tf_esm.pipelines.windows.LONG_POLICIES, likewise
BEAM_RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner")


def check_arguments(args, console):
    """Before TensorFlow starts: the optional packages this run needs."""
    check_model_packages(args.model)
    if args.runner:
        require_installed("apache_beam", "--runner")
        require_installed("pyarrow", "--runner (Parquet shards)")
    elif _output_format(args) == "parquet":
        require_installed("pyarrow", "Parquet output")


def _model_identity(reference):
    return os.path.abspath(reference) if os.path.exists(reference) else reference


# Configuration keys of the task heads: they do not change the encoder's vectors.
_HEAD_KEYS = ("architectures", "id2label", "label2id", "num_labels", "problem_type")


def _model_fingerprint(model):
    """sha256 of the model's configuration and of its token embeddings and final layer norm: a model directory
    saved again after fine-tuning gives other vectors under the same path, and a resumed run must not mix them."""
    import hashlib
    import json

    import numpy as np

    from tf_esm.backend import to_numpy

    config = {key: value for key, value in model.config.to_dict().items() if key not in _HEAD_KEYS}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8"))
    for weight in model.weights:
        if "word_embeddings" in weight.path or "emb_layer_norm_after" in weight.path:
            digest.update(weight.path.split("/", 1)[-1].encode("utf-8"))
            digest.update(np.asarray(to_numpy(weight.value), dtype=np.float32).tobytes())
    return digest.hexdigest()


def _output_format(args):
    if args.format != "auto":
        return args.format
    name = args.output.lower()
    return "hdf5" if name.endswith(HDF5_SUFFIXES) else "parquet" if name.endswith(PARQUET_SUFFIX) else "npz"


def _open_store(args, output_format, settings, include, layers, dim):
    if output_format == "hdf5":
        from tf_esm.io.hdf5_store import Hdf5Store

        return Hdf5Store(args.output, settings, args.overwrite, args.checkpoint_interval, include, layers, dim)
    if output_format == "parquet":
        from tf_esm.io.parquet_store import ParquetStore

        return ParquetStore(args.output, settings, args.overwrite, args.checkpoint_interval, include, layers, dim)
    make_output_directory(args.output, "OUTPUT")
    return NpzStore(args.output, settings, args.overwrite)


def run(args, console):
    pipeline_args = getattr(args, "pipeline_args", None) or []
    if args.runner:
        return _run_beam(args, pipeline_args, console)
    if pipeline_args:
        raise CliError(f"options after -- ({' '.join(pipeline_args)}) are Apache Beam pipeline options: pass "
                       "--runner too.")
    records = read_records(args.fasta)
    output_format = _output_format(args)
    if output_format == "hdf5":
        require_module("h5py", "HDF5 output")
    configure_threads()
    model = load_model(args.model, embedding=True, precision=args.precision)
    if "contacts" in args.include:
        check_contacts_supported(model, "--include contacts")
    from tf_esm.pipelines.inference import _resolve_layers, iter_embeddings

    try:
        layers = _resolve_layers(args.repr_layers, model.config.num_hidden_layers)
    except ValueError:
        n = model.config.num_hidden_layers
        raise CliError(f"--repr-layers {' '.join(map(str, args.repr_layers))}: this model has layers 0..{n} "
                       f"(or -{n + 1}..-1).") from None
    include = sorted(set(args.include))
    long, truncation, window, overlap = _long_policy(args, model, records, include)
    settings = {"model": _model_identity(args.model), "repr_layers": list(layers) if include != ["contacts"] else [],
                "include": include, "truncation_seq_length": truncation, "long": long, "window": window,
                "window_overlap": overlap, "num_layers": model.config.num_hidden_layers,
                "hidden_size": model.config.hidden_size, "precision": args.precision,
                "model_sha256": _model_fingerprint(model)}
    store = _open_store(args, output_format, settings, include, settings["repr_layers"],
                        model.config.hidden_size)
    try:
        check_resume(args.output, store.done, records)
    except BaseException:
        store.discard()
        raise
    positions = {record.id: index for index, record in enumerate(records)}
    todo = [record for record in records if record.id not in store.done]
    skipped = len(records) - len(todo)
    if not todo:
        store.discard()
        console.info(f"all {len(records)} records are already in {args.output}; nothing to do.")
        return 0
    if long == "truncate":
        warn_truncated(console, todo, truncation)
    residues = sum(min(len(record.sequence), truncation or len(record.sequence)) for record in todo)
    bar = console.progress(len(todo), "seq", total_work=residues)
    try:
        with sigterm_as_interrupt():
            for index, result in iter_embeddings(model, [record.sequence for record in todo], repr_layers=layers,
                                                 include=include, max_tokens_per_batch=args.max_tokens_per_batch,
                                                 truncation_seq_length=truncation, long=long, window=window,
                                                 overlap=overlap):
                record = todo[index]
                store.add(record.id, len(record.sequence), result, input_index=positions[record.id],
                          sequence_sha256=sequence_digest(record.sequence))
                bar.update(1, work=result["length"])
            store.commit()
    except KeyboardInterrupt:
        bar.close()
        store.commit()
        raise interrupted(f"{store.saved} records", args.output) from None
    except BaseException:
        bar.close()
        store.discard()
        raise
    bar.close()
    console.info(f"embedded {len(todo)} records into {args.output}{skipped_note(skipped)}.")
    return 0


def _long_policy(args, model, records, include):
    """(long, truncation_seq_length, window, overlap) of this run, resolved against the model's context, after
    checking the records against the policy (an error names the first record that does not fit)."""
    from tf_esm.pipelines.windows import context_residues, default_overlap

    context = context_residues(model.config)
    long = args.long or ("truncate" if args.truncation_seq_length is not None else "window")
    if long == "truncate":
        truncation = args.truncation_seq_length or context or 1022
        check_position_table(model, records, truncation)
        return long, truncation, None, None
    if long == "error":
        for record in records:
            if context is not None and len(record.sequence) > context:
                raise CliError(_too_long(model, record, context))
        return long, None, None, None
    window = args.window or context
    if window is None:
        return long, None, None, None
    if model.config.default_max_length() is not None and window > context:
        raise CliError(f"--window {window}: this model's absolute position table holds at most {context} residues "
                       "(+ <cls>/<eos>).")
    overlap = default_overlap(window) if args.window_overlap is None else args.window_overlap
    if overlap >= window:
        raise CliError(f"--window-overlap {overlap} must be less than the window ({window} residues).")
    if "contacts" in include:
        for record in records:
            if len(record.sequence) > window:
                raise CliError(f"record {record.id!r} has {len(record.sequence)} residues, more than the window of "
                               f"{window}, and contact maps are not put together from windows; pass --long truncate "
                               "(or leave contacts out).")
    return long, None, window, overlap


def _too_long(model, record, context):
    if model.config.default_max_length() is not None:
        return (f"record {record.id!r} has {len(record.sequence)} residues, but this model's absolute position table "
                f"holds at most {context} (+ <cls>/<eos>); pass --long window to embed it in overlapping windows, or "
                f"--truncation-seq-length {context} (or less) to use the first {context} residues.")
    return (f"record {record.id!r} has {len(record.sequence)} residues, more than this model's context of {context} "
            "(+ <cls>/<eos>); pass --long window to embed it in overlapping windows, or --long truncate to use the "
            f"first {context} residues.")


def _run_beam(args, pipeline_args, console):
    """`--runner`: the Beam pipeline of tf_esm/pipelines/beam.py."""
    if args.precision != "float32":
        raise CliError(f"--precision {args.precision} is not supported with --runner yet (Beam workers load the "
                       "model in float32); run without --runner.")
    if args.output.lower().endswith(HDF5_SUFFIXES):
        raise CliError(f"OUTPUT {args.output}: with --runner, OUTPUT is a directory of Parquet shards, not HDF5.")
    try:
        from tf_esm.pipelines import beam
    except ImportError as error:
        raise CliError(f"--runner needs Apache Beam: {error}", code=EXIT_FAILURE) from None
    if any(arg == "--runner" or arg.startswith("--runner=") for arg in pipeline_args):
        raise CliError("pass the runner once, as --runner before --, not among the Beam options after it.")
    if args.long not in (None, "truncate") or args.window or args.window_overlap is not None:
        raise CliError("--long window and --long error are not available with --runner yet: Beam workers truncate "
                       "(--long truncate, the first --truncation-seq-length residues, default 1022).")
    args.truncation_seq_length = args.truncation_seq_length or 1022
    configure_threads()
    include = sorted(set(args.include))
    config = beam.model_config(args.model)
    from tf_esm.pipelines.inference import _resolve_layers

    try:
        layers = _resolve_layers(args.repr_layers, config.num_hidden_layers)
    except ValueError:
        n = config.num_hidden_layers
        raise CliError(f"--repr-layers {' '.join(map(str, args.repr_layers))}: this model has layers 0..{n} "
                       f"(or -{n + 1}..-1).") from None
    settings = {"model": _model_identity(args.model), "repr_layers": list(layers) if include != ["contacts"] else [],
                "include": include, "truncation_seq_length": args.truncation_seq_length,
                "num_layers": config.num_hidden_layers, "hidden_size": config.hidden_size}
    import logging

    beam_logger = logging.getLogger("apache_beam")
    level = beam_logger.level
    if not getattr(args, "debug", False) and not any(arg.startswith("--default_sdk_harness_log_level")
                                                     for arg in pipeline_args):
        # Beam's workers log every bundle at INFO; keep their warnings and errors.
        beam_logger.setLevel(logging.WARNING)
        pipeline_args = ["--default_sdk_harness_log_level=WARNING", *pipeline_args]
    console.info(f"running the Beam pipeline on {args.runner} ...")
    try:
        summary = beam.embed_files(args.model, [args.fasta], args.output, repr_layers=layers, include=include,
                                   max_tokens_per_batch=args.max_tokens_per_batch,
                                   truncation_seq_length=args.truncation_seq_length,
                                   pipeline_args=["--runner", args.runner, *pipeline_args],
                                   overwrite=args.overwrite, settings=settings)
    finally:
        beam_logger.setLevel(level)
    records = "?" if summary["records"] is None else summary["records"]
    console.info(f"embedded {records} records from {summary['files']} files into {len(summary['shards'])} Parquet "
                 f"shards in {args.output}.")
    return 0
