"""`tf-esm score`: zero-shot variant-effect scores for the mutants of a CSV file, one column per model."""

from __future__ import annotations

import os
import sys

from tf_esm.storage.atomic import write_atomic
from tf_esm.cli.common import CliError, add_token_budget_argument, check_model_packages, load_model

NAME = "score"
HELP = "Zero-shot variant-effect scores (ESM-1v) for the mutants listed in a CSV file."
EPILOG = """\
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


def add_arguments(parser):
    parser.add_argument("models", metavar="MODEL", nargs="+",
                        help="one or more masked-LM models (directory, fair-esm .pt or hub id); one output "
                             "column each")
    parser.add_argument("--sequence", required=True, help="the wild-type protein sequence the mutants refer to")
    parser.add_argument("--mutations", required=True, metavar="FILE.csv",
                        help="CSV file with a header and a column of mutants (A24G, or A24G:L30P for several)")
    parser.add_argument("--mutation-col", default="mutant", metavar="NAME", help="the CSV column holding mutants")
    parser.add_argument("--offset-idx", type=int, default=1, metavar="N",
                        help="the position number of the sequence's first residue in the mutant names")
    parser.add_argument("--strategy", choices=("masked-marginals", "wt-marginals", "pseudo-ppl"),
                        default="masked-marginals", help="scoring strategy (see below)")
    parser.add_argument("--output", metavar="FILE.csv",
                        help="where to write the scored CSV (written to a temporary file and renamed); "
                             "default: standard output")
    add_token_budget_argument(parser, "token budget of one batch of masked forward passes",
                              old_spelling="--toks-per-batch")


def check_arguments(args, console):
    """Before TensorFlow starts: torch, where a MODEL is read with it."""
    check_model_packages(*args.models)


def _model_name(reference):
    """`facebook/esm1v_t33_650M_UR90S_1` -> `esm1v_t33_650M_UR90S_1`; `/models/esm1v.pt` -> `esm1v`."""
    name = os.path.basename(os.path.normpath(reference))
    return name[:-3] if name.endswith(".pt") else name


def _load_tokenizer(reference):
    """The model's own vocabulary when it has a vocab.txt, else None (the standard ESM vocabulary)."""
    from tf_esm.storage.hub import resolve_file
    from tf_esm.tokenization import VOCAB_FILE_NAME, EsmTokenizer

    if os.path.isfile(reference):
        return None
    if resolve_file(reference, VOCAB_FILE_NAME, required=False) is None:
        return None
    return EsmTokenizer.from_pretrained(reference)


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


def run(args, console):
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
    names = [_model_name(reference) for reference in args.models]
    if len(set(names)) < len(names):
        names = list(args.models)  # two models share a name: use the references as given
    columns = {}
    for reference, name in zip(args.models, names):
        model = load_model(reference)
        if not hasattr(model, "lm_head"):
            raise CliError(f"MODEL {reference}: {type(model).__name__} has no language-model head; scoring needs a "
                           "masked-LM checkpoint (e.g. facebook/esm1v_t33_650M_UR90S_1).")
        tokenizer = _load_tokenizer(reference)
        bar = console.progress(count_forward_passes(sequence, mutants, args.strategy), "fwd")
        try:
            columns[name] = score_mutants(model, sequence, mutants, strategy=args.strategy, tokenizer=tokenizer,
                                          max_tokens_per_batch=args.max_tokens_per_batch,
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
        write_atomic(path, lambda handle: handle.write(text.getvalue().encode("utf-8")))
