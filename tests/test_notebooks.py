"""The tutorial notebooks: in sync with their jupytext sources, and they run without errors.

The tutorials live in ``tutorials/`` as jupytext percent scripts (the source) and generated
``.ipynb`` notebooks (regenerate them with ``python scripts/build_tutorials.py``). Here every
notebook is executed with nbclient in a fresh ``python3`` kernel of the current environment,
on a small scene (``SPARSE3D_TUTORIAL_IMSIZE``/``SPARSE3D_TUTORIAL_NSOURCES``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL_SCENE = {
    "SPARSE3D_TUTORIAL_IMSIZE": "96",
    "SPARSE3D_TUTORIAL_NSOURCES": "400",
    "SPARSE3D_TUTORIAL_NFRAMES": "20",
}


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_tutorials", ROOT / "scripts" / "build_tutorials.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _load_builder()
SCRIPTS = builder.sources()


def test_tutorials_exist():
    names = [s.stem for s in SCRIPTS]
    assert names == [
        "1-astronomy-demo",
        "2-start-here",
        "3-exploring-with-xarray",
        "4-time-series-on-dask",
        "5-fitting-a-time-series",
        "6-sub-pixel-psf-models",
        "7-sky-positions-jitter",
        "8-fitting-a-huge-scene",
    ]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_notebook_in_sync_with_source(script):
    pytest.importorskip("jupytext")
    pytest.importorskip("nbformat")
    problem = builder.out_of_sync(script)
    assert problem is None, f"{problem}; regenerate with: python scripts/build_tutorials.py {script.stem}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_notebook_executes(script, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    for cell in nb.cells:  # run from a clean slate, not on the stored outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    builder.execute(nb, cwd=tmp_path, env=SMALL_SCENE, timeout=600)  # raises CellExecutionError
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
        or (out.output_type == "stream" and out.name == "stderr" and "Traceback" in out.text)
    ]
    assert not errors, errors
