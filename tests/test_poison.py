"""Hostile input never stops a job and never vanishes: for every input line or document, exactly
one of "kept/translated" or "counted with a reason/error row", whatever the content.

The readers and per-batch functions are fuzzed (Hypothesis) with random bytes, random JSON, random
Unicode including lone surrogates (valid JSON escapes, not encodable as UTF-8) and nesting deeper
than Python's stack; then prepare and translate run end to end on Ray over files of generated
hostile records mixed with real text."""

from __future__ import annotations

import json
import math
import os
import random
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2s import storage
from s2s.cli import main
from s2s.config import ConfigError, PrepareConfig, TranslateConfig
from s2s.corpus import ReadUnit, read_unit
from s2s.documents import InputFile, Piece, read_piece, result_table
from s2s.evaluate import load_pairs
from s2s.filters import SplitPlan, clean_records, drop_records, tokenize_records
from s2s.poison import SYSTEMIC, isolate, isolate_rows
from s2s.prepare import prepare_corpus
from s2s.tokenizer import Tokenizer
from s2s.translate import translate
from s2s.translator import Translator

# CI replays the same examples every run (a red CI must be reproducible); elsewhere each run draws
# new ones. S2S_FUZZ_EXAMPLES=2000 fuzzes longer.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
FUZZ = settings(
    max_examples=int(os.environ.get("S2S_FUZZ_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
# Any code point, lone surrogates included (Hypothesis leaves them out by default).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)


def json_line(value: object, ascii_only: bool) -> bytes:
    # ensure_ascii=False with a lone surrogate: no UTF-8 exists; write it as a JSON escape then.
    try:
        return json.dumps(value, ensure_ascii=ascii_only).encode()
    except UnicodeEncodeError:
        return json.dumps(value).encode()


def hostile_lines(keys: tuple[str, str]) -> st.SearchStrategy[bytes]:
    """One line of a hostile JSONL/TSV file (newlines inside split it into several: fine)."""
    record = st.fixed_dictionaries({keys[0]: JSON_VALUES, keys[1]: JSON_VALUES})
    return st.one_of(
        st.binary(max_size=60),
        st.builds(json_line, JSON_VALUES, st.booleans()),
        st.builds(json_line, record, st.booleans()),
        st.builds(
            json_line, st.fixed_dictionaries({keys[0]: ANY_TEXT, keys[1]: ANY_TEXT}), st.booleans()
        ),  # fmt: skip
        st.integers(1, 20_000).map(lambda n: b"[" * n + b"]" * n),  # deeper than the stack
        st.tuples(ANY_TEXT, ANY_TEXT).map(
            lambda p: (
                f"{p[0]}\t{p[1]}".encode("utf-8", "surrogateescape")
                if all(not 0xD800 <= ord(c) <= 0xDFFF for c in p[0] + p[1])
                else b"\xed\xa0\x80\t"
            )  # a surrogate in UTF-8 bytes: invalid UTF-8
        ),
    )


def line_count(data: bytes) -> int:
    """Lines as prepare splits them: on b"\\n", a last line without one counts, a leading BOM
    is no content."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


# -- isolate: bisection finds exactly the records that fail


@FUZZ
@given(st.lists(st.booleans(), min_size=1, max_size=64))
def test_isolate_finds_exactly_the_failing_records(bad):
    calls = []

    def double(batch):
        calls.append(len(batch))
        if any(b for _, b in batch):
            raise ValueError("poison")
        return [2 * i for i, _ in batch]

    records = list(enumerate(bad))
    if all(bad) and len(bad) >= SYSTEMIC:  # every record fails alone: the code, not the data
        with pytest.raises(ValueError):
            isolate(double, records, lambda r, e: None)
        return
    out = isolate(double, records, lambda r, e: ("poison", r[0], str(e)))
    assert out == [("poison", i, "poison") if b else 2 * i for i, b in records]
    k = sum(bad)
    assert len(calls) <= 1 + 2 * k * (math.ceil(math.log2(len(bad))) + 1)


def test_isolate_raises_what_is_not_about_a_record():
    def disk_full(batch):
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        isolate(disk_full, [1, 2, 3], lambda r, e: None)


# -- prepare: readers, cleaning, tokenizing


@pytest.fixture(scope="module")
def tokenizer(toy_checkpoint) -> Tokenizer:
    return Tokenizer(storage.read_bytes(os.path.join(toy_checkpoint, "tokenizer.model")))


@FUZZ
@given(fmt=st.sampled_from(["jsonl", "tsv"]), lines=st.lists(hostile_lines(("src", "tgt")),
                                                             max_size=25))  # fmt: skip
def test_prepare_accounts_for_every_hostile_line(tmp_path, tokenizer, fmt, lines):
    data = b"\n".join(lines)
    path = tmp_path / f"hostile.{fmt}"
    path.write_bytes(data)
    tables = list(read_unit(ReadUnit(0, (str(path),), fmt), max_line_bytes=4096, block_rows=7))
    records = pa.concat_tables(tables) if tables else None
    n = line_count(data)
    if n == 0:
        assert records is None or records.num_rows == 0
        return
    assert records["line"].to_pylist() == list(range(1, n + 1))  # every line, once, in order
    reasons = records["reason"].to_pylist()
    for src, tgt, reason in zip(records["src"].to_pylist(), records["tgt"].to_pylist(), reasons):
        assert (reason is None) == (isinstance(src, str) and isinstance(tgt, str))
    # Cleaning and tokenizing, under isolation as prepare runs them: nothing raises, nothing lost.
    drop = lambda row, err: drop_records(row, "unprocessable")  # noqa: E731
    cleaned = isolate_rows(lambda t: clean_records(t, SplitPlan("s"), ["train"]), records, drop)
    tokenized = isolate_rows(lambda t: tokenize_records(t, tokenizer, 250, 4.0, 10), cleaned, drop)
    assert tokenized["line"].to_pylist() == list(range(1, n + 1))
    kept = pa.compute.is_null(tokenized["reason"]).to_pylist()
    assert all(not k or len(ids) > 0 for k, ids in zip(kept, tokenized["src_ids"].to_pylist()))


def test_parquet_with_invalid_utf8_in_a_string_column_loses_one_value_not_the_file(tmp_path):
    src = pa.array([b"Open", b"bad \xff", b"Quit"], pa.binary()).view(pa.string())
    table = pa.table({"src": src, "tgt": ["Offnen", "x", "Beenden"]})
    pq.write_table(table, tmp_path / "p.parquet")
    (records,) = read_unit(ReadUnit(0, (str(tmp_path / "p.parquet"),), "parquet"))
    assert records["reason"].to_pylist() == [None, "invalid_utf8", None]
    assert records["src"].to_pylist() == ["Open", None, "Quit"]


def test_prepare_end_to_end_on_hostile_records(ray_local, gettext_pairs, tmp_path):
    rng = random.Random(11)
    lines = [json.dumps({"src": s, "tgt": t}).encode() for s, t in gettext_pairs[:1500]]
    hostile = {
        "invalid_json": [b"[" * 30_000 + b"]" * 30_000, b"{broken", b"\x00" * 9],
        "invalid_unicode": [json.dumps({"src": "a \ud800 b", "tgt": "c"}).encode()],
        "invalid_utf8": [b'{"src": "caf\xe9", "tgt": "x"}'],
        "not_a_string": [b'{"src": 1, "tgt": [2]}'],
        "missing_key": [b'{"tgt": "only"}'],
    }
    planted = {reason: 0 for reason in hostile}
    for _ in range(120):
        reason = rng.choice(sorted(hostile))
        lines.insert(rng.randrange(len(lines)), rng.choice(hostile[reason]))
        planted[reason] += 1
    (tmp_path / "hostile.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    cfg = PrepareConfig(
        inputs=[str(tmp_path / "hostile.jsonl")], output=str(tmp_path / "out"), vocab_size=600,
        valid_size=50, test_size=50,
    )  # fmt: skip
    counts = prepare_corpus(cfg).manifest["counts"]

    assert counts["read"] == len(lines)  # no line, and no block, vanished
    assert sum(counts["kept"].values()) + sum(counts["dropped"].values()) == counts["read"]
    for reason, n in planted.items():
        assert counts["dropped"].get(reason, 0) == n, (reason, counts["dropped"])
    assert sum(counts["kept"].values()) > 1400  # the real pairs went on


# -- translate: reading documents, the engine, the output rows


@FUZZ
@given(lines=st.lists(hostile_lines(("id", "text")), max_size=25))
def test_translate_reader_gives_every_document_a_row(tmp_path, lines):
    data = b"\n".join(lines)
    path = tmp_path / "docs.jsonl"
    path.write_bytes(data)
    source = InputFile(str(path), len(data), None, "jsonl", "docs.jsonl", str(tmp_path / "o"))
    docs = read_piece(source, Piece(0, 0, len(data), ""), "id", "text")
    documents = sum(1 for line in data.split(b"\n") if line.strip())
    assert len(docs.ids) == len(docs.texts) == len(docs.errors) == documents
    for doc_id, text in zip(docs.ids, docs.texts):
        assert doc_id is None or isinstance(doc_id, (str, int)) and not isinstance(doc_id, bool)
        for value in (doc_id, text):
            if isinstance(value, str):
                value.encode("utf-8")  # scrubbed: every string can be written
    columns = {
        "id": docs.ids, "translation": [t if isinstance(t, str) else None for t in docs.texts],
        "n_segments": [1] * documents, "error": docs.errors, "warning": docs.warnings,
        "placeholders_lost": [0] * documents, "model": ["m"] * documents,
        "source": [None] * documents,
    }  # fmt: skip
    assert result_table("id", columns, keep_source=False).num_rows == documents


@pytest.fixture(scope="module")
def engine(toy_checkpoint) -> Translator:
    return Translator(TranslateConfig(checkpoint=toy_checkpoint, beam=1, max_input_tokens=12))


@settings(max_examples=25, deadline=None)
@given(texts=st.lists(ANY_TEXT | st.integers() | st.none(), min_size=1, max_size=6))
def test_the_engine_answers_every_document(engine, texts):
    results = engine.translate_documents(texts, max_chars=100)
    assert len(results) == len(texts)
    for text, result in zip(texts, results):
        assert (result.error is None) == isinstance(result.translation, str), result
        if not isinstance(text, str):
            assert result.error


def hostile_documents(rng: random.Random, count: int) -> tuple[bytes, int]:
    """A JSONL inbox file: real sentences with integer, string and duplicate ids, mixed with
    hostile lines; (bytes, documents)."""
    good = ["Open file.", "Quit", "Print the document.\n\nClose the window.", "Settings"]
    lines = []
    for n in range(count):
        kind = rng.randrange(9)
        text = rng.choice(good)
        lines.append(
            {
                0: json.dumps({"id": n, "text": text}),
                1: json.dumps({"id": f"s{n}", "text": text}),
                2: json.dumps({"id": "dup", "text": text}),
                3: json.dumps({"id": f"u{n}", "text": text + " \ud800 end"}),  # lone surrogate
                4: json.dumps({"id": [n], "text": text}),  # an id that is no id
                5: "[" * 50_000 + "]" * 50_000,
                6: json.dumps({"id": f"b{n}"})[:-1] + ', "text": "caf\xe9"}',  # latin-1 byte below
                7: json.dumps({"id": 1.5, "text": text}),
                8: json.dumps({"id": f"n{n}", "text": {"nested": text}}),
            }[kind]
        )
    data = "\n".join(lines).encode("utf-8", "surrogateescape").replace("é".encode(), b"\xe9")
    return data + b"\n", count


def test_translate_end_to_end_on_hostile_documents(ray_local, toy_checkpoint, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    data, documents = hostile_documents(random.Random(7), 120)
    (inbox / "mixed.jsonl").write_bytes(data)
    (inbox / "numbered.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": "Quit"}) + "\n" for i in (1, 2, 2))
    )
    pq.write_table(pa.table({"id": [1, 2], "body": ["Quit", "Open"]}), inbox / "no_text.parquet")
    bad = pa.array([b"Quit", b"caf\xe9", None], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"id": [7, 8, 9], "text": bad}), inbox / "latin1.parquet")
    cfg = TranslateConfig(
        checkpoint=toy_checkpoint, input=str(inbox), output=str(out), beam=1, max_input_tokens=12,
        piece_mb=0.002, concurrency="1", cpus_per_actor=1, torch_threads=1,
    )  # fmt: skip
    summary = translate(cfg).summary

    assert summary["inputs"]["failed_count"] == 0 and summary["inputs"]["translated"] == 4
    rows = [json.loads(line) for line in (out / "mixed.jsonl").read_text().splitlines()]
    assert len(rows) == documents  # every document exactly once, whatever it held
    for row in rows:
        assert (row["error"] is None) == isinstance(row["translation"], str), row
    # A file mixing integer and string ids: one column type, strings.
    ids = [r["id"] for r in rows]
    assert {type(i) for i in ids} <= {str, type(None)} and any(i and i.isdigit() for i in ids)
    numbered = [json.loads(x) for x in (out / "numbered.jsonl").read_text().splitlines()]
    assert [r["id"] for r in numbered] == [1, 2, 2]  # integer ids stay integers
    assert "duplicate id: row 2" in numbered[2]["warning"] and numbered[1]["warning"] is None
    dups = [r for r in rows if r["id"] == "dup"]
    assert all("duplicate id" in (r["warning"] or "") for r in dups[1:])
    assert dups and "duplicate id" not in (dups[0]["warning"] or "")
    refused = [r for r in rows if r["error"] and "ids must be strings or integers" in r["error"]]
    assert refused and all(r["id"] is None for r in refused)
    scrubbed = [r for r in rows if isinstance(r["id"], str) and r["id"].startswith("u")]
    assert scrubbed and all("unpaired surrogates" in r["warning"] for r in scrubbed)
    assert all(isinstance(r["translation"], str) for r in scrubbed)
    no_text = [json.loads(x) for x in (out / "no_text.jsonl").read_text().splitlines()]
    assert [r["id"] for r in no_text] == [1, 2]
    assert all("no column 'text'" in r["error"] for r in no_text)
    latin1 = [json.loads(x) for x in (out / "latin1.jsonl").read_text().splitlines()]
    assert [r["id"] for r in latin1] == [7, 8, 9]
    assert "invalid UTF-8" in latin1[1]["warning"] and latin1[1]["error"] is None
    assert latin1[2]["error"] == "text is null"
    # A rerun has nothing to do: the poisoned documents are answered, not retried forever.
    again = translate(cfg).summary
    assert again["inputs"]["already_complete"] == 4 and again["documents"] == 0


# -- a damaged model is refused before work, in one line


@pytest.mark.parametrize("damage", ["truncated weights", "no config", "other vocabulary"])
def test_a_damaged_checkpoint_is_refused_in_one_line(toy_checkpoint, tmp_path, capsys, damage):
    model = tmp_path / "model"
    shutil.copytree(toy_checkpoint, model)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.jsonl").write_text('{"id": 1, "text": "Quit"}\n')
    if damage == "truncated weights":
        weights = (model / "model.safetensors").read_bytes()
        (model / "model.safetensors").write_bytes(weights[: len(weights) // 2])
        expected = "truncated"
    elif damage == "no config":
        (model / "config.yaml").unlink()
        expected = "no config.yaml"
    else:
        config = (model / "config.yaml").read_text()
        (model / "config.yaml").write_text(config.replace("vocab_size: 600", "vocab_size: 700"))
        expected = "does not match"
    code = main(["translate", "--checkpoint", str(model), "--input", str(inbox), "--output",
                 str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("s2s: error: "), err
    assert expected in err[0] and not (tmp_path / "out" / "a.jsonl").exists()
    assert main(["export", "--checkpoint", str(model), "--output", str(tmp_path / "ct2")]) == 2
    assert expected in capsys.readouterr().err


def test_an_internal_error_exits_70_with_a_one_line_summary(monkeypatch, capsys, tmp_path):
    import s2s.translate

    def broken(cfg):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(s2s.translate, "translate", broken)
    code = main(["translate", "--checkpoint", "m", "--input", "i", "--output", str(tmp_path)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 70 and last == "s2s: internal error: RuntimeError: a bug (exit 70)"


# -- evaluate reads pairs as prepare does


def test_evaluate_reads_pairs_as_prepare_does(tmp_path):
    path = tmp_path / "test.tsv"
    # A BOM, Windows line ends, and U+2028 inside a line (str.splitlines() would cut there).
    path.write_bytes("\ufeffOpen\tÖffnen\r\nSave\u2028now\tJetzt\u2028speichern\r\n".encode())
    sources, references = load_pairs(str(path), "test")
    assert sources == ["Open", "Save\u2028now"] and references == ["Öffnen", "Jetzt\u2028speichern"]
    path.write_bytes(b"Open\t\xc3\x96ffnen\nQuit\tBeenden\nbad \xff\tx\n")
    with pytest.raises(ConfigError, match=r"test.tsv:3: invalid_utf8"):
        load_pairs(str(path), "test")
