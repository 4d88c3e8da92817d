"""The documentation: a short README, relative links that resolve, generated pages that match the package's data and
the benchmarks' JSON (docs/generate.py), a docstring for every public name, and a troubleshooting section for every
exception class. `make docs` (mkdocs build --strict) checks the site itself; these run in the normal suite."""

import ast
import importlib.util
import inspect
import os
import re
from pathlib import Path

import pytest
import yaml

import peft_vision_ext

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.rglob("*.md"))
# [text](target) and ![alt](target), and src/href attributes of inline HTML
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|(?:src|href)=\"([^\"]+)\"")
FENCE = re.compile(r"^ *```.*?^ *```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator():
    return load_generator()


def relative_links(path: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", path.read_text()))
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_there_are_docs_pages():
    assert DOCS / "index.md" in PAGES and len(PAGES) > 20


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = []
    for target in relative_links(path):
        file = target.split("#", 1)[0]
        resolved = os.path.normpath(path.parent / file)
        # docs pages are served by MkDocs: what they link to must be inside docs/ (notebooks: through the link)
        inside = path == README or resolved.startswith(str(DOCS) + os.sep)
        if not (inside and os.path.exists(resolved)):
            broken.append(target)
    assert broken == []


def test_readme_links_into_the_docs():
    links = relative_links(README)
    for page in ("docs/guides/quantization.md", "docs/guides/adalora.md", "docs/guides/training.md",
                 "docs/guides/troubleshooting.md", "docs/reference/compatibility.md"):
        assert any(link.split("#")[0] == page for link in links), page


def test_generated_pages_are_up_to_date(generator):
    stale = [str(path.relative_to(ROOT)) for path, text in generator.expected().items()
             if not path.exists() or path.read_text() != text]
    assert stale == [], "run .venv/bin/python docs/generate.py"


def test_every_generated_block_is_known(generator):
    for path in PAGES:
        for name in generator.block_names(path.read_text()):
            assert name.startswith("error:") or name in generator.BLOCKS, (path, name)


def test_every_page_is_in_the_nav():
    def entries(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from entries(value) if isinstance(value, list) else [value]

    nav = set(entries(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]))
    assert {str(path.relative_to(DOCS)) for path in PAGES} <= nav
    assert all((DOCS / page).exists() for page in nav)


def _attribute_docstring(module_name: str, name: str) -> str | None:
    """The string literal after ``name = ...`` in the module that assigns it (following ``from x import name``):
    where data gets its docstring, which mkdocstrings renders."""
    spec = importlib.util.find_spec(module_name)
    package = module_name if spec.submodule_search_locations else module_name.rpartition(".")[0]
    body = ast.parse(Path(spec.origin).read_text()).body
    for index, node in enumerate(body):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            following = body[index + 1] if index + 1 < len(body) else None
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                return following.value.value if isinstance(following.value.value, str) else None
            return None
        if isinstance(node, ast.ImportFrom) and any((alias.asname or alias.name) == name for alias in node.names):
            source = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            return _attribute_docstring(source, name)
    return None


@pytest.mark.parametrize("name", peft_vision_ext.__all__)
def test_every_public_name_has_a_docstring(name):
    value = getattr(peft_vision_ext, name)
    if inspect.isclass(value):
        # its own docstring: inspect.getdoc would inherit the base class's; a dataclass's generated one is a signature
        doc = value.__dict__.get("__doc__") or ""
        assert not doc.startswith(f"{value.__name__}("), name
    elif callable(value) or inspect.ismodule(value):
        doc = inspect.getdoc(value) or ""
    else:  # data (PRESETS, __version__): a string after the assignment
        doc = _attribute_docstring("peft_vision_ext", name) or ""
    assert doc.strip(), f"{name} has no docstring"


def test_every_public_name_is_in_the_api_reference():
    page = (DOCS / "reference" / "api.md").read_text()
    assert [name for name in peft_vision_ext.__all__ if f"heading: {name}\n" not in page] == []


def test_every_exception_class_is_on_the_troubleshooting_page(generator):
    classes = generator.reference_pages.error_classes()
    # the discovery finds every class of errors.py and those defined elsewhere
    assert {"UnsupportedCombinationError", "PresetRefusedError", "MissingDataError", "UnsupportedSharding"} <= set(
        classes)
    page = (DOCS / "guides" / "troubleshooting.md").read_text()
    assert [name for name in classes if f"\n## {name}\n" not in page] == []
    assert generator.uncovered_errors() == []
