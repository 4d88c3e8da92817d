"""Write the figures of the committed (executed) notebooks to docs/images/, for the docs site.

    python notebooks/export_figures.py          # (re)write docs/images/<notebook-stem>-<k>.png
    python notebooks/export_figures.py --check  # exit 1 if docs/images differs from the notebooks

k is the 1-based index of a figure (an ``image/png`` output) in its notebook, in cell and output order. The PNG bytes
are copied from the notebook as they are, so the docs show exactly what the notebook shows;
tests/test_notebooks.py checks that the two cannot drift apart. Re-execute the notebooks first (in place, the way
tests/test_notebooks.py runs them; ``NotebookClient(..., record_timing=False)`` keeps timestamps out of the diff),
then run this.
"""

import argparse
import base64
import json
import pathlib
import re
import sys

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent
IMAGE_DIR = NOTEBOOK_DIR.parent / "docs" / "images"


def figures(notebook: pathlib.Path) -> list[bytes]:
    """The ``image/png`` outputs of a notebook, decoded, in cell and output order."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    found = []
    for cell in cells:
        for output in cell.get("outputs", []):  # only code cells have outputs
            png = output.get("data", {}).get("image/png")
            if png is not None:
                found.append(base64.b64decode("".join(png) if isinstance(png, list) else png))
    return found


def expected_images(notebook_dir: pathlib.Path = NOTEBOOK_DIR) -> dict[str, bytes]:
    """File name in docs/images -> PNG bytes, for every figure of every notebook in notebook_dir."""
    return {f"{notebook.stem}-{k}.png": png
            for notebook in sorted(notebook_dir.glob("*.ipynb")) for k, png in enumerate(figures(notebook), 1)}


def owned(name: str, notebook_dir: pathlib.Path = NOTEBOOK_DIR) -> bool:
    """Whether a file name in docs/images is one this script writes (``<notebook-stem>-<k>.png``)."""
    match = re.fullmatch(r"(.+)-(\d+)\.png", name)
    return bool(match) and (notebook_dir / f"{match.group(1)}.ipynb").exists()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing; exit 1 on a difference")
    args = parser.parse_args(argv)
    expected = expected_images()
    present = {path.name for path in IMAGE_DIR.glob("*.png") if owned(path.name)}
    stale = sorted(present - set(expected))
    changed = sorted(name for name, png in expected.items()
                     if not (IMAGE_DIR / name).exists() or (IMAGE_DIR / name).read_bytes() != png)
    if args.check:
        for name in changed + stale:
            print(f"docs/images/{name} differs from the notebooks: run python notebooks/export_figures.py")
        return 1 if changed or stale else 0
    IMAGE_DIR.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (IMAGE_DIR / name).unlink()
        print(f"removed docs/images/{name}")
    for name in changed:
        (IMAGE_DIR / name).write_bytes(expected[name])
        print(f"wrote docs/images/{name} ({len(expected[name]) / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
