"""The package's structure, beyond what `make lint`'s import contracts check: our own modules are imported at the top
of a file (a function-local import would hide an edge from the contracts and from a reader), nothing reads data
files at import, and the one method table feeds the presets, the matrix and the verification harness."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import peft_vision_ext
from peft_vision_ext.compat.verify import cell_config
from peft_vision_ext.matrix.rows import CURATED_ROWS, PRESET_METHODS
from peft_vision_ext.matrix.verdicts import METHOD_NAMES, config_class
from peft_vision_ext.presets import SUPPORTED_METHODS

PACKAGE = Path(peft_vision_ext.__file__).parent
REPO = PACKAGE.parent


def _function_local_imports_of_our_own_modules() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                own = (isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith(
                    "peft_vision_ext"))) or (isinstance(node, ast.Import) and any(
                    alias.name.startswith("peft_vision_ext") for alias in node.names))
                if own:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_our_own_modules_are_imported_at_the_top_of_each_file():
    """A function-local import is for an optional or heavy third-party dependency only; ours are never heavy (the
    package imports them all at `import peft_vision_ext`), and a local one would dodge an import cycle the layers
    forbid."""
    assert _function_local_imports_of_our_own_modules() == []


def test_import_reads_no_data_file():
    """The measured grid (matrix/grid.json) is read when a verdict is first asked for, not at import."""
    code = ("import peft_vision_ext, peft_vision_ext.matrix.grid as grid, peft_vision_ext.matrix.verdicts as verdicts; "
            "print(grid.load.cache_info().currsize, 'MATRIX' in vars(verdicts))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip().splitlines()[-1] == "0 False"
    assert len(peft_vision_ext.compat.MATRIX) > len(CURATED_ROWS)  # and then it is there


def test_the_method_table_feeds_presets_matrix_and_verification():
    assert SUPPORTED_METHODS == PRESET_METHODS == ("lora", "loha", "lokr", "adalora", "ia3", "ssf", "adaptformer")
    assert METHOD_NAMES == {row.name: row.title for row in CURATED_ROWS}
    for row in CURATED_ROWS:
        config = cell_config(row.name)
        assert type(config) is config_class(row.name), row.name
        assert type(config).__name__ == row.config
