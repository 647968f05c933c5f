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
    page = (tmp_path / "site" / "tutorials" / "1-astronomy-demo" / "index.html").read_text(encoding="utf-8")
    # math is rendered at build time (MathML): no TeX left in the text, no MathJax from a CDN
    assert page.count("<math") >= 5
    text = re.sub(r"<(script|style)\b.*?</\1>|<math.*?</math>", "", page, flags=re.S)
    assert "\\frac" not in text and "\\mathsf" not in text
    for html_file in (tmp_path / "site").rglob("*.html"):
        assert "mathjax@" not in html_file.read_text(encoding="utf-8"), html_file


def test_math_rendered_to_mathml_outside_code_only():
    hooks = _load("mkdocs_hooks")
    cell = (
        '<div class="jp-Cell"><div class="jp-RenderedHTMLCommon jp-RenderedMarkdown">'
        "<p>Let $a &lt; b$ and</p><p>$$\\frac{1}{2}$$</p><pre>cost = $5 and $6</pre>"
        '<p><code>$x$</code> costs \\$3</p></div></div><div class="jp-Cell">$not markdown$</div>'
    )
    out = hooks.render_math(cell)
    assert out.count('<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline">') == 1
    assert out.count('display="block"') == 1 and "<mfrac>" in out
    assert "<mo>&#x0003C;</mo>" in out  # the HTML-escaped "<" became a MathML operator
    assert "<pre>cost = $5 and $6</pre>" in out and "<code>$x$</code>" in out
    assert "$not markdown$" in out  # code cells and outputs are left alone
    page = '<p><span class="arithmatex">\\(x^2\\)</span></p><div class="arithmatex">\\[y\\]</div>'
    out = hooks.render_math(page)
    assert "arithmatex" not in out and "<msup>" in out and 'display="block"' in out


def test_index_and_navigation_list_every_tutorial():
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    index = re.sub(r"<!--.*?-->", "", index, flags=re.S)  # placeholders do not count
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = "\n".join(line.split("#")[0] for line in nav.splitlines())
    for nb in sorted((ROOT / "tutorials").glob("[0-9]*.ipynb")):
        assert f"(tutorials/{nb.name})" in index, f"docs/index.md does not list {nb.name}"
        assert f"tutorials/{nb.name}" in nav, f"mkdocs.yml nav does not list {nb.name}"


def test_installation_extras_table_lists_every_extra():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    text = (ROOT / "docs" / "installation.md").read_text(encoding="utf-8")
    for name in extras:
        assert f"| `{name}` |" in text, f"docs/installation.md's extras table omits {name}"


def _python_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_migration_guide_code_runs():
    """Every ```python block of docs/migration.md runs, in order, in one namespace."""
    path = ROOT / "docs" / "migration.md"
    blocks = _python_blocks(path)
    assert len(blocks) >= 8
    # every fenced block is one of them: a block fenced as ```py, ```pycon or ``` would not run
    fences = re.findall(r"^```.*$", path.read_text(encoding="utf-8"), flags=re.M)
    assert fences == ["```python", "```"] * len(blocks), "fence every code block as ```python"
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
