"""Read raw parallel corpora of every supported format into one record schema.

A *read unit* is one input file (TSV, JSONL, Parquet) or one aligned pair of plain-text files.
:func:`read_unit` streams it as Arrow tables of at most ``block_rows`` records with the columns of
:data:`RECORD_SCHEMA`. Every input line (or Parquet row) becomes exactly one record: a line that
cannot be parsed keeps ``src``/``tgt`` null and carries a ``reason`` instead of raising, so the
prepare job can count it and say where it was.
"""

from __future__ import annotations

import io
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

__all__ = ["RECORD_SCHEMA", "ReadUnit", "detect_format", "read_unit", "check_parquet_columns"]

logger = logging.getLogger(__name__)

RECORD_SCHEMA = pa.schema(
    [
        ("src", pa.string()),
        ("tgt", pa.string()),
        ("input_id", pa.int32()),  # index into the job's list of read units
        ("line", pa.int64()),  # 1-based line (or Parquet row) number inside the input
        ("reason", pa.string()),  # why the record is dropped; null while it is kept
    ]
)

_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".zstd", ".lz4")
_FORMATS_BY_SUFFIX = {
    ".tsv": "tsv",
    ".txt": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


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
    """Format of an input from its extension (compression suffixes ignored).

    Raises:
        ConfigError: when the extension says nothing; the message suggests ``input_format``.
    """
    name = uri.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    for suffix, fmt in _FORMATS_BY_SUFFIX.items():
        if name.endswith(suffix):
            return fmt
    raise ConfigError(
        f"cannot tell the format of {uri} from its name; set input_format=tsv|jsonl|parquet"
    )


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
        block_rows: records per yielded table.

    Yields:
        Tables of at most ``block_rows`` records, in input order. If the file breaks off
        mid-way (corrupt archive, lost connection), a last ``read_error`` record marks where.
    """
    if unit.fmt == "parquet":
        rows = _parquet_rows(unit.uris[0], src_column, tgt_column, block_rows)
    elif unit.fmt == "text":
        rows = _aligned_rows(unit.uris[0], unit.uris[1], max_line_bytes)
    elif unit.fmt in ("tsv", "jsonl"):
        parse = _parse_tsv if unit.fmt == "tsv" else _json_parser(src_column, tgt_column)
        rows = (
            (
                number,
                *(_decode_then(parse, raw) if raw is not None else (None, None, "line_too_long")),
            )
            for number, raw in _lines(unit.uris[0], max_line_bytes)
        )
    else:
        raise ConfigError(f"unknown input format {unit.fmt!r}")
    last_line = 0
    try:
        while True:
            chunk = list(itertools.islice(rows, block_rows))
            if not chunk:
                return
            last_line = chunk[-1][0]
            yield _to_table(chunk, unit.input_id)
    except (OSError, EOFError, ValueError) as err:
        logger.warning("%s: reading stopped after line %d: %s", unit.name, last_line, err)
        yield _to_table([(last_line + 1, None, None, "read_error")], unit.input_id)


def _to_table(chunk: list[tuple], input_id: int) -> pa.Table:
    lines, srcs, tgts, reasons = zip(*chunk)
    return pa.Table.from_arrays(
        [
            pa.array(srcs, pa.string()),
            pa.array(tgts, pa.string()),
            pa.array(np.full(len(chunk), input_id, np.int32)),
            pa.array(lines, pa.int64()),
            pa.array(reasons, pa.string()),
        ],
        schema=RECORD_SCHEMA,
    )


def _lines(uri: str, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Yield ``(line_number, bytes)``, or ``(line_number, None)`` for a line over the limit.

    Reading is bounded: an over-long line is skipped in chunks, never held whole in memory.
    """
    with storage.open_input(uri) as stream:
        reader = io.BufferedReader(stream, buffer_size=1 << 20)
        number = 0
        while True:
            raw = reader.readline(max_line_bytes + 2)
            if not raw:
                return
            number += 1
            if len(raw) > max_line_bytes + 1 or (len(raw) > max_line_bytes and raw[-1:] != b"\n"):
                while raw and raw[-1:] != b"\n":  # skip the rest of the line
                    raw = reader.readline(1 << 20)
                yield number, None
                continue
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark is no content
            yield number, raw.rstrip(b"\r\n")


def _decode_then(parse, raw: bytes) -> tuple[str | None, str | None, str | None]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, None, "invalid_utf8"
    return parse(text)


def _parse_tsv(text: str) -> tuple[str | None, str | None, str | None]:
    fields = text.split("\t")
    if len(fields) == 2:
        return fields[0], fields[1], None
    return None, None, ("missing_tab" if len(fields) == 1 else "extra_tabs")


def _json_parser(src_key: str, tgt_key: str):
    def parse(text: str) -> tuple[str | None, str | None, str | None]:
        try:
            obj = json.loads(text)
        except ValueError:
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

    return parse


def _aligned_rows(src_uri: str, tgt_uri: str, max_line_bytes: int) -> Iterator[tuple]:
    pairs = itertools.zip_longest(_lines(src_uri, max_line_bytes), _lines(tgt_uri, max_line_bytes))
    for src_item, tgt_item in pairs:
        if src_item is None or tgt_item is None:  # one file has more lines than the other
            yield (src_item or tgt_item)[0], None, None, "unaligned"
            continue
        number, src_raw = src_item
        tgt_raw = tgt_item[1]
        if src_raw is None or tgt_raw is None:
            yield number, None, None, "line_too_long"
            continue
        try:
            yield number, src_raw.decode("utf-8"), tgt_raw.decode("utf-8"), None
        except UnicodeDecodeError:
            yield number, None, None, "invalid_utf8"


def _parquet_rows(uri: str, src_column: str, tgt_column: str, block_rows: int) -> Iterator[tuple]:
    fs, path = storage.filesystem(uri)
    number = 0
    with fs.open_input_file(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(block_rows, columns=[src_column, tgt_column]):
            for src, tgt in zip(*(batch.column(i).to_pylist() for i in range(2))):
                number += 1
                if src is None or tgt is None:
                    yield number, None, None, "null_value"
                elif isinstance(src, bytes) or isinstance(tgt, bytes):
                    try:
                        yield number, _as_text(src), _as_text(tgt), None
                    except UnicodeDecodeError:
                        yield number, None, None, "invalid_utf8"
                else:
                    yield number, src, tgt, None


def _as_text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
