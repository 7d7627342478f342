"""The benchmarks' corpus: a directory of ``train.tsv.gz``, ``valid.tsv.gz`` and ``test.tsv.gz``
(English<TAB>German, one pair a line).

The README's figures were measured on the shared gettext corpus, built from 159 Debian packages'
catalogs by ``shared/corpus/build_gettext_corpus.py``; where a checkout sits next to it
(``../shared/corpus/en-de``) that corpus is used as is. Anywhere else (a clean clone) the same
layout is built from what the machine has, with ``s2s corpus gettext``'s reader: the system's
catalogs and those installed Python packages ship (the dev extra brings Django, pycountry, Trac
and JupyterLab's). Its splits are carved by a hash of the English side, so they are the same on
every run and no English string is in two splits. The benchmarks then run anywhere; their
figures differ from the README's with the corpus (say which one a figure was measured on).
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from s2s import storage
from s2s.config import PrepareConfig
from s2s.gettext import SYSTEM_LOCALE_DIR, build_corpus, package_locale_dirs
from s2s.prepare import prepare_corpus

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "en-de"
SPLITS = ("train", "valid", "test")


def bench_corpus(work: Path, lang: str = "de", held_out: int = 2000) -> Path:
    """The shared corpus where it is there (for ``de``), else one built into ``work/corpus-LANG``
    (once: a built one is reused), ``held_out`` pairs each in valid and test.

    Raises:
        SystemExit: when the machine has too few pairs for the held-out splits and a training
            split at least as large (naming what to install).
    """
    if lang == "de" and (SHARED / "train.tsv.gz").exists():
        return SHARED
    out = work / f"corpus-{lang}"
    if all((out / f"{split}.tsv.gz").exists() for split in SPLITS):
        return out
    pairs, _ = build_corpus(lang, [SYSTEM_LOCALE_DIR, *package_locale_dirs(lang)])
    if len(pairs) < 4 * held_out:
        raise SystemExit(
            f"only {len(pairs)} en->{lang} pairs on this machine, fewer than {4 * held_out}: "
            f"install the dev extra (pip install -e '.[dev]') or {lang} language packs"
        )
    for split, rows in split_pairs(pairs, held_out).items():
        out.mkdir(parents=True, exist_ok=True)
        with gzip.open(out / f"{split}.tsv.gz", "wt", encoding="utf-8") as f:
            f.writelines(f"{src}\t{tgt}\n" for src, tgt in rows)
    return out


def split_pairs(pairs: list[tuple[str, str]], held_out: int) -> dict[str, list]:
    """train/valid/test: pairs ordered by a hash of their English side; the first ``held_out``
    are test, the next valid, the rest train (each split in the pairs' own order)."""
    ranked = sorted(range(len(pairs)), key=lambda i: hashlib.sha256(pairs[i][0].encode()).digest())
    test, valid = set(ranked[:held_out]), set(ranked[held_out : 2 * held_out])
    return {
        "train": [p for i, p in enumerate(pairs) if i not in test and i not in valid],
        "valid": [p for i, p in enumerate(pairs) if i in valid],
        "test": [p for i, p in enumerate(pairs) if i in test],
    }


def prepare_bench_corpus(corpus: Path, output: str, **settings) -> str:
    """``s2s prepare`` of the corpus with its own splits (train carved by nothing, valid and test
    given), with ``settings`` on top of the defaults; a prepared ``output`` is reused as is."""
    if not (corpus / "train.tsv.gz").exists():
        raise SystemExit(f"{corpus}/train.tsv.gz not found (see jobs/benchcorpus.py)")
    if not storage.exists(storage.join(output, "manifest.json")):
        prepare_corpus(
            PrepareConfig(
                inputs=[str(corpus / "train.tsv.gz")],
                valid=[str(corpus / "valid.tsv.gz")],
                test=[str(corpus / "test.tsv.gz")],
                output=output,
                overwrite=True,
                **settings,
            )
        )
    return output
