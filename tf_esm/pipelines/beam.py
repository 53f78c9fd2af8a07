"""`tf-esm embed` as an Apache Beam pipeline: many FASTA files, many workers, Parquet shards out.

The pipeline (`build_embed_pipeline`):

  file patterns -> MatchAll -> ReadMatches -> parse each file whole (records are never split across workers)
  -> the record ids checked unique across files (a side input, computed before any record is embedded)
  -> Reshuffle (spreads the records of a few large files over every worker)
  -> SortAndBatchElements (per bundle: sorted by length, batches of at most `max_tokens_per_batch` tokens)
  -> RunInference with `EmbeddingModelHandler` (prebatched: `with_no_batching`)
  -> `result_to_row` -> WriteToParquet: OUT_DIR/part-NNNNN.parquet, the schema of `tf_esm.io.parquet_store`.

Input order: each row's `input_index` is its position in the input, counting the matched files in sorted order
(file k's records from k * 2**32 on), so `tf_esm.io.read_embeddings` returns the records in that order.

Batching: RunInference's own BatchElements counts elements, not tokens, and does not sort, so the batches are made
upstream by Beam's SortAndBatchElements with each record weighing its token count (residues kept + <cls>/<eos>).
Inside a batch, `run_inference` calls `embed_sequences`, the code `tf-esm embed` runs, which plans its forward
passes under the same token budget; a record's numbers do not depend on which batch it lands in.

Model loading: RunInference keeps the model in a `apache_beam.utils.shared.Shared` handle, so `load_model` runs once
per worker process (every DoFn instance and thread of that process uses the same model) unless the model is
garbage-collected between bundles. `share_model_across_processes()` stays False (no `large_model` / `model_copies`):
each process holds its own copy; for models too large for one copy per process, Beam's `large_model=True` would put
one copy in a separate process, which this handler does not use. A model reference with a URL scheme (gs://...,
s3://...) is copied to a local temporary directory by Beam's FileSystems before loading; a local path must exist on
every worker (e.g. baked into the worker's container image).

This is the only tf_esm module that imports apache_beam (an optional extra: pip install tf_esm[beam]).
"""

from __future__ import annotations

import logging
import os
import tempfile
import weakref

try:
    import apache_beam as beam
    import pyarrow  # noqa: F401 - Beam's Parquet sink needs it
    from apache_beam.io import fileio
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
except ImportError as error:  # pragma: no cover - exercised without the extra
    raise ImportError(f"Apache Beam pipelines need apache-beam and pyarrow ({error}): pip install tf_esm[beam]") \
        from error

from tf_esm._deprecation import renamed_keywords
from tf_esm.io.embedding_stores import EmbeddingStoreError, sequence_digest
from tf_esm.io.fasta import FastaError, parse_fasta_bytes
from tf_esm.io.parquet_store import embedding_schema, result_to_row

METRICS_NAMESPACE = "tf_esm_embed"
SHARD_PREFIX = "part"
SHARD_SUFFIX = ".parquet"
logger = logging.getLogger(__name__)


def _has_scheme(path):
    return "://" in path


# ------------------------------------------------------------------------------------------------------- the model
def stage_model(reference, only=None):
    """A local path for `reference`: itself unless it has a URL scheme (gs://bucket/esm2/, s3://...), in which case
    the directory's files (or the one .pt file) are copied by Beam's FileSystems into a new temporary directory.
    `only`: copy just these file names (the launcher reads config.json without the weights)."""
    if not _has_scheme(reference):
        return reference
    local = tempfile.mkdtemp(prefix="tf_esm_model_")
    if reference.endswith((".pt", ".pth")):
        sources = [reference]
    else:
        base = reference.rstrip("/")
        sources = [meta.path for meta in FileSystems.match([FileSystems.join(base, "*")])[0].metadata_list]
    if only is not None:
        sources = [path for path in sources if path.rstrip("/").rsplit("/", 1)[-1] in only]
    if not sources:
        raise FileNotFoundError(f"MODEL {reference}: no files there")
    for source in sources:
        name = source.rstrip("/").rsplit("/", 1)[-1]
        with FileSystems.open(source, compression_type=CompressionTypes.UNCOMPRESSED) as handle, \
                open(os.path.join(local, name), "wb") as out:
            while chunk := handle.read(1 << 24):
                out.write(chunk)
    return os.path.join(local, os.path.basename(reference)) if reference.endswith((".pt", ".pth")) else local


