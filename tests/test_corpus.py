import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s2s import documents, formats, storage
from s2s.config import ConfigError
from s2s.corpus import ReadUnit, check_parquet_columns, detect_format, read_unit


def records(unit: ReadUnit, **kwargs) -> list[dict]:
    return pa.concat_tables(read_unit(unit, **kwargs)).to_pylist()


def test_tsv_every_line_accounted(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(
        b"\xef\xbb\xbfHello\tHallo\n"  # BOM is not content
        b"no tab here\n"
        b"one\ttwo\tthree\n"
        b"bad \xff utf8\tx\n"
        b"\n"
        b"Windows\tline\r\n"
        + b"x" * 200 + b"\ty\n"
        b"last\tline without newline"
    )  # fmt: skip
    rows = records(ReadUnit(7, (str(path),), "tsv"), max_line_bytes=100, block_rows=3)
    assert [(r["line"], r["reason"]) for r in rows] == [
        (1, None),
        (2, "missing_tab"),
        (3, "extra_tabs"),
        (4, "invalid_utf8"),
        (5, "missing_tab"),
        (6, None),
        (7, "line_too_long"),
        (8, None),
    ]
    assert (rows[0]["src"], rows[0]["tgt"]) == ("Hello", "Hallo")
    assert rows[5]["tgt"] == "line"
    assert rows[7]["tgt"] == "line without newline"
    assert {r["input_id"] for r in rows} == {7}


def test_gzip_and_block_size(tmp_path):
    path = tmp_path / "c.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(f"s{i}\tt{i}\n" for i in range(1000))
    tables = list(read_unit(ReadUnit(0, (str(path),), detect_format(str(path))), block_rows=300))
    assert [len(t) for t in tables] == [300, 300, 300, 100]
    rows = pa.concat_tables(tables).to_pylist()
    assert [r["src"] for r in rows] == [f"s{i}" for i in range(1000)]
    assert [r["line"] for r in rows] == list(range(1, 1001))


def test_jsonl_keys_and_errors(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [
        json.dumps({"en": "Hello", "de": "Hallo", "extra": 1}),
        "{not json",
        json.dumps(["a", "b"]),
        json.dumps({"en": "only source"}),
        json.dumps({"en": None, "de": "x"}),
        json.dumps({"en": 5, "de": "fünf"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    rows = records(ReadUnit(0, (str(path),), "jsonl"), src_column="en", tgt_column="de")
    assert [r["reason"] for r in rows] == [
        None,
        "invalid_json",
        "invalid_json",
        "missing_key",
        "null_value",
        "not_a_string",
    ]
    assert rows[0]["src"] == "Hello" and rows[0]["tgt"] == "Hallo"


def test_parquet_columns_and_nulls(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(
        pa.table({"en": ["a b", None, "c"], "de": ["x y", "z", None], "id": [1, 2, 3]}), path
    )
    check_parquet_columns(str(path), "en", "de")
    rows = records(ReadUnit(0, (str(path),), "parquet"), src_column="en", tgt_column="de")
    assert [(r["line"], r["reason"]) for r in rows] == [
        (1, None),
        (2, "null_value"),
        (3, "null_value"),
    ]
    with pytest.raises(ConfigError, match="no column 'src' \\(has: en, de, id\\)"):
        check_parquet_columns(str(path), "src", "de")
    with pytest.raises(ConfigError, match="column 'id' holds int64"):
        check_parquet_columns(str(path), "en", "id")


def test_aligned_text_files(tmp_path):
    (tmp_path / "train.en").write_text("one\ntwo\nthree\nfour\n")
    (tmp_path / "train.de").write_bytes(b"eins\nzwei\n\xff\n")
    unit = ReadUnit(0, (str(tmp_path / "train.en"), str(tmp_path / "train.de")), "text")
    rows = records(unit)
    assert [(r["line"], r["src"], r["tgt"], r["reason"]) for r in rows] == [
        (1, "one", "eins", None),
        (2, "two", "zwei", None),
        (3, None, None, "invalid_utf8"),
        (4, None, None, "unaligned"),
    ]


def test_truncated_gzip_is_a_counted_read_error(tmp_path):
    path = tmp_path / "broken.tsv.gz"
    data = gzip.compress(b"".join(b"s%d\tt%d\n" % (i, i) for i in range(20000)))
    path.write_bytes(data[: len(data) // 2])
    rows = records(ReadUnit(0, (str(path),), "tsv"), block_rows=1000)
    assert rows[-1]["reason"] == "read_error"
    assert all(r["reason"] is None for r in rows[:-1])
    assert [r["line"] for r in rows] == list(range(1, len(rows) + 1))


def test_detect_format():
    assert detect_format("s3://b/x/train.TSV.gz") == "tsv"
    assert detect_format("a.jsonl.zst") == "jsonl"
    assert detect_format("a.parquet") == "parquet"
    with pytest.raises(ConfigError, match="set input_format"):
        detect_format("corpus.bin")


def test_txt_means_pairs_to_prepare_and_a_document_to_translate():
    assert detect_format("a.txt") == "tsv"  # prepare: one tab-separated pair per line
    assert documents.detect_format("a.txt") == "text"  # translate: one document per file
    assert documents.detect_format("notes.md") == "text"
    shared = set(formats.PAIR_FORMATS) & set(formats.DOCUMENT_FORMATS)
    assert shared == {".jsonl", ".json", ".ndjson", ".parquet"}
    assert all(formats.PAIR_FORMATS[s] == formats.DOCUMENT_FORMATS[s] for s in shared)


@pytest.mark.parametrize("suffix", [".gz", ".GZ", ".zst", ".zstd", ".lz4", ".bz2"])
def test_every_compression_in_the_table_is_unpacked(tmp_path, suffix):
    """Whatever the shared table calls compressed is unpacked by both stages' readers, in any
    case: pyarrow's own detection knows neither .zstd nor upper-case suffixes."""
    path = tmp_path / f"pairs.tsv{suffix}"
    with pa.CompressedOutputStream(str(path), formats.compression(path.name)) as out:
        out.write(b"Hello\tHallo\nQuit\tBeenden\n")
    assert detect_format(str(path)) == "tsv"
    assert [r["tgt"] for r in records(ReadUnit(0, (str(path),), "tsv"))] == ["Hallo", "Beenden"]
    doc = tmp_path / "docs" / f"report.md{suffix}"
    doc.parent.mkdir()
    doc.write_bytes(path.read_bytes())
    ref = storage.FileRef(str(doc), doc.stat().st_size, None)
    (source,) = documents.plan_outputs(
        [ref], str(doc.parent), str(tmp_path / "out"), "auto", "jsonl"
    )
    assert source.output == str(tmp_path / "out" / "report.jsonl")
    piece = documents.Piece(0, 0, 0, "")
    assert documents.read_piece(source, piece, "id", "text").texts == [
        "Hello\tHallo\nQuit\tBeenden\n"
    ]


def test_one_decoder_with_the_fallback_each_stage_needs():
    assert formats.decode_utf8("Café".encode(), formats.DROP) == ("Café", None)
    assert formats.decode_utf8(b"Caf\xe9 ok", formats.DROP) == (None, "invalid_utf8")
    text, warning = formats.decode_utf8(b"Caf\xe9 ok", formats.REPLACE)
    assert text == "Caf\ufffd ok" and warning.startswith("invalid UTF-8 at byte 3")
    assert formats.check_unicode("a \ud800 b", formats.DROP) == (None, "invalid_unicode")
    assert formats.check_unicode("a \ud800 b", formats.REPLACE) == (
        "a \ufffd b",
        "1 unpaired surrogates replaced by U+FFFD",
    )
    assert formats.check_unicode("fine", formats.DROP) == ("fine", None)
