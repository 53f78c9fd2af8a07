"""`tf-esm contacts`: one contact map (.npy, optionally a PNG heat map) per FASTA record."""

from __future__ import annotations

import os

from tf_esm.storage.atomic import remove_stale_partials, write_atomic
from tf_esm.cli.common import (
    CliError, add_fasta_argument, add_model_argument, add_token_budget_argument, check_contacts_supported,
    check_model_packages,
    check_position_table, configure_threads, interrupted, load_model, make_output_directory, positive_int,
    read_records, require_installed, sigterm_as_interrupt, skipped_note, warn_truncated)
from tf_esm.io.embedding_stores import record_key

NAME = "contacts"
HELP = "Contact maps (.npy, and optional PNG heat maps) for a FASTA file."
EPILOG = """\
output:
  OUTDIR/<id>.npy  contact probabilities, float32 (L, L) over the residues (fair-esm's predict_contacts);
  OUTDIR/<id>.png  with --png, a heat map (needs matplotlib: pip install matplotlib).
  Ids are FASTA ids with '%' and '/' written %25 and %2F. Records whose files exist are skipped (re-running
  resumes; a stored map whose size does not fit its record's sequence is an error); --overwrite recomputes
  them. Every file is written to a temporary name and renamed.

examples:
  tf-esm contacts facebook/esm2_t6_8M_UR50D proteins.fasta contacts/
  tf-esm contacts esm2_t33_650M_UR50D.pt proteins.fasta contacts/ --png --max-tokens-per-batch 2048
"""


def add_arguments(parser):
    add_model_argument(parser)
    add_fasta_argument(parser, "input FASTA file (gzip/bzip2/xz read as such; - reads standard input)")
    parser.add_argument("outdir", metavar="OUTDIR", help="output directory (created if needed)")
    parser.add_argument("--png", action="store_true", help="also write a heat-map plot per record "
                                                           "(needs matplotlib)")
    add_token_budget_argument(parser, "token budget of one batch (rows x padded length)",
                              old_spelling="--toks-per-batch")
    parser.add_argument("--truncation-seq-length", type=positive_int, default=1022, metavar="N",
                        help="use only the first N residues of longer sequences (a warning names each one)")
    parser.add_argument("--overwrite", action="store_true", help="recompute records whose files exist")


def check_arguments(args, console):
    """Before TensorFlow starts: the optional packages this run needs."""
    check_model_packages(args.model)
    if args.png:
        require_installed("matplotlib", "--png")


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
    write_atomic(path, lambda handle: figure.savefig(handle, format="png"))


def _check_lengths(outdir, done, truncation_seq_length):
    """Refuse to resume into OUTDIR when a stored map's size is not its FASTA record's length (`done`: (record,
    .npy path)): that record's sequence changed, and skipping it would keep a stale map. (A .npy holds no more
    than the map, so a substitution that keeps the length is not seen: --overwrite recomputes.)"""
    import numpy as np

    stale = [record.id for record, path in done
             if np.load(path, mmap_mode="r").shape != (min(len(record.sequence), truncation_seq_length),) * 2]
    if stale:
        shown = ", ".join(repr(record_id) for record_id in stale[:3]) + (
            f" and {len(stale) - 3} more" if len(stale) > 3 else "")
        raise CliError(f"OUTDIR {outdir}: the contact map of {len(stale)} record(s) does not fit this FASTA's "
                       f"sequence ({shown}): it was computed from another sequence or --truncation-seq-length; "
                       "choose another OUTDIR or pass --overwrite.")


def run(args, console):
    import numpy as np

    records = read_records(args.fasta)
    make_output_directory(args.outdir, "OUTDIR")
    remove_stale_partials(args.outdir)

    def outputs(record):
        base = os.path.join(args.outdir, record_key(record.id))
        return base + ".npy", (base + ".png" if args.png else None)

    todo = [record for record in records
            if args.overwrite or not all(p is None or os.path.exists(p) for p in outputs(record))]
    if not args.overwrite:
        computing = {record.id for record in todo}
        _check_lengths(args.outdir, [(record, outputs(record)[0]) for record in records if record.id not in computing],
                       args.truncation_seq_length)
    skipped = len(records) - len(todo)
    if not todo:
        console.info(f"all {len(records)} records already have contact maps in {args.outdir}; nothing to do.")
        return 0
    configure_threads()
    model = load_model(args.model, embedding=True)
    check_contacts_supported(model, "tf-esm contacts")
    check_position_table(model, todo, args.truncation_seq_length)
    from tf_esm.pipelines.inference import iter_embeddings

    warn_truncated(console, todo, args.truncation_seq_length)
    bar = console.progress(len(todo), "seq",
                           total_work=sum(min(len(r.sequence), args.truncation_seq_length) for r in todo))
    try:
        with sigterm_as_interrupt():
            for index, result in iter_embeddings(model, [record.sequence for record in todo], repr_layers=(),
                                                 include=("contacts",), max_tokens_per_batch=args.max_tokens_per_batch,
                                                 truncation_seq_length=args.truncation_seq_length):
                record = todo[index]
                npy_path, png_path = outputs(record)
                contacts = np.asarray(result["contacts"], dtype=np.float32)
                write_atomic(npy_path, lambda handle: np.save(handle, contacts))
                if png_path:
                    _write_contact_png(png_path, record.id, contacts)
                bar.update(1, work=result["length"])
    except KeyboardInterrupt:
        raise interrupted("finished records", args.outdir) from None
    finally:
        bar.close()
    console.info(f"wrote contact maps of {len(todo)} records to {args.outdir}{skipped_note(skipped)}.")
    return 0
