"""`tf-esm score`: zero-shot variant-effect scores for the mutants of a CSV file, one column per model."""

from __future__ import annotations

import os
import sys

from tf_esm.storage.atomic import write_atomic
from tf_esm.cli.common import (
    CliError, add_token_budget_argument, check_model_packages, interrupted, load_model, read_records,
    require_installed, sigterm_as_interrupt)

NAME = "score"
HELP = "Zero-shot variant-effect scores (ESM-1v, ProteinGym) for a CSV of mutants, or a saturation scan."
EPILOG = """\
strategies (ESM-1v, Meier et al. 2021; log p from the LM head's log-softmax):
  masked-marginals  for each mutated position i: log p(mt_i | wild type with i masked) - log p(wt_i | same);
                    one forward pass per mutated position (batched). The paper's recommended score.
  wt-marginals      the same difference read from one forward pass of the unmasked wild-type sequence.
  pseudo-ppl        pseudo-log-likelihood of the mutant sequence minus that of the wild type, where
                    PLL(x) = sum over all residues i of log p(x_i | x with i masked): one forward pass per residue
                    and distinct mutant (slow). fair-esm's predict.py and ProteinGym report the mutant PLL alone (a
                    constant shift, same ranking) and skip the last two residues; this sums over every residue.
  A multi-mutant such as A24G:L30P scores the sum of its substitutions' scores for the marginal strategies (as
  fair-esm's and ProteinGym's label_row), and the PLL of the sequence carrying all its substitutions for
  pseudo-ppl. Higher scores mean the variant is more likely than the wild type under the model.

long proteins (--long window, the default; ProteinGym, Notin et al. 2023):
  The context is 1022 residues (+ <cls>/<eos>) for ESM-2 and ESM-1b/1v. A longer wild type is scored as
  ProteinGym's compute_fitness.py does: masked-marginals (and each pass of pseudo-ppl) run the 1024-token window
  centred on the masked residue (get_optimal_window: slices of the tokenised protein, so a middle window has
  neither <cls> nor <eos>); wt-marginals averages the log-probabilities of overlapping windows under logistic
  weights (their --scoring-window overlapping, how ProteinGym scores ESM-1b). --long error stops instead.

input and output:
  --mutations is a CSV file with a header; the --mutation-col column holds mutants like A24G (ProteinGym's DMS
  files: column mutant, multi-mutants joined by ':'). The output is the same CSV with one column per MODEL,
  named after the model (the directory or file name without .pt, or the hub id's name, e.g.
  esm1v_t33_650M_UR90S_1; a column of that name is replaced). With several MODELs (ESM-1v's five checkpoints)
  an `ensemble` column holds their mean, as ProteinGym's Ensemble_ESM1v. When the CSV has a --dms-score-col
  column (DMS_score), Spearman's rho between it and each score column is printed (rows with an empty or
  non-numeric value are left out; ties get average ranks). The wild-type letter must match --sequence at that
  position, else it is an error naming the mutant and its row.

saturation scans (--saturate):
  Every substitution to a standard amino acid at every position of --sequence, or of every record of --fasta:
  19 x L rows (id, mutant, position, score; with several MODELs also one column per model and score = their
  mean) into --output FILE.csv or FILE.parquet. masked-marginals needs one forward pass per position,
  wt-marginals one per protein (or window). Finished parts go to a hidden journal next to OUTPUT
  (.NAME.scan/); re-running the same command after an interruption finishes the scan, and OUTPUT is written
  (temporary file, fsync, rename) only when it is complete. --overwrite starts over.

examples:
  tf-esm score facebook/esm1v_t33_650M_UR90S_1 --sequence MKTAYIAKQRQISFVKSHFSRQ --mutations dms.csv --output out.csv
  tf-esm score esm1v_1/ esm1v_2/ esm1v_3/ esm1v_4/ esm1v_5/ --sequence MKTAYIAKQR --mutations BLAT_ECOLX.csv
  tf-esm score esm1b_t33_650M_UR50S.pt --sequence "$(cat long_wt.txt)" --mutations dms.csv --strategy wt-marginals
  tf-esm score facebook/esm2_t33_650M_UR50D --sequence MKTAYIAKQR --saturate --output scan.csv
  tf-esm score facebook/esm2_t33_650M_UR50D --fasta proteins.fasta --saturate --output scan.parquet
"""


