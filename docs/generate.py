"""Write the generated parts of the documentation site: whole pages, and marked blocks inside hand-written pages.

    .venv/bin/python docs/generate.py          # rewrite every generated page and block
    .venv/bin/python docs/generate.py --check  # only compare: exit 1 naming the files that differ

A block is the text between ``<!-- generated: NAME -->`` and ``<!-- /generated: NAME -->`` in any docs/**/*.md;
the names are the keys of the BLOCKS of reference_pages.py and results_pages.py, plus ``error:CLASS`` for each
exception class on the troubleshooting page (every exception class of the package must have one). Whole pages are
the keys of reference_pages.PAGES. tests/test_docs.py imports this file and fails when a page differs from what
:func:`expected` renders now, so data and docs cannot drift apart.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

DOCS = Path(__file__).resolve().parent
if str(DOCS) not in sys.path:  # the renderers beside this file, also when a test loads it by path
    sys.path.insert(0, str(DOCS))

import reference_pages  # noqa: E402
import results_pages  # noqa: E402

BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w:.-]+) -->\n)(?P<body>.*?)(<!-- /generated: (?P=name) -->)", re.S)
BLOCKS: dict[str, Callable[[], str]] = {**reference_pages.BLOCKS, **results_pages.BLOCKS}
TROUBLESHOOTING = DOCS / "guides" / "troubleshooting.md"


def render_block(name: str) -> str:
    if name.startswith("error:"):
        return reference_pages.error_block(name.removeprefix("error:"))
    if name not in BLOCKS:
        raise ValueError(f"docs: unknown generated block {name!r} (known: {', '.join(sorted(BLOCKS))}, error:CLASS)")
    return BLOCKS[name]()


def render_blocks(text: str) -> str:
    """``text`` with every generated block rendered afresh."""
    return BLOCK.sub(lambda match: match[1] + render_block(match["name"]).strip("\n") + "\n" + match[4], text)


def block_names(text: str) -> list[str]:
    return [match["name"] for match in BLOCK.finditer(text)]


def uncovered_errors() -> list[str]:
    """Exception classes of the package without a block on the troubleshooting page."""
    present = set(block_names(TROUBLESHOOTING.read_text()))
    return [name for name in reference_pages.error_classes() if f"error:{name}" not in present]


def expected() -> dict[Path, str]:
    """Every generated file -> the text it must have now."""
    missing = uncovered_errors()
    if missing:
        raise ValueError(f"docs/guides/troubleshooting.md has no section for {', '.join(missing)}: add one with a "
                         "'<!-- generated: error:NAME -->' block and what to do")
    pages = {DOCS / name: render() for name, render in reference_pages.PAGES.items()}
    for path in sorted(DOCS.rglob("*.md")):
        if path not in pages and BLOCK.search(path.read_text()):
            pages[path] = render_blocks(path.read_text())
    return pages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when a file differs")
    args = parser.parse_args()
    stale = []
    for path, text in expected().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.relative_to(DOCS.parent))
        if not args.check:
            path.write_text(text)
    verb = "differs" if args.check else "written"
    for path in stale:
        print(f"{path} {verb}")
    if not stale:
        print("docs: every generated page is up to date")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