def load_embedding_model(reference):
    """The model `tf-esm embed` loads: the class the checkpoint names, a base model without its pooler."""
    from tf_esm.modeling import TFEsmModel
    from tf_esm.pipelines.auto import load_pretrained_model, reference_class

    model_class = reference_class(reference)
    kwargs = {"add_pooling_layer": False} if model_class is TFEsmModel else {}
    return load_pretrained_model(reference, model_class, **kwargs)


def model_config(reference):
    """The configuration of `reference` without loading the weights where possible (a .pt file is loaded)."""
    from tf_esm.configuration import load_config

    if reference.endswith((".pt", ".pth")):
        return load_embedding_model(stage_model(reference)).config
    return load_config(stage_model(reference, only=("config.json",)))


_MODELS_USED = weakref.WeakSet()


class EmbeddingModelHandler(ModelHandler):
    """Beam ML `ModelHandler` running `tf_esm.pipelines.inference.embed_sequences` on batches of records
    (id, sequence, input index).

    Each prediction is `PredictionResult(example=record, inference=result)`, `result` as `iter_embeddings` yields
    it. Counters (namespace "tf_esm_embed"): `records` embedded, `truncated`, and `models_used`, the model
    objects that ran inference (one per worker process when the shared handle holds the model, see above)."""

    @renamed_keywords(toks_per_batch="max_tokens_per_batch")
    def __init__(self, model, repr_layers=(-1,), include=("mean",), max_tokens_per_batch=4096,
                 truncation_seq_length=1022, streams=None):
        super().__init__()
        self._model_reference = os.fspath(model)
        self._repr_layers = tuple(repr_layers)
        self._include = tuple(include)
        self._max_tokens_per_batch = int(max_tokens_per_batch)
        self._truncation_seq_length = truncation_seq_length
        self._streams = streams

    def load_model(self):
        from tf_esm.pipelines.inference import configure_cpu_threads

        configure_cpu_threads()  # a no-op once TensorFlow has started in this process, or on a GPU
        return load_embedding_model(stage_model(self._model_reference))

    def run_inference(self, batch, model, inference_args=None):
        from tf_esm.pipelines.inference import embed_sequences

        records = list(batch)
        if model not in _MODELS_USED:
            _MODELS_USED.add(model)
            beam.metrics.Metrics.counter(METRICS_NAMESPACE, "models_used").inc()
        results = embed_sequences(model, [record[1] for record in records], repr_layers=self._repr_layers,
                                  include=self._include, max_tokens_per_batch=self._max_tokens_per_batch,
                                  truncation_seq_length=self._truncation_seq_length, streams=self._streams)
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, "records").inc(len(records))
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, "truncated").inc(sum(r["truncated"] for r in results))
        return [PredictionResult(record, result) for record, result in zip(records, results)]

    def get_num_bytes(self, batch):
        return sum(len(record[1]) for record in batch)

    def get_metrics_namespace(self):
        return METRICS_NAMESPACE


