"""Bad protein sequences x the five entry points, and the length limit of absolute-position models.

One table (`CASES`) gives, for each bad input, the documented behaviour of
* the tokenizers (`EsmTokenizer`, identical to transformers', and the in-graph `tokenize_strings`): token ids,
  `?` standing for one `<unk>`;
* the validating paths (`tf_esm.pipelines.data` and the `tf-esm` command, both through `tf_esm.io.fasta.clean_sequence`): the
  normalised residues, or the error (character and 1-based position among the residues, or "empty");
* the SavedModel's string signature (`validate=True`): the normalised residues, or the error (character and
  1-based position in the request string, or "empty").
Every error must name the sequence (record id / `sequences[i]` / batch index); every success is checked id by id.
"""

import dataclasses

import h5py
import numpy as np
import pytest
import tensorflow as tf

from tests._reference import assert_close, share_directory, torch_outputs
from tf_esm import TFEsmForMaskedLM
from tf_esm.cli import main
from tf_esm.configuration import ESM2_VOCAB
from tf_esm.pipelines.data import SequenceTooLongError, read_fasta_records, sequences_dataset
from tf_esm.pipelines.export import EsmServingModule, default_max_length, export_saved_model
from tf_esm.io.fasta import FastaError, parse_fasta, read_fasta
from tf_esm.graph_tokenizer import tokenize_strings

LONG = "MKTAYIAKQR" * 110  # 1100 residues: past ESM-2's 1024 positions and the CLI's default truncation (1022)
CLI_TRUNCATION = 1022  # tf-esm embed --truncation-seq-length as cli_ok_output passes it (windows: test_long_proteins)
FINAL_LAYER = 2  # --repr-layers -1 of the 2-layer tiny models, as stored in the HDF5 file


@dataclasses.dataclass(frozen=True)
class Bad:
    """An error naming `char` at 1-based `position`; `Bad()` (no character) is the empty-sequence error."""

    char: str = ""
    position: int = 0


EMPTY = Bad()


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    raw: str
    tokens: object  # tokenizers: str (one token per character, "?" = <unk>) or list of tokens
    validated: object  # tf_esm.pipelines.data / CLI: normalised residues or Bad
    served: object  # SavedModel serving_default: normalised residues / tokens or Bad


CASES = [
    Case("empty", "", "", EMPTY, EMPTY),
    Case("whitespace_only", " \t ", "", EMPTY, EMPTY),
    Case("lower_case", "mkta", "?", "MKTA", Bad("m", 1)),
    Case("mixed_case", "MkTa", "M?T?", "MKTA", Bad("k", 2)),
    Case("inner_whitespace", "MK TA\tY", "MKTAY", "MKTAY", "MKTAY"),
    Case("digit", "MK1TA", "MK?TA", Bad("1", 3), Bad("1", 3)),
    Case("digit_after_space", "MK 1TA", "MK?TA", Bad("1", 3), Bad("1", 4)),
    Case("unknown_letter", "MKJTA", "MK?TA", Bad("J", 3), Bad("J", 3)),
    Case("unknown_run", "MKJ#@TA", "MK?TA", Bad("J", 3), Bad("J", 3)),
    Case("non_ascii_letter", "MKßA", "MK?A", Bad("ß", 3), Bad("ß", 3)),  # "ß".upper() == "SS"
    Case("nul", "MK\x00TA", "MK?TA", Bad("\x00", 3), Bad("\x00", 3)),
    Case("trailing_stop", "MKTA*", "MKTA?", "MKTA", "MKTA"),
    Case("trailing_stop_space", "MKTA* ", "MKTA?", "MKTA", "MKTA"),
    Case("inner_stop", "MK*TA", "MK?TA", Bad("*", 3), Bad("*", 3)),
    Case("double_stop", "MKTA**", "MKTA?", Bad("*", 5), Bad("*", 5)),
    Case("stop_only", "*", "?", EMPTY, EMPTY),
    Case("special_token", "MK<mask>A", ["M", "K", "<mask>", "A"], Bad("<", 3), ["M", "K", "<mask>", "A"]),
    Case("very_long_rotary", LONG, LONG, LONG, LONG),  # the CLI keeps the first 1022 (--truncation-seq-length 1022)
]
ENTRY_POINTS = ["tokenizer", "graph_tokenizer", "data", "cli", "saved_model"]
VALID = [case for case in CASES if not isinstance(case.validated, Bad)]  # accepted by tf_esm.pipelines.data and the CLI


def ids(tokens):
    """`<cls> tokens <eos>` as ESM-2 ids (from the vocabulary list, independently of the tokenizers)."""
    tokens = ["<unk>" if token == "?" else token for token in tokens]
    return [0] + [ESM2_VOCAB.index(token) for token in tokens] + [2]


