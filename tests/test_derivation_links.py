"""The derivation notes (docs/derivations/) link code lines and tests: every link must resolve,
and a link whose text names a function, class or test must land on the line that defines it
(so the notes cannot silently drift from the code they explain)."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTES = sorted((ROOT / "docs" / "derivations").glob("*.md"))
INLINE = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
REFDEF = re.compile(r"^\[([^\]]+)\]:\s*(\S+)", re.M)


def _links(text):
    return INLINE.findall(text) + REFDEF.findall(text)


def test_there_are_notes():
    assert len(NOTES) >= 9 and (ROOT / "docs" / "derivations" / "README.md") in NOTES


@pytest.mark.parametrize("note", NOTES, ids=lambda p: p.name)
def test_links_resolve_and_land_on_what_they_name(note):
    bad = []
    for text, target in _links(note.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        f = (note.parent / path).resolve()
        if not f.exists():
            bad.append(f"{text} -> {target}: no such file")
            continue
        m = re.fullmatch(r"L(\d+)(?:-L\d+)?", anchor)
        if not m:
            continue
        lines = f.read_text(encoding="utf-8").splitlines()
        n = int(m.group(1))
        if not 1 <= n <= len(lines):
            bad.append(f"{text} -> {target}: the file has {len(lines)} lines")
            continue
        name = re.fullmatch(r"`([A-Za-z_][\w.]*)(?:\(\))?`", text)
        if name:
            ident = name.group(1).split(".")[-1]
            if not re.search(rf"\b{re.escape(ident)}\b", lines[n - 1]):
                bad.append(f"{text} -> {target}: line {n} is {lines[n - 1].strip()!r}")
    assert not bad, "\n".join(bad)
