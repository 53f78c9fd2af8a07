"""Saturation scans written to a file, resumably: every single substitution of one or many proteins, one row each.

`write_saturation_scan` is what `tf-esm score --saturate` runs. Rows are `id, mutant, position, score` (plus one
score column per model when several models are averaged, as ESM-1v's five are), in protein order, then position,
then mutant residue (alphabetical), the mutant written `A24G` with positions counted from `offset_idx`. OUTPUT is
`.csv` or `.parquet` (pyarrow).

Resuming and crash safety, as `tf-esm embed`: the work is cut into parts (a block of positions of one protein for
one model) and each finished part is written to a hidden journal next to OUTPUT, `.NAME.scan/`, as a temporary file
fsynced and renamed (`tf_esm.storage.atomic`). The journal's `settings.json` records the strategy, the models and
every protein's id and sequence digest; a run that finds a journal with the same settings skips the parts it holds
(other settings are an error naming them; `overwrite=True` starts over). When every part is in, OUTPUT is written
the same way (temporary file, fsync, rename) and the journal removed. Parts are computed identically whether or not
a run was interrupted, so a resumed scan writes the same file as an uninterrupted one.

Examples:

```python
>>> from tf_esm import TFEsmForMaskedLM
>>> from tf_esm.pipelines.scan import write_saturation_scan
>>> model = TFEsmForMaskedLM.from_pretrained("facebook/esm2_t6_8M_UR50D")
>>> write_saturation_scan(model, [("P1", "MKTAYIAKQR")], "scan.csv")
190
```
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np

from tf_esm.pipelines.scoring import (
    DEFAULT_MAX_TOKENS_PER_BATCH, saturation_mutants, saturation_scan, scan_scores_in_order)
from tf_esm.storage.atomic import PARTIAL_SUFFIX, fsync_directory, write_atomic

SETTINGS_FILE = "settings.json"
DEFAULT_POSITIONS_PER_PART = 256


class ScanError(ValueError):
    """An OUTPUT that cannot be written or resumed (the message says why and what to do)."""


def _model_digest(model):
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else vars(model.config)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _journal(path):
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.scan")


def _output_format(path):
    lower = path.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(".parquet"):
        return "parquet"
    raise ScanError(f"OUTPUT {path}: a saturation scan is written to a .csv or .parquet file.")


def write_saturation_scan(models, records, path, strategy="masked-marginals", offset_idx=1, tokenizer=None,
                          max_tokens_per_batch=DEFAULT_MAX_TOKENS_PER_BATCH, long="window", overwrite=False,
                          model_names=None, settings=None, positions_per_part=DEFAULT_POSITIONS_PER_PART,
                          progress_callback=None):
    """Scan every single substitution of every protein in `records` into `path` (see the module docstring).

    Args:
        models: one masked-LM model, or several whose scores are averaged (`score` is their mean; each also gets
            its own column, named by `model_names`).
        records: `(id, sequence)` pairs or `FastaRecord`s (ids must be distinct).
        path: OUTPUT, `.csv` or `.parquet`.
        strategy: "masked-marginals" (one forward pass per position) or "wt-marginals" (one per protein or window).
        offset_idx: the position number of each protein's first residue in the mutant names.
        tokenizer: an `EsmTokenizer` (default: the standard ESM vocabulary), or one per model.
        max_tokens_per_batch, long: as in `tf_esm.pipelines.scoring.score_mutants`.
        overwrite: recompute everything instead of resuming.
        model_names: column names for several models (default: model_1, model_2, ...).
        settings: extra JSON-able values a resumed run must match (e.g. the models' paths).
        positions_per_part: positions of one protein per journal part (the unit of resuming).
        progress_callback: called with the number of forward passes finished after each batch.

    Returns:
        The number of rows written.

    Raises:
        ScanError: OUTPUT exists without a journal (pass overwrite=True), or a journal of other settings.

    Examples:

    ```python
    >>> write_saturation_scan([esm1v_1, esm1v_2], read_fasta("proteins.fasta"), "scan.parquet",
    ...                       model_names=["esm1v_1", "esm1v_2"])
    ```
    """
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    tokenizers = list(tokenizer) if isinstance(tokenizer, (list, tuple)) else [tokenizer] * len(models)
    records = [(record.id, record.sequence) if hasattr(record, "sequence") else tuple(record) for record in records]
    ids = [record_id for record_id, _ in records]
    if len(set(ids)) < len(ids):
        duplicate = next(record_id for record_id in ids if ids.count(record_id) > 1)
        raise ScanError(f"record id {duplicate!r} appears more than once; a scan needs distinct ids.")
    if model_names is None:
        model_names = [f"model_{number + 1}" for number in range(len(models))]
    output_format = _output_format(path)
    if strategy not in ("masked-marginals", "wt-marginals"):
        saturation_scan(models[0], "", strategy)  # raises the strategy error
    journal = _journal(path)
    wanted = {"strategy": strategy, "offset_idx": int(offset_idx), "long": long, "model_names": list(model_names),
              "models": [_model_digest(model) for model in models], "positions_per_part": int(positions_per_part),
              "records": [[record_id, hashlib.sha256(sequence.encode("utf-8")).hexdigest()]
                          for record_id, sequence in records], "extra": settings or {}}
    _open_journal(path, journal, wanted, overwrite)

    parts = [(record_number, first) for record_number, (_, sequence) in enumerate(records)
             for first in range(0, len(sequence), positions_per_part)]
    for model_number, (model, model_tokenizer) in enumerate(zip(models, tokenizers)):
        for record_number, (_, sequence) in enumerate(records):
            missing = [first for number, first in parts if number == record_number
                       and not os.path.exists(_part_path(journal, model_number, record_number, first))]
            if not missing:
                continue
            if strategy == "wt-marginals":  # one pass (or one set of windows) serves every part
                scores = saturation_scan(model, sequence, strategy, None, model_tokenizer, max_tokens_per_batch,
                                         progress_callback, long)
            for first in missing:
                positions = np.arange(first, min(len(sequence), first + positions_per_part))
                if strategy == "masked-marginals":
                    scores = saturation_scan(model, sequence, strategy, positions, model_tokenizer,
                                             max_tokens_per_batch, progress_callback, long)
                values = scan_scores_in_order(sequence[positions[0]:positions[-1] + 1], scores[positions])
                _save_part(_part_path(journal, model_number, record_number, first), values)
    rows = _assemble(journal, records, len(models), model_names, offset_idx, positions_per_part)
    _write_output(path, output_format, rows, model_names if len(models) > 1 else [])
    shutil.rmtree(journal, ignore_errors=True)
    return len(rows["mutant"])


def _open_journal(path, journal, wanted, overwrite):
    if overwrite:
        shutil.rmtree(journal, ignore_errors=True)
    settings_path = os.path.join(journal, SETTINGS_FILE)
    if os.path.isdir(journal) and os.path.exists(settings_path):
        with open(settings_path, encoding="utf-8") as handle:
            stored = json.load(handle)
        different = [key for key in wanted if stored.get(key) != wanted[key]]
        if different:
            raise ScanError(f"OUTPUT {path}: the unfinished scan in {journal} was started with other "
                            f"{', '.join(different)}; run it with the same ones to finish it, or pass --overwrite "
                            "(overwrite=True) to start over.")
        for entry in os.listdir(journal):
            if entry.endswith(PARTIAL_SUFFIX):
                os.remove(os.path.join(journal, entry))
        return
    if os.path.exists(path) and not overwrite:
        raise ScanError(f"OUTPUT {path} exists (a finished scan, or another file); pass --overwrite "
                        "(overwrite=True) to replace it.")
    os.makedirs(journal, exist_ok=True)
    text = json.dumps(wanted, indent=1, sort_keys=True)
    write_atomic(settings_path, lambda handle: handle.write(text.encode("utf-8")))


def _part_path(journal, model_number, record_number, first):
    return os.path.join(journal, f"m{model_number:02d}-r{record_number:07d}-p{first:07d}.npy")


def _save_part(path, values):
    write_atomic(path, lambda handle: np.save(handle, np.asarray(values, dtype=np.float64)))
    fsync_directory(os.path.dirname(path))


def _assemble(journal, records, num_models, model_names, offset_idx, positions_per_part):
    columns = {"id": [], "mutant": [], "position": []}
    per_model = [[] for _ in range(num_models)]
    for record_number, (record_id, sequence) in enumerate(records):
        mutants = saturation_mutants(sequence, offset_idx)
        columns["id"].extend([record_id] * len(mutants))
        columns["mutant"].extend(mutants)
        columns["position"].extend(int(mutant[1:-1]) for mutant in mutants)
        for model_number in range(num_models):
            for first in range(0, len(sequence), positions_per_part):
                per_model[model_number].append(np.load(_part_path(journal, model_number, record_number, first)))
    scores = np.stack([np.concatenate(values) if values else np.zeros(0) for values in per_model])
    columns["score"] = scores.mean(axis=0)
    if num_models > 1:
        for name, values in zip(model_names, scores):
            columns[name] = values
    return columns


def _write_output(path, output_format, rows, model_columns):
    names = ["id", "mutant", "position", "score", *model_columns]
    if output_format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({name: rows[name] for name in names})
        write_atomic(path, lambda handle: pq.write_table(table, handle))
        return
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(names)
    floats = [rows[name] for name in names[3:]]
    for index, (record_id, mutant, position) in enumerate(zip(rows["id"], rows["mutant"], rows["position"])):
        writer.writerow([record_id, mutant, position, *(repr(float(values[index])) for values in floats)])
    write_atomic(path, lambda handle: handle.write(text.getvalue().encode("utf-8")))


