"""`tf-esm fold`: ESMFold structures (one PDB per FASTA record) and a pLDDT/pTM summary table."""

from __future__ import annotations

import argparse
import os
import time

from tf_esm.storage.atomic import remove_stale_partials, write_atomic
from tf_esm.cli.common import (
    EXIT_FAILURE, CliError, add_fasta_argument, add_model_argument, add_token_budget_argument, check_model_packages,
    interrupted, load_model, make_output_directory, non_negative_int, positive_int, sigterm_as_interrupt,
    skipped_note)
from tf_esm.io.embedding_stores import record_key
from tf_esm.progress import format_duration

NAME = "fold"
HELP = "Predict structures with ESMFold: one PDB per FASTA record and a pLDDT/pTM summary."
DEFAULT_FOLD_MODEL = "facebook/esmfold_v1"
USAGE = "tf-esm fold [options] MODEL FASTA OUTDIR"
EXAMPLE = f"tf-esm fold {DEFAULT_FOLD_MODEL} proteins.fasta structures/"
SUMMARY_FILE = "summary.tsv"
EPILOG = """\
output:
  OUTDIR/<id>.pdb  the structure (B-factors: per-atom pLDDT as the model outputs it, 0-1);
  OUTDIR/summary.tsv  columns id, length (residues), mean_plddt (0-100, averaged over the atoms present, as
  esm-fold reports it), ptm and seconds, one row per record folded so far (in FASTA order). pTM is each
  record's own (the reference computes one pTM over a whole padded batch; here batching does not change the
  numbers). seconds: the wall time of the record's fold (of its batch, shared among its records by length,
  with --max-tokens-per-batch); with --compiled, the first fold at a new length bucket includes compiling for it.
  Records are folded longest first, so each length bucket is compiled once and reused; the progress bar shows
  residues/s and the ETA, and the last line the time per protein.
  A record may hold several chains separated by ':' (folded as a complex with a poly-G linker, as ESMFold).
  Records whose PDB exists are skipped (re-running resumes; a PDB whose residues are not the record's sequence is
  an error); --overwrite refolds them.

  MODEL comes first, as in the other commands; the older order `tf-esm fold FASTA OUTDIR [--model MODEL]`
  still works, with a warning.

examples:
  tf-esm fold facebook/esmfold_v1 proteins.fasta structures/
  tf-esm fold ./esmfold_v1 proteins.fasta structures/ --num-recycles 0 --chunk-size 64 --max-tokens-per-batch 512
  tf-esm fold ./esmfold_v1 proteins.fasta structures/ --stem-precision bfloat16   # the stem in half the memory
"""


def add_arguments(parser):
    parser.usage = USAGE.replace("tf-esm fold", "%(prog)s")
    add_model_argument(parser, f"ESMFold model directory or hub id ({DEFAULT_FOLD_MODEL})")
    add_fasta_argument(parser, "input FASTA file (':' separates the chains of a complex; gzip/bzip2/xz read as "
                               "such; - reads standard input)")
    # Optional only so that the old order (FASTA OUTDIR --model M) parses: `check_arguments` sorts it out.
    parser.add_argument("outdir", metavar="OUTDIR", nargs="?", help="output directory (created if needed)")
    parser.add_argument("--model", dest="model_option", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--num-recycles", type=non_negative_int, default=None, metavar="N",
                        help="trunk passes after the first, as transformers' and fair-esm's num_recycles (default: "
                             "the model's max_recycles passes in all, 4 for esmfold_v1, i.e. 3 recycles)")
    parser.add_argument("--chunk-size", type=positive_int, default=None, metavar="N",
                        help="evaluate the pair stack's axial attention in chunks of N rows: less memory for long "
                             "proteins, same result (try 128, 64, 32)")
    add_token_budget_argument(parser, "fold several short sequences together up to N positions (residues plus "
                                      "linkers) per batch (default: one protein per call, so that a protein's "
                                      "structure never depends on the other records in the file; batches pad to "
                                      "their longest member, which costs more than it saves on a CPU; on a GPU "
                                      "try 1024)", default=None)
    parser.add_argument("--stem-precision", choices=STEM_PRECISIONS, default=None,
                        help="precision of the ESM-2 stem: float16 or bfloat16 store its weights in half "
                             "precision (half the stem's memory, as HF's fp16_esm stem) and compute in it, with "
                             "layer norms and softmax in float32. float16 is what HF computes with; bfloat16 "
                             "matmuls run on a CPU's bfloat16 units (avx512_bf16, amx_bf16; emulated and slower "
                             "without them, with a warning). Default: the precision a converted model's stem was "
                             "stored in (tf-esm convert --stem-precision), else float32 on a CPU; on a GPU "
                             "float16 when the checkpoint sets fp16_esm (esmfold_v1 does)")
    parser.add_argument("--compiled", action="store_true",
                        help="fold through one compiled program per length bucket: faster per protein when many "
                             "proteins share a bucket, after one compile per bucket (default: the backend's own "
                             "path, eager under TensorFlow, compiled under JAX; the two agree to float32 rounding)")
    parser.add_argument("--overwrite", action="store_true", help="refold records whose PDB exists")