def fasta_error(name, bad):
    if bad == EMPTY:
        return f"{name}: the sequence is empty."
    return f"{name}: invalid character {bad.char!r} at position {bad.position}"


def saved_model_error(index, bad):
    if bad == EMPTY:
        return f"[Empty sequence(s) (no residues) at batch index] [{index}]"
    # TensorFlow's assertion messages C-escape control characters (NUL -> \000) and keep the others as they are.
    char = f"\\{ord(bad.char):03o}" if ord(bad.char) < 0x20 or bad.char == "\x7f" else bad.char
    return f"at batch index] [{index}] [1-based position] [{bad.position}] [character] [{char}]"


# ----------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rotary(reference_checkpoints):
    return reference_checkpoints("rotary")


@pytest.fixture(scope="module")
def rotary_model(rotary):
    return TFEsmForMaskedLM.from_pretrained(rotary.path)


@pytest.fixture(scope="module")
def absolute(reference_checkpoints):
    return reference_checkpoints("absolute")


@pytest.fixture(scope="module")
def absolute_model(absolute):
    return TFEsmForMaskedLM.from_pretrained(absolute.path)


def _serving(model, path):
    return tf.saved_model.load(share_directory(export_saved_model(model, path))).signatures


@pytest.fixture(scope="module")
def rotary_serving(rotary_model, tmp_path_factory):
    return _serving(rotary_model, tmp_path_factory.mktemp("bad_input_rotary") / "1")


@pytest.fixture(scope="module")
def absolute_serving(absolute_model):
    """The signatures export_saved_model would write, called in-process (saving is tested with the rotary model)."""
    return EsmServingModule(absolute_model, max_length=default_max_length(absolute_model.config)).signatures()


def _write_fasta(path, records):
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in records.items()), encoding="utf-8")
    return str(path)


def _embed(capsys, *args):
    capsys.readouterr()  # drop what fixtures printed (checkpoint writing progress)
    code = main(["embed", *map(str, args), "--include", "mean", "--repr-layers", "-1"])
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data_rows():
    """{in_graph: {case name: ids}} from one `sequences_dataset` over every case tf_esm.pipelines.data accepts."""
    rows = {}
    for in_graph in (False, True):
        dataset = sequences_dataset([case.raw for case in VALID], batch_size=len(VALID), bucket_boundaries=None,
                                    in_graph=in_graph)
        features = next(iter(dataset))
        mask = features["attention_mask"].numpy() == 1
        rows[in_graph] = {case.name: features["input_ids"].numpy()[index][mask[index]].tolist()
                          for index, case in enumerate(VALID)}
    return rows


@pytest.fixture(scope="module")
def cli_ok_output(rotary, tmp_path_factory):
    """One `tf-esm embed` run over every case the CLI accepts (one record each): the HDF5 file."""
    directory = tmp_path_factory.mktemp("bad_input_cli")
    fasta = _write_fasta(directory / "ok.fasta", {f"case_{case.name}": case.raw for case in VALID})
    output = directory / "ok.h5"
    assert main(["embed", rotary.path, fasta, str(output), "--include", "mean", "--repr-layers", "-1",
                 "--truncation-seq-length", str(CLI_TRUNCATION)]) == 0
    share_directory(directory)
    return output


def _mean_embedding(model, residues):
    hidden = np.asarray(model(np.asarray([ids(residues)], np.int32), output_hidden_states=True).hidden_states[-1])
    return hidden[0, 1:len(residues) + 1].mean(axis=0)


# ---------------------------------------------------------------------------------------- the table, checked


def check_tokenizer(case, esm_tokenizer, hf_tokenizer, **_):
    got = esm_tokenizer(case.raw)["input_ids"]
    assert got == hf_tokenizer(case.raw)["input_ids"], "EsmTokenizer must match transformers' EsmTokenizer"
    assert got == ids(case.tokens)


def check_graph_tokenizer(case, **_):
    got = tokenize_strings(tf.constant([case.raw]), ragged=True)["input_ids"][0].numpy().tolist()
    assert got == ids(case.tokens)


def check_data(case, request, **_):
    if isinstance(case.validated, Bad):
        for in_graph in (False, True):
            with pytest.raises(FastaError) as error:
                sequences_dataset(["MKV", case.raw], in_graph=in_graph)
            assert fasta_error("sequences[1]", case.validated) in str(error.value)
        # FASTA text (tf_esm.io.fasta.parse_fasta, which tf_esm.pipelines.data and the CLI read files with) names the record.
        with pytest.raises(FastaError) as error:
            parse_fasta(f">ok\nMKV\n>bad\n{case.raw}\n")
        assert fasta_error("record 'bad'", case.validated) in str(error.value)
        return
    rows = request.getfixturevalue("data_rows")
    for in_graph in (False, True):
        assert rows[in_graph][case.name] == ids(case.validated), f"in_graph={in_graph}"


