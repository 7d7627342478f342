import struct

import pytest

from s2s.cli import main
from s2s.gettext import build_corpus, package_locale_dirs, read_mo, strip_accelerators
from tests import conftest


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


def test_build_corpus_reads_several_locale_dirs_in_order(tmp_path):
    header = "Content-Type: text/plain; charset=UTF-8\n"
    for name, entries in [("one", {"Open": "Öffnen"}), ("two", {"Open": "Laden", "Quit": "Ende"})]:
        (tmp_path / name / "de" / "LC_MESSAGES").mkdir(parents=True)
        mo = write_mo({"": header, **entries})
        (tmp_path / name / "de" / "LC_MESSAGES" / "x.mo").write_bytes(mo)
    pairs, stats = build_corpus("de", [tmp_path / "two", tmp_path / "one"])
    assert pairs == [("Open", "Laden"), ("Quit", "Ende")]  # the first dir given wins
    assert stats.catalogs == 2 and stats.dropped["duplicate_source"] == 1


def test_package_locale_dirs_finds_catalogs_of_installed_packages(tmp_path):
    mo = write_mo({"": "Content-Type: text/plain; charset=UTF-8\n", "Open": "Öffnen"})
    for catalog in [
        "pkg/conf/locale/de/LC_MESSAGES/pkg.mo",
        "pkg/contrib/admin/locale/de/LC_MESSAGES/pkg.mo",
        "other/locales/de_DE/LC_MESSAGES/other.mo",  # pycountry's "locales", a "de_*" dir
        "french/locale/fr/LC_MESSAGES/french.mo",  # another language
    ]:
        (tmp_path / catalog).parent.mkdir(parents=True)
        (tmp_path / catalog).write_bytes(mo)
    (tmp_path / "empty/locale/de/LC_MESSAGES").mkdir(parents=True)  # no catalog in it
    assert package_locale_dirs("de", [tmp_path]) == [
        tmp_path / "other/locales",
        tmp_path / "pkg/conf/locale",
        tmp_path / "pkg/contrib/admin/locale",
    ]


def test_corpus_from_the_installed_packages_is_real_text():
    """The dev extra's packages (Django, pycountry, Trac, the JupyterLab German language pack)
    ship human translations: the corpus a machine without system catalogs tests on."""
    dirs = package_locale_dirs("de")
    django = [d for d in dirs if "django" in d.parts]
    pairs, stats = build_corpus("de", django)
    assert stats.catalogs >= 10 and len(pairs) > 600  # Django 5.2: 739 pairs from 13 catalogs
    found = dict(pairs)
    assert found["This field is required."] == "Dieses Feld ist zwingend erforderlich."
    assert found["Change password"] == "Passwort ändern"
    everything, _ = build_corpus("de", dirs)
    assert dict(everything)["Germany"] == "Deutschland"  # pycountry's ISO 3166 names
    assert len(everything) >= conftest.GETTEXT_MIN_PAIRS  # with Django 5.2 and the rest: 7,050


def test_fixture_falls_back_to_the_packages_catalogs(tmp_path):
    corpus = conftest.load_gettext_corpus(tmp_path)  # a machine without system catalogs
    assert corpus.locale_dirs == [tmp_path, *package_locale_dirs("de")]
    assert corpus.pairs == build_corpus("de", package_locale_dirs("de"))[0]


def test_fixture_fails_without_enough_pairs(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "package_locale_dirs", lambda lang: [])
    with pytest.raises(pytest.fail.Exception, match="only 0 en->de gettext pairs"):
        conftest.load_gettext_corpus(tmp_path)


def test_gettext_command_with_packages(tmp_path):
    out = tmp_path / "de.tsv"
    argv = ["corpus", "gettext", "--lang", "de", "--packages", "--output", str(out)]
    assert main(argv) == 0
    pairs = [tuple(line.split("\t")) for line in out.read_text(encoding="utf-8").splitlines()]
    assert pairs == build_corpus("de", package_locale_dirs("de"))[0]


def test_gettext_command_without_catalogs_is_refused(tmp_path, capsys):
    argv = ["corpus", "gettext", "--lang", "de", "--locale-dir", str(tmp_path)]
    assert main([*argv, "--output", str(tmp_path / "de.tsv")]) == 2
    assert f"no 'de' catalogs with translations under {tmp_path}" in capsys.readouterr().err


def test_gettext_command_on_this_machines_catalogs(tmp_path, gettext_corpus, gettext_pairs):
    out = tmp_path / "de.tsv"
    if gettext_corpus.locale_dirs == [conftest.GETTEXT_LOCALE_DIR]:
        sources = []  # the command's default: the system catalogs
    else:
        sources = ["--locale-dir", conftest.GETTEXT_LOCALE_DIR, "--packages"]
    assert main(["corpus", "gettext", "--lang", "de", *sources, "--output", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(gettext_pairs) >= conftest.GETTEXT_MIN_PAIRS
    pairs = [line.split("\t") for line in lines]
    assert all(len(p) == 2 and p[0] and p[1] for p in pairs)
    sources = [p[0] for p in pairs]
    assert len(set(sources)) == len(sources)
    assert not any(src.casefold() == tgt.casefold() for src, tgt in pairs)
    assert not any("  " in src or "\n" in src for src in sources)