def add_arguments(parser):
    parser.add_argument("models", metavar="MODEL", nargs="+",
                        help="one or more masked-LM models (directory, fair-esm .pt or hub id); one output "
                             "column each")
    parser.add_argument("--sequence", help="the wild-type protein sequence the mutants refer to")
    parser.add_argument("--fasta", metavar="FILE", help="with --saturate: scan every record of this FASTA file")
    parser.add_argument("--mutations", metavar="FILE.csv",
                        help="CSV file with a header and a column of mutants (A24G, or A24G:L30P for several)")
    parser.add_argument("--mutation-col", default="mutant", metavar="NAME", help="the CSV column holding mutants")
    parser.add_argument("--dms-score-col", default="DMS_score", metavar="NAME",
                        help="the CSV column of measured scores; when present, Spearman's rho is printed")
    parser.add_argument("--offset-idx", type=int, default=1, metavar="N",
                        help="the position number of the sequence's first residue in the mutant names")
    parser.add_argument("--strategy", choices=("masked-marginals", "wt-marginals", "pseudo-ppl"),
                        default="masked-marginals", help="scoring strategy (see below)")
    parser.add_argument("--long", choices=("window", "error"), default="window",
                        help="a wild type longer than the model's context: score it in ProteinGym's windows, or "
                             "stop with an error (see below)")
    parser.add_argument("--saturate", action="store_true",
                        help="score every substitution at every position (a saturation scan) into --output")
    parser.add_argument("--output", metavar="FILE",
                        help="where to write the scored CSV (written to a temporary file and renamed); "
                             "default: standard output. With --saturate (required): FILE.csv or FILE.parquet")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --saturate: start the scan over instead of resuming it")
    add_token_budget_argument(parser, "token budget of one batch of masked forward passes",
                              old_spelling="--toks-per-batch")


def check_arguments(args, console):
    """Before TensorFlow starts: the inputs the mode needs, and torch where a MODEL is read with it."""
    if args.saturate:
        if (args.sequence is None) == (args.fasta is None):
            raise CliError("--saturate scans --sequence SEQ or the records of --fasta FILE: give exactly one.")
        if args.mutations:
            raise CliError("--saturate scores every substitution; leave out --mutations.")
        if not args.output or not args.output.lower().endswith((".csv", ".parquet")):
            raise CliError("--saturate writes to --output FILE.csv or FILE.parquet.")
        if args.strategy == "pseudo-ppl":
            raise CliError("--saturate takes --strategy masked-marginals or wt-marginals (pseudo-ppl would need a "
                           "forward pass per residue for each of the 19 x L mutants).")
        if args.output.lower().endswith(".parquet"):
            require_installed("pyarrow", "Parquet output")
    else:
        if args.sequence is None or args.mutations is None:
            raise CliError("give --sequence and --mutations (or --saturate for a saturation scan).")
        if args.fasta:
            raise CliError("--fasta is read with --saturate only; score a CSV of mutants with --sequence.")
    check_model_packages(*args.models)


def _model_name(reference):
    """`facebook/esm1v_t33_650M_UR90S_1` -> `esm1v_t33_650M_UR90S_1`; `/models/esm1v.pt` -> `esm1v`."""
    name = os.path.basename(os.path.normpath(reference))
    return name[:-3] if name.endswith(".pt") else name


def _load_tokenizer(reference):
    """The model's own tokenizer when its directory has one (`vocab.txt`; ESM C's `tokenizer.json`), else None (the
    model family's standard vocabulary)."""
    from tf_esm.storage.hub import resolve_file
    from tf_esm.tokenization import TOKENIZER_FILE_NAME, VOCAB_FILE_NAME, load_tokenizer

    if os.path.isfile(reference):
        return None
    if all(resolve_file(reference, name, required=False) is None for name in (VOCAB_FILE_NAME, TOKENIZER_FILE_NAME)):
        return None
    return load_tokenizer(reference)


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


def _masked_lm(reference):
    model = load_model(reference)
    if not hasattr(model, "lm_head"):
        raise CliError(f"MODEL {reference}: {type(model).__name__} has no language-model head; scoring needs a "
                       "masked-LM checkpoint (e.g. facebook/esm1v_t33_650M_UR90S_1).")
    return model


