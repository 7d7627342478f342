"""Read raw parallel corpora of every supported format into one record schema.

A *read unit* is one input file (TSV, JSONL, Parquet) or one aligned pair of plain-text files.
:func:`read_unit` streams it as Arrow tables of at most ``block_rows`` records with the columns of
:data:`RECORD_SCHEMA`. Every input line (or Parquet row) becomes exactly one record: a line that
cannot be parsed keeps ``src``/``tgt`` null and carries a ``reason`` instead of raising, so the
prepare job can count it and say where it was.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s2s import storage
from s2s.config import ConfigError
from s2s.formats import (
    DROP,
    PAIR_FORMATS,
    check_unicode,
    compression,
    decode_utf8,
    split_name,
    text_as_bytes,  # lived here first; still importable from s2s.corpus
)

__all__ = [
    "RECORD_SCHEMA",
    "ReadUnit",
    "detect_format",
    "read_unit",
    "check_parquet_columns",
    "text_as_bytes",
]

log = logging.getLogger(__name__)

RECORD_SCHEMA = pa.schema(
    [
        ("src", pa.string()),
        ("tgt", pa.string()),
        ("input_id", pa.int32()),  # index into the job's list of read units
        ("line", pa.int64()),  # 1-based line (or Parquet row) number inside the input
        ("reason", pa.string()),  # why the record is dropped; null while it is kept
    ]
)


@dataclass(frozen=True)
class ReadUnit:
    """One input to read: a file, or an aligned (source file, target file) pair.

    Attributes:
        input_id: position in the job's list of units (records point back to it).
        uris: one URI, or two for the ``text`` format (source file, target file).
        fmt: ``tsv``, ``jsonl``, ``parquet`` or ``text``.
        role: ``train`` (split carved by hash), ``valid`` or ``test`` (explicit eval input).
    """

    input_id: int
    uris: tuple[str, ...]
    fmt: str
    role: str = "train"

    @property
    def name(self) -> str:
        return " + ".join(self.uris)


def detect_format(uri: str) -> str:
    """Format of a pair input from its extension (see :data:`s2s.formats.PAIR_FORMATS`; a
    compression suffix is ignored).

    Raises:
        ConfigError: when the extension says nothing; the message suggests ``input_format``.
    """
    fmt = PAIR_FORMATS.get(split_name(uri)[1])
    if fmt is None:
        raise ConfigError(
            f"cannot tell the format of {uri} from its name; set input_format=tsv|jsonl|parquet"
        )
    return fmt


def check_parquet_columns(uri: str, src_column: str, tgt_column: str) -> None:
    """Fail before any work if a Parquet input lacks a column or holds non-text in it.

    Raises:
        ConfigError: naming the file, the missing column and the columns it has.
    """
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        schema = pq.read_schema(f)
    for column in (src_column, tgt_column):
        if column not in schema.names:
            raise ConfigError(
                f"{uri}: no column {column!r} (has: {', '.join(schema.names)}); "
                "set src_column/tgt_column"
            )
        kind = schema.field(column).type
        if not (
            pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
        ):
            raise ConfigError(f"{uri}: column {column!r} holds {kind}, expected text")


def read_unit(
    unit: ReadUnit,
    src_column: str = "src",
    tgt_column: str = "tgt",
    max_line_bytes: int = 65536,
    block_rows: int = 32768,
) -> Iterator[pa.Table]:
    """Stream the records of one read unit as tables of :data:`RECORD_SCHEMA`.

    Args:
        unit: what to read.
        src_column, tgt_column: JSONL keys / Parquet columns of the two sides.
        max_line_bytes: longer lines are not decoded; they become ``line_too_long`` records.
        block_rows: records per yielded table (the last one may be shorter).

    Yields:
        Tables in input order whose ``line`` numbers run 1, 2, 3, ... If the file breaks off
        mid-way (corrupt archive, lost connection), a last ``read_error`` record marks where.
    """
    if unit.fmt == "parquet":
        parsed = _parquet_batches(unit.uris[0], src_column, tgt_column, block_rows)
    elif unit.fmt == "text":
        parsed = _aligned_batches(unit.uris[0], unit.uris[1], max_line_bytes, block_rows)
    elif unit.fmt == "tsv":
        parsed = map(_parse_tsv, _line_batches(unit.uris[0], max_line_bytes))
    elif unit.fmt == "jsonl":
        parse = _json_parser(src_column, tgt_column)
        parsed = (parse(lines) for lines in _line_batches(unit.uris[0], max_line_bytes))
    else:
        raise ConfigError(f"unknown input format {unit.fmt!r}")
    block = _Columns()
    try:
        for columns in parsed:
            block.extend(columns)
            while len(block) >= block_rows:
                yield block.pop_table(block_rows, unit.input_id)
    except (OSError, EOFError, ValueError) as err:
        log.warning("%s: reading stopped after line %d: %s", unit.name, block.lines, err)
        block.extend(([None], [None], ["read_error"]))
    while len(block):
        yield block.pop_table(block_rows, unit.input_id)


# One parsed batch: (sources, targets, reasons), equally long; a reason means "drop".
Parsed = tuple[list, list, list]


class _Columns:
    """Column buffers of records, cut into tables of a fixed number of rows."""

    def __init__(self) -> None:
        self.src: list = []
        self.tgt: list = []
        self.reason: list = []
        self.lines = 0  # line number of the last record popped

    def __len__(self) -> int:
        return len(self.src)

    def extend(self, columns: Parsed) -> None:
        self.src.extend(columns[0])
        self.tgt.extend(columns[1])
        self.reason.extend(columns[2])

    def pop_table(self, rows: int, input_id: int) -> pa.Table:
        src, self.src = self.src[:rows], self.src[rows:]
        tgt, self.tgt = self.tgt[:rows], self.tgt[rows:]
        reason, self.reason = self.reason[:rows], self.reason[rows:]
        first, self.lines = self.lines + 1, self.lines + len(src)
        try:
            src_array, tgt_array = pa.array(src, pa.string()), pa.array(tgt, pa.string())
        except UnicodeEncodeError:  # a JSON "\ud800" escape: a str that is not Unicode text
            src, tgt, reason = _drop_unencodable(src, tgt, reason)
            src_array, tgt_array = pa.array(src, pa.string()), pa.array(tgt, pa.string())
        return pa.Table.from_arrays(
            [
                src_array,
                tgt_array,
                pa.array(np.full(len(src), input_id, np.int32)),
                pa.array(np.arange(first, first + len(src), dtype=np.int64)),
                pa.array(reason, pa.string()),
            ],
            schema=RECORD_SCHEMA,
        )


def _drop_unencodable(src: list, tgt: list, reason: list) -> Parsed:
    """Records with a lone surrogate (valid JSON, not UTF-8) become ``invalid_unicode``."""
    src, tgt, reason = list(src), list(tgt), list(reason)
    for i, pair in enumerate(zip(src, tgt)):
        for text in pair:
            why = None if text is None else check_unicode(text, DROP)[1]
            if why:
                src[i], tgt[i], reason[i] = None, None, why
                break
    return src, tgt, reason


_TOO_LONG = None  # marks an over-long line in a batch of lines


def _line_batches(uri: str, max_line_bytes: int, chunk_bytes: int = 1 << 20) -> Iterator[list]:
    """Yield the lines of a file in batches, reading ``chunk_bytes`` at a time.

    Each line is a ``str``; a line longer than ``max_line_bytes`` is :data:`_TOO_LONG` (None) and
    is never held whole in memory; a line that is not valid UTF-8 stays ``bytes``.
    """
    with storage.open_input(uri, compression(uri)) as stream:
        carry, skipping, first = b"", False, True
        while True:
            chunk = stream.read(chunk_bytes)
            if first and chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]  # a UTF-8 byte-order mark is no content
            first = False
            if not chunk:
                if carry or skipping:
                    yield [_TOO_LONG if skipping else _decode_lines([carry])[0]]
                return
            pieces = (carry + chunk).split(b"\n")
            carry = pieces.pop()
            if skipping and pieces:  # the over-long line ends in this chunk
                pieces[0], skipping = b"", False
                lines = [_TOO_LONG, *_decode_lines(pieces[1:], max_line_bytes)]
            elif skipping:
                lines = []
            else:
                lines = _decode_lines(pieces, max_line_bytes)
            if len(carry) > max_line_bytes:
                carry, skipping = b"", True
            if lines:
                yield lines


def _decode_lines(pieces: list[bytes], max_line_bytes: int = 1 << 62) -> list:
    joined = b"\n".join(pieces)
    try:  # fast path: the whole batch is valid UTF-8
        lines = joined.decode("utf-8").split("\n") if pieces else []
    except UnicodeDecodeError:
        lines = [_decode_or_keep(piece) for piece in pieces]
    if b"\r" in joined:  # Windows line ends
        lines = [line.removesuffix("\r") if line.__class__ is str else line for line in lines]
    return [
        _TOO_LONG if len(piece) > max_line_bytes else line for piece, line in zip(pieces, lines)
    ]


def _decode_or_keep(piece: bytes) -> str | bytes:
    """The line as text, or its bytes when they are not UTF-8 (the parsers' ``invalid_utf8``)."""
    text, _ = decode_utf8(piece, DROP)
    return piece if text is None else text


def _parse_tsv(lines: list) -> Parsed:
    src, tgt, reason = [], [], []
    for line in lines:
        fields = line.split("\t") if line.__class__ is str else None
        if fields is not None and len(fields) == 2:
            src.append(fields[0])
            tgt.append(fields[1])
            reason.append(None)
            continue
        src.append(None)
        tgt.append(None)
        if fields is None:
            reason.append("line_too_long" if line is _TOO_LONG else "invalid_utf8")
        else:
            reason.append("missing_tab" if len(fields) == 1 else "extra_tabs")
    return src, tgt, reason


def _json_parser(src_key: str, tgt_key: str):
    def parse_line(line) -> tuple[str | None, str | None, str | None]:
        if line.__class__ is not str:
            return None, None, "line_too_long" if line is _TOO_LONG else "invalid_utf8"
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
            return None, None, "invalid_json"
        if not isinstance(obj, dict):
            return None, None, "invalid_json"
        if src_key not in obj or tgt_key not in obj:
            return None, None, "missing_key"
        src, tgt = obj[src_key], obj[tgt_key]
        if src is None or tgt is None:
            return None, None, "null_value"
        if not isinstance(src, str) or not isinstance(tgt, str):
            return None, None, "not_a_string"
        return src, tgt, None

    def parse(lines: list) -> Parsed:
        return tuple(map(list, zip(*map(parse_line, lines)))) if lines else ([], [], [])

    return parse


def _aligned_batches(src_uri: str, tgt_uri: str, max_line_bytes: int, block_rows: int):
    src_lines = itertools.chain.from_iterable(_line_batches(src_uri, max_line_bytes))
    tgt_lines = itertools.chain.from_iterable(_line_batches(tgt_uri, max_line_bytes))
    missing = object()  # one file has more lines than the other
    pairs = itertools.zip_longest(src_lines, tgt_lines, fillvalue=missing)
    while batch := list(itertools.islice(pairs, block_rows)):
        src, tgt, reason = [], [], []
        for s, t in batch:
            if s.__class__ is str and t.__class__ is str:
                src.append(s)
                tgt.append(t)
                reason.append(None)
                continue
            src.append(None)
            tgt.append(None)
            if s is missing or t is missing:
                reason.append("unaligned")
            elif s is _TOO_LONG or t is _TOO_LONG:
                reason.append("line_too_long")
            else:
                reason.append("invalid_utf8")
        yield src, tgt, reason


def _parquet_batches(uri: str, src_column: str, tgt_column: str, block_rows: int):
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(block_rows, columns=[src_column, tgt_column]):
            # As bytes, decoded value by value: a string column may still hold invalid UTF-8,
            # which would fail the whole batch's conversion.
            pairs = zip(text_as_bytes(batch.column(0)), text_as_bytes(batch.column(1)))
            yield tuple(map(list, zip(*map(_parquet_pair, pairs)))) or ([], [], [])


def _parquet_pair(values: tuple[bytes | None, bytes | None]) -> tuple[str | None, ...]:
    """(src, tgt, None) for a good pair, else (None, None, reason); invalid UTF-8 on either side
    outranks a null on the other."""
    decoded = [(None, None) if v is None else decode_utf8(v, DROP) for v in values]
    why = next((why for _, why in decoded if why), None)
    if why is None and None in values:
        why = "null_value"
    return (None, None, why) if why else (decoded[0][0], decoded[1][0], None)
