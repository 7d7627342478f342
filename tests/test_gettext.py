import struct

import pytest

from s2s.cli import main
from s2s.gettext import build_corpus, read_mo, strip_accelerators


def write_mo(entries: dict[str, str], order: str = "<") -> bytes:
    """A minimal msgfmt: the GNU .mo layout (header, two string tables, no hash table)."""
    keys = sorted(entries)
    ids = b"".join(k.encode() + b"\0" for k in keys)
    strs = b"".join(entries[k].encode() + b"\0" for k in keys)
    n = len(keys)
    start = 28 + 16 * n
    id_table, str_table, offset = [], [], 0
    for k in keys:
        id_table += [len(k.encode()), start + offset]
        offset += len(k.encode()) + 1
    offset = 0
    for k in keys:
        str_table += [len(entries[k].encode()), start + len(ids) + offset]
        offset += len(entries[k].encode()) + 1
    header = struct.pack(order + "7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    tables = struct.pack(order + f"{4 * n}I", *id_table, *str_table)
    return header + tables + ids + strs


@pytest.mark.parametrize("order", ["<", ">"])
def test_read_mo_both_byte_orders(order):
    entries = {
        "": "Content-Type: text/plain; charset=UTF-8\n",
        "_Open": "Ö_ffnen",
        "menu\x04Quit": "Beenden",
        "%d file\x00%d files": "%d Datei\x00%d Dateien",
    }
    got = dict(read_mo(write_mo(entries, order)))
    assert got["_Open"] == "Ö_ffnen"
    assert got["Quit"] == "Beenden"  # context dropped
    assert got["%d file"] == "%d Datei"  # singular and first form
    assert "" in got  # the header is an entry; build_corpus drops it


def test_read_mo_rejects_other_files():
    with pytest.raises(ValueError, match="not a .mo file"):
        list(read_mo(b"\x00" * 64))


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("_Save As…", "Save As…"),
        ("&Open", "Open"),
        ("A&bout", "About"),
        ("Save && Quit", "Save & Quit"),
        ("Open (_O)", "Open"),
        ("file_name", "file_name"),
        ("_NET_WM_NAME", "_NET_WM_NAME"),
        ("__init__", "__init__"),
        ("Tom &amp; Jerry", "Tom &amp; Jerry"),
    ],
)
def test_strip_accelerators(raw, clean):
    assert strip_accelerators(raw) == clean


def test_build_corpus_from_a_locale_dir(tmp_path):
    catalog_dir = tmp_path / "de" / "LC_MESSAGES"
    catalog_dir.mkdir(parents=True)
    header = "Content-Type: text/plain; charset=UTF-8\n"
    entries = {
        "": header,
        "_Open file": "Datei ö_ffnen",
        "OK": "OK",
        "Quit  now": "Jetzt\n beenden",
        "translator-credits": "Jemand",
        "Untranslated thing": "",
    }
    (catalog_dir / "a.mo").write_bytes(write_mo(entries))
    (catalog_dir / "b.mo").write_bytes(write_mo({"": header, "Open file": "Datei laden"}))
    pairs, stats = build_corpus("de", tmp_path)
    assert sorted(pairs) == [("Open file", "Datei öffnen"), ("Quit now", "Jetzt beenden")]
    assert stats.dropped == {
        "header": 2,
        "identical": 1,
        "credits": 1,
        "untranslated": 1,
        "duplicate_source": 1,
    }
    assert stats.entries == 2 + 6 - 1 + 1  # msgfmt would drop the untranslated one; we count it


def test_gettext_command_on_this_machines_catalogs(tmp_path, gettext_pairs):
    out = tmp_path / "de.tsv"
    assert main(["corpus", "gettext", "--lang", "de", "--output", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(gettext_pairs) > 10_000
    pairs = [line.split("\t") for line in lines]
    assert all(len(p) == 2 and p[0] and p[1] for p in pairs)
    sources = [p[0] for p in pairs]
    assert len(set(sources)) == len(sources)
    assert not any(src.casefold() == tgt.casefold() for src, tgt in pairs)
    assert not any("  " in src or "\n" in src for src in sources)
