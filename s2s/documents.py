"""Document sets in, translation files out: which output each input gets, how an input is cut
into pieces, reading one piece's documents, and writing results.

Contract (shared/DESIGN.md): one output file per input file, named after it, one row per input
document in input order, with the input's id column, ``translation``, ``n_segments``, ``error``
(null when fine), ``model``, plus ``warning``, ``placeholders_lost`` (sentences whose
translation does not keep their source's placeholders: 0 when all are kept) and optionally
``source``.

A *piece* is a byte range of a JSONL file (whole lines: a line belongs to the piece it starts
in), a run of Parquet row groups, or a whole text file (or a whole small Parquet file). Pieces are
the unit of work and retry: each piece's results go to their own file under ``<output>/_work/``
and the input's output file is written from them, in one atomic write, once all of its pieces are
there (:func:`finish_input`, which then deletes them).

Planning needs no request per file where the listing's sizes suffice: JSONL and text files are cut
by size alone, and a Parquet file of at most one piece is one piece; only a larger Parquet file's
footer is read, for its row groups.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from s2s import storage
from s2s.config import ConfigError
from s2s.formats import (
    DOCUMENT_DEFAULT,
    DOCUMENT_FORMATS,
    REPLACE,
    check_unicode,
    compression,
    decode_utf8,
    split_name,
    text_as_bytes,
)

__all__ = [
    "InputFile",
    "Piece",
    "Documents",
    "plan_outputs",
    "plan_pieces",
    "read_piece",
    "result_table",
    "write_output",
    "write_work",
    "finish_input",
    "count_documents",
    "count_output_rows",
]

_EXTENSION = {"jsonl": ".jsonl", "parquet": ".parquet", "text": ".txt"}  # of an output file
WORK_DIR = "_work"


@dataclass(slots=True)  # slots: a plan may hold one per file of a 100,000-file inbox
class InputFile:
    """One input file of documents and the output file it gets. Crosses to actors and finishing
    tasks as a plain tuple (``dataclasses.astuple``), so every field is a plain value."""

    uri: str
    size: int
    mtime_ns: int | None
    format: str  # jsonl | parquet | text
    name: str  # path relative to the input root, for messages
    output: str  # the output file's URI


@dataclass(slots=True)
class Piece:
    """A unit of work and retry: part of one input, whose results go to one file, ``work``."""

    input: int  # index into the plan's inputs
    start: int  # JSONL: byte offset; Parquet: first row group; text: 0
    # JSONL: byte offset (exclusive); Parquet: row group (exclusive); 0 = the whole file
    end: int
    work: str  # URI of this piece's result file


@dataclass
class Documents:
    """The documents of one piece, in input order; ``error`` is set where a row is unreadable.
    Ids keep their type (a string or an integer; see :func:`_document_id`)."""

    ids: list[str | int | None]
    texts: list[object]
    errors: list[str | None]
    warnings: list[str | None]
    blank_lines: int = 0


def detect_format(name: str) -> str:
    """Format of a document input from its extension (see :data:`s2s.formats.DOCUMENT_FORMATS`):
    ``jsonl``, ``parquet``, or ``text`` (one document) for every other extension."""
    return DOCUMENT_FORMATS.get(split_name(name)[1], DOCUMENT_DEFAULT)


def plan_outputs(
    files: list[storage.FileRef], input_uri: str, output: str, input_format: str, out_format: str
) -> list[InputFile]:
    """Name the output of every input file: its path under the input root, new extension.

    Raises:
        ConfigError: if output and input overlap, two inputs would share an output name, or
            ``text`` output is asked of inputs that hold more than one document per file.
    """
    out_root, in_root = output.rstrip("/") + "/", input_uri.rstrip("/") + "/"
    if out_root.startswith(in_root) or in_root.startswith(out_root):
        raise ConfigError(f"output {output} and input {input_uri} overlap; keep them apart")
    plan, seen = [], {}
    for ref in files:
        root = input_uri.rstrip("/") + "/"
        name = ref.uri[len(root) :] if ref.uri.startswith(root) else ref.uri.rsplit("/", 1)[-1]
        fmt = input_format if input_format != "auto" else detect_format(name)
        if out_format == "text" and fmt != "text":
            raise ConfigError(
                f"{ref.uri}: --format text needs text inputs (one document per file); use "
                "jsonl or parquet for a file of many documents"
            )
        out_name = split_name(name)[0] + _EXTENSION[out_format]
        if out_name in seen:
            raise ConfigError(f"{seen[out_name]} and {ref.uri} would both write {out_name}")
        seen[out_name] = ref.uri
        plan.append(
            InputFile(ref.uri, ref.size, ref.mtime_ns, fmt, name, storage.join(output, out_name))
        )
    return plan


def plan_pieces(
    index: int, source: InputFile, output: str, settings: str, piece_bytes: int
) -> list[Piece]:
    """Cut one input into pieces of about ``piece_bytes``.

    The work directory is keyed by the input's size and time and by ``settings`` (model id and
    decoding settings), so a rerun reuses finished pieces only when nothing changed. The same
    arguments give the same pieces, so whoever finishes the input can plan them again.

    Raises:
        StorageError: a Parquet file larger than ``piece_bytes`` whose footer cannot be read.
    """
    key = hashlib.sha256(
        json.dumps([source.uri, source.size, source.mtime_ns, settings]).encode()
    ).hexdigest()[:16]
    # Flat: one file per piece, no directory per input (deleting one on S3 costs a listing and
    # leaves a directory marker behind).
    work = storage.join(output, WORK_DIR, f"{source.output.rsplit('/', 1)[-1]}.{key}")
    if source.format == "parquet" and source.size > piece_bytes:
        meta = _parquet_file(source.uri).metadata
        ranges, start, size = [], 0, 0
        for group in range(meta.num_row_groups):
            size += meta.row_group(group).total_byte_size
            if size >= piece_bytes:
                ranges.append((start, group + 1))
                start, size = group + 1, 0
        if start < meta.num_row_groups or not ranges:
            ranges.append((start, meta.num_row_groups))
    elif source.format == "jsonl" and not compression(source.name):
        edges = list(range(0, source.size, piece_bytes)) + [source.size]
        ranges = list(zip(edges[:-1], edges[1:])) or [(0, 0)]
    else:  # a text document, a compressed file or a small Parquet file: read whole
        ranges = [(0, 0)]
    return [
        Piece(index, start, end, f"{work}.{start:012d}-{end:012d}.parquet") for start, end in ranges
    ]


def _parquet_file(uri: str) -> pq.ParquetFile:
    fs, path = storage.filesystem(uri)
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except (OSError, pa.ArrowException) as err:
        raise storage.StorageError(f"{uri}: unreadable: {storage.describe_error(err)}") from None


def read_piece(source: InputFile, piece: Piece, id_column: str, text_column: str) -> Documents:
    """The documents of one piece.

    Raises:
        StorageError: if the file cannot be read at all (the whole piece fails; nothing of it
            is written, and the input's output file is not either).
    """
    try:
        if source.format == "parquet":
            return _read_parquet(source, piece, id_column, text_column)
        if source.format == "jsonl":
            return _read_jsonl(source, piece, id_column, text_column)
        text, warning = decode_utf8(_read_all(source.uri), REPLACE)
        return Documents([source.name], [text], [None], [warning])
    except (OSError, pa.ArrowException, UnicodeDecodeError, EOFError) as err:
        if isinstance(err, storage.StorageError):
            raise
        raise storage.StorageError(
            f"{source.uri}: unreadable: {storage.describe_error(err)}"
        ) from None


def _read_all(uri: str) -> bytes:
    """A whole file, unpacked if its name says it is compressed."""
    with storage.open_input(uri, compression(uri)) as stream:
        return stream.read()


def _jsonl_lines(source: InputFile, piece: Piece) -> list[bytes]:
    """The lines that start in [piece.start, piece.end), newline-free."""
    if piece.end == 0:  # whole (compressed) file
        return _read_all(source.uri).split(b"\n")
    fs, path = storage.filesystem(source.uri)
    with fs.open_input_file(path) as f:
        begin = piece.start
        if begin > 0:
            # The line running through `start` (if any) belongs to the piece where it began.
            f.seek(begin - 1)
            skipped = 0
            while True:
                chunk = f.read(1 << 16)
                cut = chunk.find(b"\n")
                if cut >= 0 or not chunk:
                    begin = begin - 1 + skipped + (cut + 1 if cut >= 0 else len(chunk))
                    break
                skipped += len(chunk)
        if begin >= piece.end:
            return []
        f.seek(begin)
        data = f.read(piece.end - begin)
        while data and not data.endswith(b"\n"):  # finish the last line
            chunk = f.read(1 << 16)
            if not chunk:
                break
            cut = chunk.find(b"\n")
            data += chunk if cut < 0 else chunk[: cut + 1]
            if cut >= 0:
                break
    lines = data.split(b"\n")
    return lines[:-1] if lines and lines[-1] == b"" else lines


def _read_jsonl(source: InputFile, piece: Piece, id_column: str, text_column: str) -> Documents:
    docs = Documents([], [], [], [])
    where = source.name if piece.start == 0 else f"{source.name} (piece at byte {piece.start})"
    for number, raw in enumerate(_jsonl_lines(source, piece), start=1):
        if not raw.strip():
            docs.blank_lines += 1
            continue
        line, warning = decode_utf8(raw, REPLACE)
        doc_id, text, error = None, None, None
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            error = f"{where}:{number}: invalid JSON ({err.msg} at column {err.colno})"
        except RecursionError:
            error = f"{where}:{number}: invalid JSON (nested deeper than this reader goes)"
        else:
            if not isinstance(row, dict):
                error = f"{where}:{number}: a JSON {type(row).__name__}, not an object"
            else:
                doc_id, id_error = _document_id(row.get(id_column), id_column)
                text = row.get(text_column)
                if text_column not in row:
                    error = f"{where}:{number}: no {text_column!r} field"
                error = f"{where}:{number}: {id_error}" if id_error else error
        text, scrubbed = _scrub(text)
        warnings = [w for w in (warning, scrubbed) if w]
        docs.ids.append(doc_id)
        docs.texts.append(text)
        docs.errors.append(error)
        docs.warnings.append("; ".join(warnings) or None)
    return docs


def _document_id(value: object, id_column: str) -> tuple[str | int | None, str | None]:
    """(id, why it is refused): a string or an integer keeps its JSON type in the output (an
    integer id stays a number); anything else would change meaning as a string, so its row gets
    an error instead. A string that is not Unicode text is scrubbed (see :func:`_scrub`)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value, None
    if isinstance(value, str):
        return _scrub(value)[0], None
    names = {bool: "boolean", float: "number with a fraction", dict: "object", list: "list"}
    kind = names.get(type(value), type(value).__name__)
    return None, f"{id_column!r} is a {kind}; ids must be strings or integers"


def _scrub(text: object) -> tuple[object, str | None]:
    """A string with lone surrogates (valid JSON escapes such as "\\ud800", but not Unicode text:
    no UTF-8 encoding exists) gets U+FFFD in their place, with a warning, as invalid UTF-8 does;
    anything else (a number, None) is returned as it is."""
    return check_unicode(text, REPLACE) if isinstance(text, str) else (text, None)


def _read_parquet(source: InputFile, piece: Piece, id_column: str, text_column: str) -> Documents:
    parquet = _parquet_file(source.uri)
    names = parquet.schema_arrow.names
    groups = list(range(piece.start, piece.end or parquet.metadata.num_row_groups))
    table = parquet.read_row_groups(
        groups, columns=[c for c in (id_column, text_column) if c in names]
    )
    rows = table.num_rows
    ids = _parquet_ids(table.column(id_column)) if id_column in names else [None] * rows
    texts, errors, warnings = [None] * rows, [None] * rows, [None] * rows
    if text_column not in names:
        errors = [f"{source.name}: no column {text_column!r} (has: {', '.join(names)})"] * rows
        return Documents(ids, texts, errors, warnings)
    column = table.column(text_column)
    # Strings as bytes, decoded value by value: invalid UTF-8 costs one value a warning.
    is_text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    for i, value in enumerate(text_as_bytes(column) if is_text else column.to_pylist()):
        if isinstance(value, bytes):
            value, warnings[i] = decode_utf8(value, REPLACE)
        texts[i] = value
    return Documents(ids, texts, errors, warnings)


def _parquet_ids(column: pa.ChunkedArray) -> list[str | int | None]:
    """Integer ids stay integers; every other type is written as a string."""
    if pa.types.is_integer(column.type):
        return column.to_pylist()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return [None if v is None else decode_utf8(v, REPLACE)[0] for v in text_as_bytes(column)]
    return [None if v is None else str(v) for v in column.to_pylist()]


def result_table(id_column: str, columns: dict[str, list], keep_source: bool) -> pa.Table:
    """The output schema: texts as strings, n_segments int32, ids as integers when every id is
    one (or null), else as strings (see :func:`id_type`)."""
    ids_as = id_type(columns[id_column])
    if ids_as == pa.string():  # a piece mixing integer and string ids: all strings
        columns = {**columns, id_column: [i if i is None else str(i) for i in columns[id_column]]}
    fields = [
        (id_column, ids_as),
        ("translation", pa.string()),
        ("n_segments", pa.int32()),
        ("error", pa.string()),
        ("warning", pa.string()),
        ("placeholders_lost", pa.int32()),
        ("model", pa.string()),
    ] + ([("source", pa.string())] if keep_source else [])
    return pa.table({name: pa.array(columns[name], type) for name, type in fields})


def id_type(ids: list) -> pa.DataType:
    return pa.int64() if all(i is None or isinstance(i, int) for i in ids) else pa.string()


def _join_pieces(tables: list[pa.Table]) -> pa.Table:
    """The pieces of one input, in order. Pieces whose ids were all integers next to pieces with
    string ids: every id becomes a string (a column has one type)."""
    if len({t.schema for t in tables}) > 1:
        tables = [t.set_column(0, t.field(0).name, t.column(0).cast(pa.string())) for t in tables]
    return pa.concat_tables(tables)


def flag_duplicate_ids(table: pa.Table) -> pa.Table:
    """Add a warning to every row whose id an earlier row of the same output already has."""
    seen: dict[object, int] = {}
    warnings = table.column("warning").to_pylist()
    flagged = False
    for row, doc_id in enumerate(table.column(0).to_pylist()):
        if doc_id is None:
            continue
        first = seen.setdefault(doc_id, row)
        if first != row:
            note = f"duplicate id: row {first + 1} has the same id"
            warnings[row] = f"{warnings[row]}; {note}" if warnings[row] else note
            flagged = True
    if not flagged:
        return table
    index = table.schema.get_field_index("warning")
    return table.set_column(index, "warning", pa.array(warnings, pa.string()))


def write_output(table: pa.Table, uri: str, out_format: str) -> None:
    """Write an input's results in one atomic write."""
    if out_format == "parquet":
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        data = buffer.getvalue()
    elif out_format == "text":
        data = "".join(t or "" for t in table.column("translation").to_pylist()).encode()
    else:
        data = "".join(
            json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist()
        ).encode()
    storage.write_bytes(uri, data)


def write_work(table: pa.Table, uri: str) -> None:
    """Write one piece's results (Parquet; atomic)."""
    write_output(table, uri, "parquet")


def _read_work(uri: str) -> pa.Table:
    """One piece's results.

    Raises:
        FileNotFoundError: the piece file is not there.
        StorageError: it is there but cannot be read.
    """
    fs, path = storage.filesystem(uri)
    try:
        with fs.open_input_stream(path) as stream:  # HEAD, GET; a Parquet reader adds a GET
            return pq.read_table(pa.BufferReader(stream.read()))
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as err:
        raise storage.StorageError(f"{uri}: unreadable: {storage.describe_error(err)}") from None


def _remove_work(pieces: list[Piece]) -> None:
    """Delete an input's piece files (by name: no listing); a missing one is fine."""
    for piece in pieces:
        storage.delete(piece.work)


def finish_input(source: InputFile, pieces: list[Piece], out_format: str) -> int:
    """Write an input's output file from its pieces' results in one atomic write, check its row
    count against the documents in the input (counted again, independently of the pieces), and
    delete the pieces.

    Safe to repeat: pieces are deleted only once the output is written and checked, so a piece
    that is gone means an earlier attempt got that far (a retry after its node was lost); then
    the output is checked again instead.

    Returns:
        The rows written (= the input's documents).

    Raises:
        StorageError: the input changed under the run (its pieces are dropped: the next run
            translates it again), or a file cannot be read or written.
    """
    try:
        table = flag_duplicate_ids(_join_pieces([_read_work(p.work) for p in pieces]))
    except FileNotFoundError:
        table = None
    expected = count_documents(source)
    if table is not None and table.num_rows != expected:
        _remove_work(pieces)
        raise storage.StorageError(
            f"{source.uri}: {table.num_rows} documents translated, {expected} in the file now"
        )
    if table is not None:
        write_output(table, source.output, out_format)
    written = count_output_rows(source.output, out_format)
    if written != expected:
        raise storage.StorageError(
            f"{source.output}: wrote {written} rows for {expected} documents"
        )
    _remove_work(pieces)
    return written


def count_documents(source: InputFile) -> int:
    """Documents in an input file, counted independently of the pieces (the run's final check)."""
    if source.format == "parquet":
        return _parquet_file(source.uri).metadata.num_rows
    if source.format == "text":
        return 1
    return sum(1 for line in _read_all(source.uri).split(b"\n") if line.strip())


def count_output_rows(uri: str, out_format: str) -> int:
    """Rows in a finished output file (text outputs hold one document)."""
    if out_format == "parquet":
        return _parquet_file(uri).metadata.num_rows
    if out_format == "text":
        return 1
    return storage.read_bytes(uri).count(b"\n")
