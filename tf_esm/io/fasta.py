"""FASTA reading and protein-sequence validation (pure Python, shared by the CLI, tf_esm.pipelines.data and the tests).

Policy for sequence characters (documented in README):
* ASCII letters are upper-cased (only ASCII: `"ß".upper()` would be "SS"); whitespace inside a record is removed;
* the 25 ESM residue letters (20 standard + X B U Z O) and the gap characters `-` `.` are kept;
* a trailing `*` (stop codon) is dropped; a `*` anywhere else, digits, and any other character are errors
  that name the record, the position (1-based, counting residues after whitespace removal) and the character;
* an empty record (nothing left after the steps above) is an error naming the record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

RESIDUES = "ACDEFGHIKLMNPQRSTVWYXBUZO"
GAPS = "-."
ALLOWED = frozenset(RESIDUES + GAPS)
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class FastaError(ValueError):
    """A malformed FASTA file or an invalid protein sequence (the message names the record and position)."""


@dataclass(frozen=True)
class FastaRecord:
    id: str
    description: str
    sequence: str


def clean_sequence(sequence, name="sequence"):
    """Apply the policy above; return the cleaned sequence or raise FastaError naming `name`."""
    if not isinstance(sequence, str):
        raise FastaError(f"{name}: expected a string, got {type(sequence).__name__}.")
    cleaned = "".join(sequence.split()).translate(_ASCII_UPPER)
    if cleaned.endswith("*"):
        cleaned = cleaned[:-1]
    if not cleaned:
        raise FastaError(f"{name}: the sequence is empty.")
    for position, char in enumerate(cleaned, start=1):
        if char not in ALLOWED:
            hint = " (a stop codon inside the sequence)" if char == "*" else ""
            raise FastaError(
                f"{name}: invalid character {char!r} at position {position}{hint}; allowed are the residue "
                f"letters {RESIDUES} and the gaps '-' '.'."
            )
    return cleaned


def parse_fasta(text, source="<string>", validate=True):
    """Parse FASTA text into a list of FastaRecord. Record ids are the first word of each header."""
    records = []
    header, chunks, header_line = None, [], 0
    seen = {}

    def finish():
        if header is None:
            return
        record_id = header.split()[0] if header.split() else ""
        if "\x00" in header:  # a binary file, or a damaged one (in a sequence, a NUL is named like any bad character)
            raise FastaError(f"{source}, line {header_line}: a NUL character in the header.")
        if not record_id:
            raise FastaError(f"{source}, line {header_line}: a header ('>') without a record id.")
        if record_id in seen:
            raise FastaError(
                f"{source}, line {header_line}: duplicate record id {record_id!r} (first at line {seen[record_id]})."
            )
        seen[record_id] = header_line
        raw = "".join(chunks)
        sequence = clean_sequence(raw, name=f"{source}, record {record_id!r}") if validate else raw
        records.append(FastaRecord(record_id, header, sequence))

    for line_number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(";"):
            continue
        if stripped.startswith(">"):
            finish()
            header, chunks, header_line = stripped[1:].strip(), [], line_number
        elif header is None:
            raise FastaError(f"{source}, line {line_number}: sequence data before the first '>' header.")
        else:
            chunks.append(stripped)
    finish()
    if not records:
        raise FastaError(f"{source}: no FASTA records found.")
    return records


# Compressed inputs are recognised by their first bytes, whatever the file is called.
_COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "lzma"))
STDIN = "-"


def read_input_bytes(path):
    """The bytes of `path`, or of standard input when `path` is "-", decompressed when they are gzip, bzip2 or xz
    data (told by their magic bytes, not the file name). Errors name the path."""
    path = os.fspath(path)
    try:
        if path == STDIN:
            import sys

            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as handle:
                data = handle.read()
    except OSError as error:
        raise FastaError(f"{_display(path)}: cannot read ({error.strerror}).") from None
    return decompress_input(data, _display(path))


def decompress_input(data, source):
    """`data` decompressed when it is gzip, bzip2 or xz data (told by its magic bytes), else as it is; errors name
    `source`."""
    import importlib

    for magic, module in _COMPRESSION_MAGIC:
        if data.startswith(magic):
            try:
                return importlib.import_module(module).decompress(data)
            except Exception as error:  # noqa: BLE001 - zlib.error, lzma.LZMAError, EOFError, OSError, ...
                raise FastaError(f"{source}: damaged or cut-short {module} data ({error}).") from None
    return data


def _display(path):
    return "<stdin>" if path == STDIN else path


def read_fasta(path, validate=True):
    """Read a FASTA file (plain, gzip, bzip2 or xz; "-" for standard input) into a list of FastaRecord; errors
    name the file, record and position."""
    path = os.fspath(path)
    return parse_fasta_bytes(read_input_bytes(path), _display(path), validate=validate, decompress=False)


def parse_fasta_bytes(data, source, validate=True, decompress=True):
    """`read_fasta` on a file's bytes already read (e.g. by Apache Beam's file reading): decompressed as
    `read_input_bytes` does, decoded as UTF-8 and parsed; errors name `source`."""
    if decompress:
        data = decompress_input(data, source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FastaError(f"{source}: not a text file (byte {error.start} is not UTF-8).") from None
    return parse_fasta(text, source=source, validate=validate)