def check_cli(case, capsys, tmp_path, rotary, rotary_model, request, **_):
    if isinstance(case.validated, Bad):
        path = _write_fasta(tmp_path / "in.fasta", {"ok": "MKV", "bad": case.raw})
        for reader in (read_fasta, read_fasta_records):  # the readers under the CLI and tf_esm.pipelines.data
            with pytest.raises(FastaError) as error:
                reader(path)
            assert fasta_error("record 'bad'", case.validated) in str(error.value), reader.__name__
        code, lines = _embed(capsys, rotary.path, path, tmp_path / "out.h5")
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith("tf-esm: error: ") and fasta_error("record 'bad'", case.validated) in lines[0]
        assert not (tmp_path / "out.h5").exists()
        return
    used = case.validated[:CLI_TRUNCATION]
    with h5py.File(request.getfixturevalue("cli_ok_output"), "r") as handle:
        row = list(handle["ids"].asstr()[()]).index(f"case_{case.name}")
        assert handle["lengths"][row] == len(used)
        assert handle["sequence_lengths"][row] == len(case.validated)
        assert bool(handle["truncated"][row]) == (len(case.validated) > CLI_TRUNCATION)
        np.testing.assert_allclose(handle[f"mean/{FINAL_LAYER}"][row], _mean_embedding(rotary_model, used),
                                   atol=2e-5)


def check_saved_model(case, rotary_serving, **_):
    call = lambda: rotary_serving["serving_default"](sequences=tf.constant(["MKV", case.raw]))  # noqa: E731
    if isinstance(case.served, Bad):
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            call()
        assert saved_model_error(1, case.served) in error.value.message, error.value.message
        return
    outputs = call()
    row = outputs["input_ids"][1].numpy()[outputs["attention_mask"][1].numpy() == 1]
    assert row.tolist() == ids(case.served)
    assert outputs["residue_mask"][1].numpy().sum() == len(ids(case.served)) - 2


CHECKS = {"tokenizer": check_tokenizer, "graph_tokenizer": check_graph_tokenizer, "data": check_data,
          "cli": check_cli, "saved_model": check_saved_model}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_behaviour(case, entry, request, capsys, tmp_path):
    fixtures = {}
    if entry == "tokenizer":
        fixtures = {name: request.getfixturevalue(name) for name in ("esm_tokenizer", "hf_tokenizer")}
    elif entry == "cli":
        fixtures = {name: request.getfixturevalue(name) for name in ("rotary", "rotary_model")}
    elif entry == "saved_model":
        fixtures = {"rotary_serving": request.getfixturevalue("rotary_serving")}
    CHECKS[entry](case, capsys=capsys, tmp_path=tmp_path, request=request, **fixtures)


def test_non_ascii_letters_are_not_upper_cased_into_residues():
    """`str.upper` maps "ß" -> "SS", "ﬁ" -> "FI", "ſ" -> "S": the policy upper-cases ASCII letters only."""
    for text, char in (("MKßA", "ß"), ("MKﬁA", "ﬁ"), ("mkſa", "ſ"), ("MKıA", "ı")):
        with pytest.raises(FastaError, match=f"invalid character '{char}' at position 3"):
            sequences_dataset([text])


def test_hand_built_records_with_an_empty_sequence_are_refused():
    from tf_esm.pipelines.data import SequenceRecords, make_dataset

    with pytest.raises(FastaError, match="^b: the sequence is empty"):
        make_dataset(SequenceRecords(ids=["a", "b"], sequences=["MKV", ""]))


# ---------------------------------------------------- length: absolute positions (tiny table: 62 tokens, 60 res.)

LIMIT_TOKENS = 62  # max_position_embeddings 64 - padding_idx 1 - 1


def _residues(count):
    return ("MKTAYIAKQR" * 20)[:count]


def test_absolute_model_refuses_too_long_inputs_eagerly(absolute_model):
    absolute_model(np.asarray([ids(_residues(LIMIT_TOKENS - 2))], np.int32))  # exactly at the limit: fine
    with pytest.raises(ValueError, match=f"at most {LIMIT_TOKENS} tokens"):
        absolute_model(np.asarray([ids(_residues(LIMIT_TOKENS - 1))], np.int32))


