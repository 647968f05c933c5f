"""The documentation: the generated function table is current, and the site builds cleanly."""

from __future__ import annotations

import importlib.util
import os
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
