"""The documentation: the generated function table is current, and the site builds cleanly."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_function_table_is_current():
    gen = _load("gen_function_table")
    current = (ROOT / "docs" / "functions.md").read_text(encoding="utf-8")
    assert current == gen.render(), "docs/functions.md is stale: run python scripts/gen_function_table.py"


def test_function_table_lists_every_registered_function():
    from sparse3d._functions import HANDLED_FUNCTIONS
    from sparse3d._unsupported import UNSUPPORTED_FUNCTIONS, function_key

    text = (ROOT / "docs" / "functions.md").read_text(encoding="utf-8")
    keys = [function_key(f) for f in HANDLED_FUNCTIONS] + list(UNSUPPORTED_FUNCTIONS)
    missing = [k for k in keys if f"`{k.replace('numpy.', 'np.', 1)}`" not in text]
    assert not missing


def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_jupyter"):
        pytest.importorskip(module)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        cwd=tmp_path,  # keeps mkdocs-jupyter's .cache out of the repository
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "tutorials" / "1-astronomy-demo" / "index.html").exists()


def _python_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_migration_guide_code_runs():
    """Every ```python block of docs/migration.md runs, in order, in one namespace."""
    blocks = _python_blocks(ROOT / "docs" / "migration.md")
    assert len(blocks) >= 8
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/migration.md block {i}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message is the report
            raise AssertionError(f"docs/migration.md block {i} failed:\n{block}") from exc


def test_migration_guide_names_every_1x_name():
    """The guide's tables mention every public name of the 1.x classes (kept in sparse3d.legacy)."""
    text = (ROOT / "docs" / "migration.md").read_text(encoding="utf-8")
    from sparse3d import legacy

    names = {"ROISparse3D", "Sparse3D", "stack", "translate", "reset", "clear", "dot", "multiply", "tocoo"}
    names |= {"tocsr", "tocsc", "toarray", "to_ROISparse3D", "to_Sparse3D", "copy", "coord", "cooshape"}
    names |= {"nsubimages", "subshape", "subdata", "subrow", "subcol", "subdepth", "nROIs", "ROI_size"}
    names |= {"ROI_corners", "get_ROI_mask"}
    missing = sorted(n for n in names if f"`{n}" not in text and f".{n}" not in text)
    assert not missing
    assert set(legacy.__all__) <= names
    assert "is coming" not in text