# tf_esm.folding.model.STEM_DTYPES without mixed_float16, named here so that --help imports no Keras.
STEM_PRECISIONS = ("float32", "float16", "bfloat16")


_FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas", ".fna", ".seq", ".txt")
_MODEL_SUFFIXES = (".pt", ".h5", ".safetensors", ".bin", ".json")


def _looks_like_fasta(word):
    """Whether a first positional argument is a FASTA file (the old order) rather than a MODEL."""
    name = word.lower()
    for compressed in (".gz", ".bz2", ".xz"):
        name = name.removesuffix(compressed)
    if word == "-" or name.endswith(_FASTA_SUFFIXES):
        return True
    return os.path.isfile(word) and not name.endswith(_MODEL_SUFFIXES)


def check_arguments(args, console):
    """Called right after parsing: MODEL FASTA OUTDIR, or the old order FASTA OUTDIR [--model MODEL] (read as such,
    with a warning); anything else is an error that shows the usage."""
    if args.outdir is None:
        first, second = args.model, args.fasta
        if not _looks_like_fasta(first):
            raise CliError(f"missing OUTDIR: usage: {USAGE} (e.g. {EXAMPLE})")
        model = args.model_option or DEFAULT_FOLD_MODEL
        console.warning(f"`tf-esm fold FASTA OUTDIR [--model MODEL]` is the old order; MODEL now comes first, as in "
                        f"the other commands: tf-esm fold {model} {first} {second}")
        args.model, args.fasta, args.outdir = model, first, second
    elif args.model_option is not None:
        raise CliError(f"MODEL given twice ({args.model} and --model {args.model_option}): usage: {USAGE}")
    check_model_packages(args.model)


def _fold_records(path):
    """FASTA records whose chains (split at ':') each follow the sequence policy of tf_esm.io.fasta."""
    from tf_esm.io.fasta import clean_sequence, read_fasta

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
    (at least one per batch), as esm-fold batches; one per batch when `max_tokens` is None."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if max_tokens is None:
        return [[index] for index in order]
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


def _pdb_residues(path):
    """The one-letter residues of a PDB file's CA atoms, in file order (chains joined; `X` for UNK)."""
    from tf_esm.folding.residue_constants import restype_3to1

    with open(path, encoding="utf-8") as handle:
        return "".join(restype_3to1.get(line[17:20], "X") for line in handle
                       if line.startswith("ATOM") and line[12:16].strip() == "CA")


def _check_folded(outdir, folded):
    """Refuse to resume into OUTDIR when a structure there was folded from another sequence than the FASTA's
    (`folded`: (id, sequence, pdb path)): skipping it would keep a stale structure."""
    from tf_esm.folding.residue_constants import restype_1to3

    stale = [record_id for record_id, sequence, path in folded
             if _pdb_residues(path) != "".join(c if c in restype_1to3 else "X" for c in sequence.replace(":", ""))]
    if stale:
        shown = ", ".join(repr(record_id) for record_id in stale[:3]) + (
            f" and {len(stale) - 3} more" if len(stale) > 3 else "")
        raise CliError(f"OUTDIR {outdir}: the structure of {len(stale)} record(s) was folded from another sequence "
                       f"than this FASTA's ({shown}); choose another OUTDIR or pass --overwrite to refold.")