# ------------------------------------------------------------------------------------------------------- the input
class ParseFastaFile(beam.DoFn):
    """One whole FASTA file (a `fileio.ReadableFile`) -> (id, sequence, path, input index) per record, validated
    and decompressed as `tf-esm embed` reads a file; a record longer than an absolute-position table
    (`max_residues`) after truncation is an error naming it, as in the one-process command. `files`: the matched
    files in input order (a record's input index is its file's rank * 2**32 + its position in the file)."""

    def __init__(self, truncation_seq_length, max_residues, files=()):
        self._truncation = truncation_seq_length
        self._max_residues = max_residues
        self._file_rank = {path: rank for rank, path in enumerate(files)}

    def process(self, readable_file):
        path = readable_file.metadata.path
        with readable_file.open(compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            data = handle.read()
        offset = self._file_rank.get(path, 0) << 32
        for position, record in enumerate(parse_fasta_bytes(data, path)):
            kept = len(record.sequence) if self._truncation is None else min(len(record.sequence), self._truncation)
            if self._max_residues is not None and kept > self._max_residues:
                raise FastaError(
                    f"{path}: record {record.id!r} has {len(record.sequence)} residues, but this model's absolute "
                    f"position table holds at most {self._max_residues} (+ <cls>/<eos>); pass "
                    f"--truncation-seq-length {self._max_residues} (or less).")
            if self._truncation is not None and len(record.sequence) > self._truncation:
                logger.warning("record %r has %d residues; using the first %d (--truncation-seq-length).",
                               record.id, len(record.sequence), self._truncation)
            yield record.id, record.sequence, path, offset + position


def _duplicate_ids(keyed_paths):
    record_id, paths = keyed_paths
    paths = sorted(paths)
    if len(paths) > 1:
        yield record_id, paths


def _unique(record, duplicates):
    if duplicates:
        record_id, paths = sorted(duplicates)[0]
        raise FastaError(f"duplicate record id {record_id!r} in {', '.join(paths)} ({len(duplicates)} duplicate "
                         "ids in all): ids must be unique across the input files.")
    return record[0], record[1], record[3]


def _row(prediction, schema):
    (record_id, sequence, input_index), result = prediction.example, prediction.inference
    return result_to_row(result, record_id, len(sequence), schema, input_index, sequence_digest(sequence))


# ---------------------------------------------------------------------------------------------------- the pipeline
@renamed_keywords(toks_per_batch="max_tokens_per_batch")
def build_embed_pipeline(pipeline, model, patterns, output_dir, schema, repr_layers=(-1,), include=("mean",),
                         max_tokens_per_batch=4096, truncation_seq_length=1022, max_residues=None, streams=None):
    """Add the embedding transforms to `pipeline` (a `beam.Pipeline`); returns the PCollection of written paths.

    `schema`: from `tf_esm.io.parquet_store.embedding_schema` for these layers/include and the model's hidden
    size; `max_residues`: the absolute position table's capacity (None for rotary models)."""
    def tokens(record):
        count = len(record[1])
        return (count if truncation_seq_length is None else min(count, truncation_seq_length)) + 2

    records = (pipeline
               | "FilePatterns" >> beam.Create(list(patterns))
               | "MatchFiles" >> fileio.MatchAll()
               | "ReadFiles" >> fileio.ReadMatches()
               | "ParseFasta" >> beam.ParDo(ParseFastaFile(truncation_seq_length, max_residues, patterns)))
    duplicates = (records
                  | "IdAndFile" >> beam.Map(lambda record: (record[0], record[2]))
                  | "GroupById" >> beam.GroupByKey()
                  | "Duplicates" >> beam.FlatMap(_duplicate_ids))
    handler = EmbeddingModelHandler(model, repr_layers, include, max_tokens_per_batch, truncation_seq_length, streams)
    return (records
            | "UniqueIds" >> beam.Map(_unique, beam.pvalue.AsList(duplicates))
            | "Spread" >> beam.Reshuffle()
            | "TokenBatches" >> beam.SortAndBatchElements(min_batch_size=1, max_batch_size=1 << 20,
                                                          max_batch_weight=max_tokens_per_batch, element_size_fn=tokens)
            | "Embed" >> RunInference(handler.with_no_batching())
            | "Rows" >> beam.Map(_row, schema)
            | "WriteParquet" >> beam.io.WriteToParquet(
                FileSystems.join(output_dir, SHARD_PREFIX), schema, codec="snappy",
                use_compliant_nested_type=True, file_name_suffix=SHARD_SUFFIX, shard_name_template="-SSSSS"))


def existing_shards(output_dir):
    pattern = FileSystems.join(output_dir, f"{SHARD_PREFIX}-*{SHARD_SUFFIX}")
    return [meta.path for meta in FileSystems.match([pattern])[0].metadata_list]


def matched_files(patterns):
    """The files each pattern matches; a pattern matching none is an error naming it."""
    files = []
    for pattern, match in zip(patterns, FileSystems.match(list(patterns))):
        if not match.metadata_list:
            raise FastaError(f"{pattern}: no FASTA file matches this pattern.")
        files.extend(meta.path for meta in match.metadata_list)
    return sorted(set(files))


@renamed_keywords(toks_per_batch="max_tokens_per_batch")
def embed_files(model, patterns, output_dir, repr_layers=(-1,), include=("mean",), max_tokens_per_batch=4096,
                truncation_seq_length=1022, pipeline_args=(), overwrite=False, settings=None, streams=None):
    """Embed every record of the FASTA files matching `patterns` into Parquet shards OUTPUT_DIR/part-NNNNN.parquet
    with a Beam pipeline (the runner and its options in `pipeline_args`, as on a command line: "--runner",
    "DirectRunner", "--direct_num_workers=2", ...). Waits for the pipeline to finish.

    An OUTPUT_DIR holding shards already is an error unless `overwrite` (they are deleted first): a Beam run does
    not resume. Returns a dict: files, records (embedded), truncated, models_used, shards (paths)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from tf_esm.pipelines.inference import _resolve_layers

    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    # Workers may run elsewhere (another directory, another machine): local paths are made absolute.
    patterns = [p if _has_scheme(p) else os.path.abspath(os.path.expanduser(p)) for p in map(os.fspath, patterns)]
    output_dir = os.fspath(output_dir)
    output_dir = output_dir if _has_scheme(output_dir) else os.path.abspath(os.path.expanduser(output_dir))
    model = os.fspath(model)
    if not _has_scheme(model) and os.path.exists(model):
        model = os.path.abspath(model)
    files = matched_files(patterns)
    config = model_config(model)
    include = sorted(set(include))
    layers = _resolve_layers(repr_layers, config.num_hidden_layers)
    if settings is None:
        settings = {"model": model, "repr_layers": list(layers) if include != ["contacts"] else [],
                    "include": include, "truncation_seq_length": truncation_seq_length,
                    "num_layers": config.num_hidden_layers, "hidden_size": config.hidden_size}
    schema = embedding_schema(include, layers, config.hidden_size, settings)
    limit = config.default_max_length()
    old = existing_shards(output_dir)
    if old and not overwrite:
        raise EmbeddingStoreError(f"OUT_DIR {output_dir} holds {len(old)} part-*.parquet shards from an earlier run; "
                                  "a Beam run does not resume: pass --overwrite or choose another directory.")
    if old:
        FileSystems.delete(old)
    created = not _has_scheme(output_dir) and not os.path.isdir(output_dir)
    if created:
        os.makedirs(output_dir)

    options = PipelineOptions(list(pipeline_args))
    pipeline = beam.Pipeline(options=options)
    build_embed_pipeline(pipeline, model, files, output_dir, schema, repr_layers=layers, include=include,
                         max_tokens_per_batch=max_tokens_per_batch, truncation_seq_length=truncation_seq_length,
                         max_residues=None if limit is None else limit - 2, streams=streams)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except BaseException:
        _remove_temporary_files(output_dir, created)
        raise
    summary = {"files": len(files), "shards": existing_shards(output_dir)}
    summary.update(_counters(result))
    return summary


def _remove_temporary_files(output_dir, created):
    """After a failed run: the file sink's temporary directory (beam-temp-part-*), and OUTPUT_DIR when this run
    created it and nothing else is there. Shards are only renamed into place once every bundle has finished, so a
    failed run leaves none."""
    pattern = FileSystems.join(output_dir, f"beam-temp-{SHARD_PREFIX}-*")
    try:
        if _has_scheme(output_dir):  # object stores: the "directory" is a name prefix of its files
            temporary = FileSystems.match([FileSystems.join(pattern, "*")])[0].metadata_list
            if temporary:
                FileSystems.delete([meta.path for meta in temporary])
        else:
            import glob
            import shutil

            for directory in glob.glob(pattern):
                shutil.rmtree(directory)
    except Exception:  # noqa: BLE001 - cleaning up after a failure must not hide the failure
        logger.warning("could not remove Beam's temporary files in %s", output_dir)
    if created:
        try:
            os.rmdir(output_dir)
        except OSError:
            pass


def _counters(result):
    from apache_beam.metrics.metric import MetricsFilter

    counts = {"records": None, "truncated": None, "models_used": None}
    try:
        queried = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    except Exception:  # noqa: BLE001 - a runner without metrics support
        return counts
    for counter in queried:
        if counter.key.metric.name in counts:
            value = counter.committed if counter.committed is not None else counter.attempted
            counts[counter.key.metric.name] = (counts[counter.key.metric.name] or 0) + int(value or 0)
    return counts