def _column_names(models):
    names = [_model_name(reference) for reference in models]
    return names if len(set(names)) == len(names) else list(models)  # two share a name: the references as given


def run(args, console):
    if args.saturate:
        return _run_scan(args, console)
    from tf_esm.io.fasta import clean_sequence
    from tf_esm.pipelines.scoring import MutationError, count_forward_passes, parse_mutant, score_mutants

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
    columns = {}
    for reference, name in zip(args.models, _column_names(args.models)):
        model = _masked_lm(reference)
        tokenizer = _load_tokenizer(reference)
        bar = console.progress(count_forward_passes(sequence, mutants, args.strategy, model), "fwd")
        try:
            columns[name] = score_mutants(model, sequence, mutants, strategy=args.strategy, tokenizer=tokenizer,
                                          max_tokens_per_batch=args.max_tokens_per_batch,
                                          progress_callback=lambda n: bar.update(n), long=args.long)
        except MutationError as error:
            raise CliError(f"MODEL {reference}: {error}") from None
        finally:
            bar.close()
    if len(columns) > 1:
        columns[ENSEMBLE_COLUMN] = sum(columns.values()) / len(columns)
    _write_scores(args.output, header, rows, columns)
    if args.output:
        console.info(f"scored {len(rows)} mutants with {len(args.models)} model(s) ({args.strategy}) into "
                     f"{args.output}.")
    if args.dms_score_col in header:
        _print_spearman(args, header, rows, columns)
    return 0


ENSEMBLE_COLUMN = "ensemble"


def _print_spearman(args, header, rows, columns):
    """Spearman's rho of each score column against the measured one, on standard output after the CSV (or alone
    when the CSV went to --output)."""
    import numpy as np

    from tf_esm.pipelines.scoring import spearman

    index = header.index(args.dms_score_col)

    def number(row):
        try:
            return float(row[index]) if index < len(row) and row[index].strip() else np.nan
        except ValueError:
            return np.nan

    measured = np.asarray([number(row) for row in rows])
    used = int(np.isfinite(measured).sum())
    stream = sys.stdout if args.output else sys.stderr
    for name, scores in columns.items():
        print(f"spearman {name} vs {args.dms_score_col}: {spearman(scores, measured):.4f} ({used} mutants)",
              file=stream, flush=True)


def _run_scan(args, console):
    from tf_esm.io.fasta import FastaRecord, clean_sequence
    from tf_esm.pipelines.scan import ScanError, write_saturation_scan
    from tf_esm.pipelines.scoring import MutationError
    from tf_esm.pipelines.windows import context_tokens, overlapping_windows

    if args.fasta:
        records = read_records(args.fasta)
    else:
        records = [FastaRecord("sequence", "", clean_sequence(args.sequence, name="--sequence"))]
    models = [_masked_lm(reference) for reference in args.models]
    tokenizers = [_load_tokenizer(reference) for reference in args.models]
    if args.strategy == "wt-marginals":
        limit = context_tokens(models[0].config)
        passes = sum(1 if limit is None else len(overlapping_windows(len(r.sequence) + 2, limit)) for r in records)
    else:
        passes = sum(len(record.sequence) for record in records)
    bar = console.progress(passes * len(models), "fwd")
    settings = {"models": [os.path.abspath(m) if os.path.exists(m) else m for m in args.models]}
    try:
        with sigterm_as_interrupt():
            rows = write_saturation_scan(models, records, args.output, strategy=args.strategy,
                                         offset_idx=args.offset_idx, tokenizer=tokenizers,
                                         max_tokens_per_batch=args.max_tokens_per_batch, long=args.long,
                                         overwrite=args.overwrite, model_names=_column_names(args.models),
                                         settings=settings, progress_callback=lambda n: bar.update(n))
    except KeyboardInterrupt:
        bar.close()
        raise interrupted("the finished parts", f"the journal next to {args.output}") from None
    except (ScanError, MutationError) as error:
        bar.close()
        raise CliError(str(error)) from None
    bar.close()
    console.info(f"scanned {len(records)} protein(s): {rows} mutants ({args.strategy}) into {args.output}.")
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
        write_atomic(path, lambda handle: handle.write(text.getvalue().encode("utf-8")))