def _read_summary(path):
    rows = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        for line in lines[1:]:
            fields = line.split("\t")
            if len(fields) in (4, 5):  # earlier versions wrote no seconds column
                rows[fields[0]] = fields
    return rows


def run(args, console):
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
    make_output_directory(args.outdir, "OUTDIR")
    remove_stale_partials(args.outdir)
    summary_path = os.path.join(args.outdir, SUMMARY_FILE)
    summary = {} if args.overwrite else _read_summary(summary_path)

    def pdb_path(record_id):
        return os.path.join(args.outdir, record_key(record_id) + ".pdb")

    todo = [r for r in records if args.overwrite or not os.path.exists(pdb_path(r[0]))]
    if not args.overwrite:
        _check_folded(args.outdir, [(record_id, sequence, pdb_path(record_id)) for record_id, sequence in records
                                    if os.path.exists(pdb_path(record_id))])
    skipped = len(records) - len(todo)
    if not todo:
        console.info(f"all {len(records)} records already have structures in {args.outdir}; nothing to do.")
        return 0
    model = load_model(args.model, TFEsmForProteinFolding, stem_precision=args.stem_precision)
    model.compiled_inference = True if args.compiled else None  # None: the backend's default path
    from tf_esm.io.weights import H5_WEIGHTS_NAME

    half = args.stem_precision in ("float16", "bfloat16")
    if half and os.path.isdir(args.model) and not os.path.isfile(os.path.join(args.model, H5_WEIGHTS_NAME)):
        # The weights cache keeps the checkpoint's float32: a half stem is cast from it on every load.
        console.info(f"tip: run `tf-esm convert {args.model} DIR --stem-precision {args.stem_precision}` once and "
                     "fold with DIR: its stem is stored in that precision and mapped without a cast.")
    def write_summary():
        lines = ["id\tlength\tmean_plddt\tptm\tseconds"]
        lines += ["\t".join(summary[record_id]) for record_id, _ in records if record_id in summary]
        write_atomic(summary_path, lambda handle: handle.write(("\n".join(lines) + "\n").encode("utf-8")))

    folding_seconds = 0.0
    bar = console.progress(len(todo), "seq", total_work=sum(len(s.replace(":", "")) for _, s in todo))
    try:
        with sigterm_as_interrupt():
            lengths = [positions[record_id] for record_id, _ in todo]
            for batch in _fold_batches(lengths, args.max_tokens_per_batch):
                sequences = [todo[i][1] for i in batch]
                started = time.perf_counter()
                output = model.infer(sequences, num_recycles=args.num_recycles, chunk_size=args.chunk_size)
                pdbs = model.output_to_pdb(output)
                scores = fold_summary(output, [lengths[i] for i in batch])
                seconds = time.perf_counter() - started
                folding_seconds += seconds
                batch_positions = sum(lengths[i] for i in batch)
                for i, pdb, (mean_plddt, ptm) in zip(batch, pdbs, scores, strict=True):
                    record_id, sequence = todo[i]
                    write_atomic(pdb_path(record_id), lambda handle: handle.write(pdb.encode("utf-8")))
                    residues = len(sequence.replace(":", ""))
                    share = seconds * lengths[i] / batch_positions
                    summary[record_id] = [record_id, str(residues), f"{mean_plddt:.2f}", f"{ptm:.4f}",
                                          f"{share:.3f}"]
                write_summary()
                bar.update(len(batch), work=sum(len(s.replace(":", "")) for s in sequences))
    except KeyboardInterrupt:
        write_summary()
        raise interrupted("finished structures", args.outdir) from None
    finally:
        bar.close()
    console.info(f"folded {len(todo)} records into {args.outdir} in {format_duration(folding_seconds)} "
                 f"({folding_seconds / len(todo):.2f} s per protein){skipped_note(skipped)}; summary in "
                 f"{summary_path}.")
    return 0
