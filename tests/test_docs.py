"""The documentation stays honest: its links resolve, its Python examples run, the README stays one screen.

Every ```python block in docs/*.md is executed, in order, one namespace per file (a later block may use what an
earlier one defined), from the repository root. A block that cannot run here is marked directly above its fence
with ``<!-- needs: data -->`` (dataset files) or ``<!-- needs: gpu -->`` (a CUDA device), optionally followed by
an explanation: ``<!-- needs: data: the Cityscapes tree -->``. The README's blocks are run by test_readme.py.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 160

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
NEEDS = re.compile(r"<!--\s*needs:(.*?)-->", re.S)
NEEDS_VALID = re.compile(r"^\s*(data|gpu)\b")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _without_code(text: str) -> str:
    """The text with fenced blocks and inline code removed, so that code is never read as a link."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_links(path: Path) -> list[str]:
    """Every link target of a Markdown file that points into the repository (no URL, no pure #anchor)."""
    text = _without_code(path.read_text())
    targets = LINK.findall(text) + HTML_LINK.findall(text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


def python_blocks(path: Path) -> list[tuple[int, str | None, str]]:
    """(line, marker, code) of every ```python block; marker is the needs-comment directly above, if any."""
    return python_blocks_of(path.read_text())


def python_blocks_of(text: str) -> list[tuple[int, str | None, str]]:
    """python_blocks of a page's text."""
    blocks = []
    for match in FENCE.finditer(text):
        if match.group(1) != "python":
            continue
        line = text.count("\n", 0, match.start()) + 1
        above = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        needs = NEEDS.fullmatch(above)
        blocks.append((line, needs.group(1) if needs else None, match.group(2)))
    return blocks


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: _rel(p))
def test_relative_links_resolve(path):
    missing = []
    for target in relative_links(path):
        target_path = (path.parent / target.split("#", 1)[0]).resolve()
        if not target_path.exists():
            missing.append(target)
    assert not missing, f"{_rel(path)} links to missing files: {missing}"


def test_link_checker_sees_links_and_skips_urls_and_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](x.md) ![b](img/y.png#frag) [c](https://e.org) [d](#top) `[e](code.md)`\n"
                    "```python\nx = [f](g)\n```\n<img src=\"z.png\">\n")
    assert relative_links(page) == ["x.md", "img/y.png#frag", "z.png"]


def test_every_doc_is_linked_from_the_readme():
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for t in relative_links(README)}
    assert not [p.name for p in DOCS if p.resolve() not in linked]


def marker_problems(text: str) -> list[str]:
    """What is wrong with the needs-markers of a page: a marker without a reason, or not directly above a block."""
    # Inline code may quote a marker; blank it out (same length, so line numbers stay right).
    text = re.sub(r"(?<!`)`[^`\n]+`(?!`)", lambda m: " " * len(m.group(0)), text)
    problems = []
    for marker in NEEDS.finditer(text):
        line = text.count("\n", 0, marker.start()) + 1
        if not NEEDS_VALID.match(marker.group(1)):
            problems.append(f"line {line}: a needs-marker must say why the block is not run: 'needs: data' or "
                            "'needs: gpu'")
        if not text[marker.end():].lstrip(" \t").startswith("\n```"):
            problems.append(f"line {line}: a needs-marker must sit directly above a code block")
    return problems


def test_marker_rules():
    good = "<!-- needs: data: the Cityscapes tree -->\n```python\nx = 1\n```\n"
    assert marker_problems(good) == [] and python_blocks_of(good)[0][1].strip().startswith("data")
    assert len(marker_problems("<!-- needs: -->\n```python\nx\n```\n")) == 1
    assert len(marker_problems("<!-- needs: network -->\n```python\nx\n```\n")) == 1
    assert len(marker_problems("<!-- needs: gpu -->\n\ntext\n```python\nx\n```\n")) == 1
    assert marker_problems("Quote it as `<!-- needs: gpu -->` in prose.\n") == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: _rel(p))
def test_needs_markers_name_a_reason_and_sit_above_a_block(path):
    assert not marker_problems(path.read_text()), f"{_rel(path)}: {marker_problems(path.read_text())}"


@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)], ids=lambda p: _rel(p))
def test_python_blocks_run(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    scope: dict = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    ran = 0
    for line, needs, code in python_blocks(path):
        if needs is not None:
            continue
        try:
            exec(compile(code, f"{_rel(path)}:{line}", "exec"), scope)
        except Exception as exc:  # name the block, keep the traceback
            raise AssertionError(f"{_rel(path)}: the python block at line {line} failed: {exc!r}") from exc
        ran += 1
    assert ran, f"{_rel(path)} has python blocks but all are marked as not runnable"


def test_readme_is_one_screen():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the long form belongs in docs/"


def test_docs_commands_parse():
    """The ssfdan-train and ssfdan-eval command lines in the docs are accepted by their parsers."""
    from ssfdan_ext.evaluate.cli import parser as eval_parser
    from ssfdan_ext.train import load_config
    from ssfdan_ext.train.cli import parser as train_parser

    text = "\n".join(p.read_text() for p in [README, *DOCS]).replace("\\\n", " ")
    evals = re.findall(r"^(ssfdan-eval .*?)(?:\s+#.*)?$", text, re.M)
    trains = re.findall(r"^(ssfdan-train .*?)(?:\s+#.*)?$", text, re.M)
    assert len(evals) >= 3 and len(trains) >= 4
    for command in evals:
        args = eval_parser().parse_args(command.split()[1:])
        assert args.checkpoint and args.dataset, command
    for command in trains:
        args = train_parser().parse_args(command.split()[1:])
        cfg = load_config(ROOT / args.config if args.config else None, args.overrides)
        assert cfg.iterations >= 1, command


def _marked_block(path: Path, marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)```", path.read_text(), re.S)
    assert match, f"{_rel(path)} has no code block after <!-- {marker} -->"
    return match.group(1)


def test_models_data_block_shapes_are_as_commented():
    scope: dict = {}
    exec(_marked_block(ROOT / "docs" / "datasets.md", "models-data"), scope)
    assert scope["image"].shape == (3, 64, 128) and scope["label"].shape == (64, 128)
    assert scope["logits"].shape == (1, 19, 8, 16) and scope["features"].shape == (1, 64, 8, 16)
    assert 0.0 <= scope["result"].miou <= 1.0
