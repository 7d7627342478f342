"""Print README.md's configuration reference, generated from the config classes in s2s/config.py.

    python .ci/config_reference.py    # the text between README's config-reference markers

s2s/config.py stays the documentation of every setting (each field's comment is its description);
this script only renders it, and tests/test_config.py fails when README.md and the code disagree.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys

from s2s.config import (
    DecodeConfig,
    EvaluateConfig,
    ModelConfig,
    PrepareConfig,
    TrainConfig,
    TranslateConfig,
)

# (title, class, key prefix), in the order a run meets them.
SECTIONS = [
    ("prepare", PrepareConfig, ""),
    ("train", TrainConfig, ""),
    ("train.model", ModelConfig, "model."),
    ("translate and evaluate: decoding", DecodeConfig, ""),
    ("translate", TranslateConfig, ""),
    ("evaluate", EvaluateConfig, ""),
]


def field_notes(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: the lines just above it plus a trailing one."""
    notes, above = {}, []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        match = re.match(r"(\w+): [^=]+=(.*)$", stripped)
        if match and line.startswith("    ") and not line.startswith("     "):
            trailing = match.group(2).split("  # ", 1)[1] if "  # " in match.group(2) else ""
            notes[match.group(1)] = " ".join(above + [trailing]).strip()
        above = []
    return notes


def own_fields(cls: type) -> list[dataclasses.Field]:
    """The fields ``cls`` adds to its config base classes (those have a section of their own),
    less nested sections (each has its own too)."""
    bases = [base for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)]
    inherited = {f.name for base in bases for f in dataclasses.fields(base)}
    defaults = cls()
    return [
        f
        for f in dataclasses.fields(cls)
        if f.name not in inherited and not dataclasses.is_dataclass(getattr(defaults, f.name))
    ]


def config_reference() -> str:
    """One table per config class: key, default, and the comment the field carries."""
    out = []
    for title, cls, prefix in SECTIONS:
        notes, defaults = field_notes(cls), cls()
        out += [f"**{title}** (`{cls.__name__}`)", "", "| key | default | |", "|---|---|---|"]
        for f in own_fields(cls):
            default = getattr(defaults, f.name)
            shown = "" if default in ("", [], None) else f"`{default}`"
            out.append(f"| `{prefix}{f.name}` | {shown} | {notes.get(f.name, '')} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(config_reference())
