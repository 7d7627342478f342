"""A real English->LANG parallel corpus from the gettext catalogs installed on this machine.

Every ``.mo`` catalog pairs an English UI or message string (msgid) with the translation a human
wrote for it (msgstr). :func:`read_mo` parses the binary format (GNU gettext manual, "The Format
of GNU MO Files") in pure Python; :func:`build_corpus` cleans the pairs into a TSV corpus.

Catalogs come from locale directories: the system's (``/usr/share/locale``, filled by the OS
packages) and, through :func:`package_locale_dirs`, those that installed Python packages ship
(Django, pycountry, ...), so a machine without system catalogs still has real text.
"""

from __future__ import annotations

import re
import site
import struct
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SYSTEM_LOCALE_DIR",
    "CorpusStats",
    "build_corpus",
    "package_locale_dirs",
    "read_mo",
    "strip_accelerators",
]

SYSTEM_LOCALE_DIR = "/usr/share/locale"

_MAGIC_LE = 0x950412DE
_MAGIC_BE = 0xDE120495
_CONTEXT_SEP = "\x04"  # msgctxt EOT msgid
_PLURAL_SEP = "\x00"  # singular NUL plural / form0 NUL form1 ...

# GTK marks an accelerator with "_", Qt/KDE with "&", before the letter to underline. An "_"
# counts only when it starts a word with no other "_" in it, so identifiers ("file_name",
# "_NET_WM_NAME", "__init__") keep theirs; "&" is not one in an entity ("&amp;") or "&&".
_ACCELERATOR = re.compile(r"(?<![\w&])_(?=[^\W_]+\b)|&(?=[^\W_])(?!\w+;)")
# In a translation whose English had a marker, one "_" inside a word marks too ("Ö_ffnen").
_ACCELERATOR_IN_WORD = re.compile(r"\b([^\W_]+)_([^\W_]+)\b")
_ACCEL_SUFFIX = re.compile(r"\s*\(\s*[_&]\w\s*\)")  # "Open (_O)" style suffixes in CJK catalogs
_WHITESPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b\ufeff\u00ad]")  # bash's "\a" and such
_CREDITS = ("translator-credits", "translator_credits", "Your names", "Your emails")


@dataclass
class CorpusStats:
    """Counts of one :func:`build_corpus` run, per reason an entry was dropped."""

    catalogs: int = 0
    entries: int = 0
    pairs: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def read_mo(data: bytes) -> Iterator[tuple[str, str]]:
    """Yield ``(msgid, msgstr)`` for every entry of a compiled catalog, header included.

    Plural entries come back as the singular msgid and the first msgstr form; a msgctxt is
    dropped. Strings are decoded with the charset the catalog's header declares.

    Raises:
        ValueError: if ``data`` is not a ``.mo`` file.
    """
    if len(data) < 28:
        raise ValueError("not a .mo file: too short")
    (magic,) = struct.unpack("<I", data[:4])
    if magic == _MAGIC_LE:
        order = "<"
    elif magic == _MAGIC_BE:
        order = ">"
    else:
        raise ValueError(f"not a .mo file: magic {magic:#x}")
    _, count, ids_offset, strs_offset = struct.unpack(order + "4I", data[4:20])
    ids = struct.unpack_from(f"{order}{2 * count}I", data, ids_offset)  # (length, offset) pairs
    strs = struct.unpack_from(f"{order}{2 * count}I", data, strs_offset)
    raw = [
        (data[ids[2 * i + 1] : ids[2 * i + 1] + ids[2 * i]],
         data[strs[2 * i + 1] : strs[2 * i + 1] + strs[2 * i]])
        for i in range(count)
    ]  # fmt: skip
    charset = "utf-8"
    for msgid, msgstr in raw:
        if msgid == b"":
            found = re.search(rb"charset=([\w-]+)", msgstr)
            if found and found.group(1).lower() != b"charset":
                charset = found.group(1).decode("ascii")
    for msgid, msgstr in raw:
        text_id = msgid.decode(charset, errors="replace").split(_CONTEXT_SEP)[-1]
        yield (
            text_id.split(_PLURAL_SEP)[0],
            msgstr.decode(charset, errors="replace").split(_PLURAL_SEP)[0],
        )


def strip_accelerators(text: str, in_words: bool = False) -> str:
    """Remove keyboard accelerator markers: ``"_Save As"`` -> ``"Save As"``, ``"&&"`` -> ``"&"``.

    Args:
        text: a catalog string.
        in_words: also remove a single ``_`` inside a word (``"Ö_ffnen"``); right for a
            translation whose English carried a marker, wrong for identifiers elsewhere.
    """
    text = _ACCEL_SUFFIX.sub("", text)
    if in_words:
        text = _ACCELERATOR_IN_WORD.sub(r"\1\2", text)
    text = text.replace("&&", "\x00")
    text = _ACCELERATOR.sub("", text)
    return text.replace("\x00", "&")