def test_absolute_model_refuses_too_long_inputs_inside_tf_function(absolute_model):
    forward = tf.function(lambda input_ids: absolute_model(input_ids).logits,
                          input_signature=[tf.TensorSpec([None, None], tf.int32)])
    forward(np.asarray([ids(_residues(LIMIT_TOKENS - 2))], np.int32))
    with pytest.raises(Exception, match=f"at most {LIMIT_TOKENS} tokens"):
        forward(np.asarray([ids(_residues(LIMIT_TOKENS - 1))], np.int32))


def test_data_length_policy_names_the_record_or_truncates():
    sequences = ["MKV", _residues(61)]
    with pytest.raises(SequenceTooLongError, match=rf"sequences\[1\]: 61 residues .* max_length={LIMIT_TOKENS}"):
        sequences_dataset(sequences, max_length=LIMIT_TOKENS)
    with pytest.warns(UserWarning, match=r"Truncated 1 record\(s\) to their first 60 residues"):
        dataset = sequences_dataset(sequences, max_length=LIMIT_TOKENS, truncation="warn", batch_size=2,
                                    bucket_boundaries=None)
    features = next(iter(dataset))
    assert features["input_ids"][1].numpy().tolist() == ids(_residues(60))


@pytest.mark.parametrize("command, records, option", [
    ("embed", {"short": "MKV", "long": _residues(100)}, ["--long", "error"]),  # the default: windows
    ("embed", {"long": _residues(100)}, ["--truncation-seq-length", "61"]),
    ("contacts", {"long": _residues(100)}, []),
])
def test_cli_refuses_more_residues_than_the_position_table(tmp_path, capsys, absolute, command, records, option):
    fasta = _write_fasta(tmp_path / "in.fasta", records)
    output = tmp_path / ("out.h5" if command == "embed" else "contacts")
    capsys.readouterr()
    code = main([command, absolute.path, fasta, str(output), *option])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert ("record 'long' has 100 residues, but this model's absolute position table holds at most 60" in lines[0]
            and "--truncation-seq-length 60" in lines[0]), lines[0]
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("records, option, used", [
    ({"short": "MKV", "edge": _residues(60)}, [], {"short": 3, "edge": 60}),  # default 1022: everything fits
    ({"short": "MKV", "long": _residues(100)}, ["--truncation-seq-length", "60"], {"short": 3, "long": 60}),
])
def test_cli_truncation_within_the_position_table(tmp_path, capsys, absolute, absolute_model, records, option, used):
    fasta = _write_fasta(tmp_path / "in.fasta", records)
    code, lines = _embed(capsys, absolute.path, fasta, tmp_path / "out.h5", *option)
    assert code == 0, lines
    with h5py.File(tmp_path / "out.h5", "r") as handle:
        ids = list(handle["ids"].asstr()[()])
        for name, count in used.items():
            assert handle["lengths"][ids.index(name)] == count
            expected = _mean_embedding(absolute_model, records[name][:count])
            np.testing.assert_allclose(handle[f"mean/{FINAL_LAYER}"][ids.index(name)], expected, atol=2e-5)


def test_saved_model_length_limit_in_both_signatures(absolute_serving, absolute):
    strings = absolute_serving["serving_default"]
    strings(sequences=tf.constant(["MKV", _residues(60)]))  # 62 tokens: at the limit
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        strings(sequences=tf.constant(["MKV", _residues(61)]))
    assert f"at batch index] [1] [have] [63] [tokens with <cls>/<eos>; this model takes at most {LIMIT_TOKENS}]" in \
        error.value.message

    token_ids = absolute_serving["token_ids"]
    too_long = np.asarray([ids(_residues(61))], np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        token_ids(input_ids=tf.constant(too_long), attention_mask=tf.ones_like(too_long))
    assert f"have] [63] [tokens with <cls>/<eos>; this model takes at most {LIMIT_TOKENS}]" in error.value.message
    padded = np.ones((1, 70), np.int32)  # wider than the table, but only padding past position 10
    padded[0, :10] = ids(_residues(8))
    outputs = token_ids(input_ids=tf.constant(padded), attention_mask=tf.constant((padded != 1).astype(np.int32)))
    # ...and the padding changes nothing: the PyTorch reference on the 10 tokens alone (measured 1.9e-6 at most).
    alone = torch_outputs(absolute.model, padded[:, :10], output_hidden_states=True)
    hidden = alone.hidden_states[-1].numpy()[0]
    assert_close(outputs["residue_embeddings"][0, 1:9], hidden[1:9], 1e-5, "residue embeddings")
    assert_close(outputs["residue_embeddings"][0, 9:], np.zeros((61, hidden.shape[-1])), 0.0, "padding embeddings")
    assert_close(outputs["sequence_embedding"][0], hidden[1:9].mean(axis=0), 1e-5, "sequence embedding")
    assert_close(outputs["logits"][0, :10], alone.logits[0], 1e-5, "logits")
