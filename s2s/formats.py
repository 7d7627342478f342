"""Input formats by file name, and the one UTF-8 decoder; shared by prepare and translate.

Both stages read files whose format their name tells (``news.jsonl.gz``): one table of the
compressions a reader undoes, then one table per stage of what an extension means. Both decode
bytes that should be UTF-8 but may not be, and meet Python strings that are not Unicode text
(lone surrogates, valid as JSON escapes); :func:`decode_utf8` and :func:`check_unicode` handle
both, with the fallback each stage needs (:data:`DROP` or :data:`REPLACE`).
"""

from __future__ import annotations

import re
from typing import Literal

import pyarrow as pa

__all__ = [
    "COMPRESSIONS",
    "PAIR_FORMATS",
    "DOCUMENT_FORMATS",
    "DOCUMENT_DEFAULT",
    "Fallback",
    "DROP",
    "REPLACE",
    "compression",
    "split_name",
    "decode_utf8",
    "check_unicode",
    "text_as_bytes",
]

# Suffix -> pyarrow codec. Named explicitly rather than left to pyarrow's detection, which knows
# neither ``.zstd`` nor upper-case suffixes: whatever this table calls compressed is unpacked.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd", ".lz4": "lz4"}

# What an extension means differs by stage, on purpose, for ``.txt`` above all. A prepare input
# holds sentence *pairs*, so a ``.txt`` there is tab-separated, one pair per line (an aligned
# pair of plain files, the ``text`` pair format, is named by src_files/tgt_files, never by
# extension). A translate input holds *documents*, so a ``.txt`` there is one plain-text
# document, as is any file whose extension is not in DOCUMENT_FORMATS.
PAIR_FORMATS = {
    ".tsv": "tsv",
    ".txt": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
DOCUMENT_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
DOCUMENT_DEFAULT = "text"  # every other extension: one document per file

# What to do with text that is not valid UTF-8 (or not Unicode). Prepare DROPs the record and
# counts the reason: a training pair with mangled characters teaches nothing. Translate REPLACEs
# with U+FFFD and warns: the document still gets its row and a translation.
Fallback = Literal["drop", "replace"]
DROP: Fallback = "drop"
REPLACE: Fallback = "replace"

_SURROGATE = re.compile("[\ud800-\udfff]")


def compression(name: str) -> str | None:
    """The pyarrow codec that unpacks ``name`` (by its suffix, any case), or None if plain."""
    lower = name.lower()
    return next((codec for s, codec in COMPRESSIONS.items() if lower.endswith(s)), None)


def split_name(name: str) -> tuple[str, str]:
    """("dir/report", ".jsonl") for "dir/report.jsonl.gz": the name without its compression
    suffix and extension, and the extension in lower case ("" when there is none)."""
    lower = name.lower()
    base = next((name[: -len(s)] for s in COMPRESSIONS if lower.endswith(s)), name)
    stem, dot, ext = base.rpartition(".")
    if dot and "/" not in ext:
        return stem, "." + ext.lower()
    return base, ""


def decode_utf8(data: bytes, fallback: Fallback) -> tuple[str | None, str | None]:
    """Decode UTF-8 bytes, falling back as the caller's stage needs.

    Args:
        data: bytes that should be UTF-8.
        fallback: :data:`DROP` or :data:`REPLACE`, for bytes that are not UTF-8.

    Returns:
        (text, None) for valid UTF-8; otherwise with DROP, (None, "invalid_utf8"), the reason a
        record is dropped; with REPLACE, (the text with U+FFFD in place of the bad bytes, a
        warning that says where the first one was).
    """
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as err:
        if fallback == DROP:
            return None, "invalid_utf8"
        return data.decode("utf-8", errors="replace"), (
            f"invalid UTF-8 at byte {err.start} (and maybe more) replaced by U+FFFD"
        )


def check_unicode(text: str, fallback: Fallback) -> tuple[str | None, str | None]:
    """A string with lone surrogates (valid JSON escapes such as "\\ud800", but no Unicode text:
    no UTF-8 encoding exists, so Arrow cannot hold it) falls back as :func:`decode_utf8` does.

    Returns:
        (text, None) if it is Unicode text; otherwise with DROP, (None, "invalid_unicode"); with
        REPLACE, (U+FFFD in each surrogate's place, a warning with their count).
    """
    count = len(_SURROGATE.findall(text))
    if not count:
        return text, None
    if fallback == DROP:
        return None, "invalid_unicode"
    return _SURROGATE.sub("\ufffd", text), f"{count} unpaired surrogates replaced by U+FFFD"


def text_as_bytes(column: pa.Array | pa.ChunkedArray) -> list[bytes | None]:
    """The values of a string or binary column as bytes, without UTF-8 validation: a Parquet
    string column may still hold invalid UTF-8, which would fail a conversion to str of the whole
    column; the caller decodes value by value instead (:func:`decode_utf8`)."""
    large = pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type)
    return column.cast(pa.large_binary() if large else pa.binary()).to_pylist()