def _clean(text: str, in_words: bool = False) -> str:
    text = unicodedata.normalize("NFC", _CONTROL.sub("", strip_accelerators(text, in_words)))
    return _WHITESPACE.sub(" ", text).strip()


def _is_lang_dir(name: str, lang: str) -> bool:
    # "de" also reads "de_DE", "de_AT"...: the same language, and mostly different packages.
    return name == lang or name.startswith(f"{lang}_")


def _catalogs(locale_dir: Path, lang: str) -> list[Path]:
    dirs = [locale_dir / lang] + sorted(locale_dir.glob(f"{lang}_*"))
    return [mo for d in dirs for mo in sorted((d / "LC_MESSAGES").glob("*.mo"))]


def _site_packages() -> list[Path]:
    """The directories Python installs packages into: the venv's, else the system's and user's."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [Path(d) for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def package_locale_dirs(lang: str, roots: Iterable[str | Path] | None = None) -> list[Path]:
    """The locale directories of installed Python packages that hold ``LANG`` catalogs.

    A package ships ``<pkg>/.../<locale dir>/<LANG>/LC_MESSAGES/*.mo`` (Django's
    ``django/conf/locale``, pycountry's ``pycountry/locales``); each such ``<locale dir>`` is
    returned once, in sorted order, ready for :func:`build_corpus`.

    Args:
        lang: locale directory name of the target language; ``LANG_*`` directories count too.
        roots: directories to search; default: this interpreter's site-packages.
    """
    found: set[Path] = set()
    for root in _site_packages() if roots is None else [Path(r) for r in roots]:
        # One walk for every LC_MESSAGES, then filter: globbing per language name would walk
        # site-packages (gigabytes with torch and ray) once per pattern.
        for messages in Path(root).glob("**/LC_MESSAGES"):
            if _is_lang_dir(messages.parent.name, lang) and any(messages.glob("*.mo")):
                found.add(messages.parent.parent)
    return sorted(found)


def build_corpus(
    lang: str,
    locale_dirs: str | Path | Sequence[str | Path] = SYSTEM_LOCALE_DIR,
    max_chars: int = 500,
) -> tuple[list[tuple[str, str]], CorpusStats]:
    """Collect clean (english, translation) pairs from every ``LANG`` catalog under locale_dirs.

    Drops the header, translator credits, untranslated and identical pairs, pairs without a
    letter in English, over-long pairs and repeated English strings (the first catalog wins:
    locale directories in the order given, catalogs in sorted order within one, so a string
    gets one translation and the output is deterministic).

    Args:
        lang: locale directory name of the target language (``de``, ``fr``, ``pt_BR``).
        locale_dirs: one directory holding ``LANG/LC_MESSAGES/*.mo``, or several (the system's,
            :func:`package_locale_dirs`), read as one source.
        max_chars: longest English or translated side kept, in characters.

    Returns:
        (pairs, stats).
    """
    if isinstance(locale_dirs, (str, Path)):
        locale_dirs = [locale_dirs]
    stats = CorpusStats()
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    catalogs = [mo for d in locale_dirs for mo in _catalogs(Path(d), lang)]
    for path in catalogs:
        try:
            entries = list(read_mo(path.read_bytes()))
        except (OSError, ValueError, struct.error):
            stats.drop("unreadable_catalog")
            continue
        stats.catalogs += 1
        for msgid, msgstr in entries:
            stats.entries += 1
            reason = _drop_reason(msgid, msgstr)
            if reason is None:
                marked = _ACCELERATOR.search(msgid) is not None
                src, tgt = _clean(msgid), _clean(msgstr, in_words=marked)
                reason = _drop_reason_clean(src, tgt, max_chars)
                if reason is None and src in seen:
                    reason = "duplicate_source"
            if reason:
                stats.drop(reason)
                continue
            seen.add(src)
            pairs.append((src, tgt))
    stats.pairs = len(pairs)
    return pairs, stats


def _drop_reason(msgid: str, msgstr: str) -> str | None:
    if not msgid:
        return "header"
    if not msgstr.strip():
        return "untranslated"
    if msgid in _CREDITS or any(c in msgid for c in _CREDITS):
        return "credits"
    return None


def _drop_reason_clean(src: str, tgt: str, max_chars: int) -> str | None:
    if not src or not tgt:
        return "empty"
    if src.casefold() == tgt.casefold():
        return "identical"
    if not any(c.isalpha() for c in src):
        return "no_letters"
    if len(src) > max_chars or len(tgt) > max_chars:
        return "too_long"
    return None
