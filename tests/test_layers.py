"""The layering of DESIGN.md ("Layers"), checked on the source: lower layers never import higher ones.

Every ``import`` / ``from ... import`` statement of every module of the package is read with
``ast`` -- at module level and inside functions and methods -- and resolved to an absolute
module name. Imports under ``if TYPE_CHECKING:`` never run and are not counted.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "sparse3d"

# the array core: structure, options, ufunc policy (with temporary elision and deferred chains),
# function registry, Sparse3D (a name is a module ``sparse3d/NAME.py`` or a subpackage
# ``sparse3d/NAME/``, every file of which is core)
CORE = [
    "_structure",
    "_options",
    "_ufuncs",
    "_elision",
    "_deferred",
    "_segments",
    "_functions",
    "_unsupported",
    "core",
]
# what the core must not import: the layers above it and the integrations beside it
ABOVE_CORE = ["fit", "dask", "roi", "xarray", "psf", "legacy", "photometry"]
# the only imports of those in the core: methods of Sparse3D (and of its conversions mixin)
# that delegate on request, per module of the core/ package
CORE_LAZY_DELEGATION = {
    "core.conversions": {
        ("_Conversions.to_xarray", "sparse3d.xarray"),
        ("_Conversions.to_dask", "sparse3d.dask"),
        ("_Conversions.from_xarray", "sparse3d.xarray"),
    },
    "core.array": {
        ("Sparse3D.roi", "sparse3d.roi"),
        ("Sparse3D.fit", "sparse3d.fit"),
    },
}
# the fit sits on the core; the integrations sit on the fit, never the reverse
ABOVE_FIT = ["dask", "roi", "xarray", "psf", "legacy", "photometry"]
# the only imports of those in the fit: result methods that delegate to an integration on request
FIT_LAZY_DELEGATION = {("FitResult.to_xarray", "sparse3d.xarray")}
# third-party packages the core must not import (the function registry is Dask-free)
CORE_FORBIDDEN_EXTERNAL = ["dask", "xarray", "distributed"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports(path: Path) -> list[tuple[str, str]]:
    """``(where, module)`` for every import that runs: ``where`` is ``""`` at module level,
    else the qualified name of the enclosing function (``"Sparse3D.fit"``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, str]] = []

    def resolve(node: ast.ImportFrom) -> list[str]:
        if node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # `from . import dask` imports the module sparse3d.dask; `from .fit import X` sparse3d.fit
        return [prefix] if node.module else [f"{prefix}.{a.name}" for a in node.names]

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, scope)
                continue
            where = ".".join(scope)
            if isinstance(child, ast.Import):
                out.extend((where, a.name) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                out.extend((where, m) for m in resolve(child))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, [*scope, child.name])
            else:
                visit(child, scope)

    visit(ast.parse(path.read_text(encoding="utf-8")), [])
    return out


def _files(name: str) -> list[Path]:
    """The source files of the module or subpackage ``sparse3d.NAME``."""
    module = PKG / f"{name}.py"
    files = [module] if module.exists() else sorted((PKG / name).glob("*.py"))
    assert files, f"sparse3d.{name} has no source file"
    return files


CORE_FILES = [path for name in CORE for path in _files(name)]


def _within(module: str, names: list[str], root: str = "sparse3d") -> bool:
    return any(module == f"{root}.{n}" or module.startswith(f"{root}.{n}.") for n in names)


def test_the_import_reader_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "sparse3d"
    (pkg / "fit").mkdir(parents=True)
    src = pkg / "fit" / "normal.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "from ..core import Sparse3D\n"
        "from . import factor\n"
        "if TYPE_CHECKING:\n    from ..roi import ROISparse3D\n"
        "class A:\n    def m(self):\n        from .. import dask as _d\n        import xarray\n"
    )
    global PKG
    old, PKG = PKG, tmp_path / "sparse3d"
    try:
        found = imports(src)
    finally:
        PKG = old
    assert ("", "sparse3d.core") in found
    assert ("", "sparse3d.fit.factor") in found
    assert ("A.m", "sparse3d.dask") in found
    assert ("A.m", "xarray") in found
    assert not any(m == "sparse3d.roi" for _, m in found)  # TYPE_CHECKING only


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_core_imports_nothing_above_it(path):
    name = _module_name(path).removeprefix("sparse3d.")
    found = imports(path)
    assert found, "the reader found no import at all"
    upward = {(where, m) for where, m in found if _within(m, ABOVE_CORE)}
    external = {(where, m) for where, m in found if m.split(".")[0] in CORE_FORBIDDEN_EXTERNAL}
    assert not external, f"sparse3d.{name} imports {sorted(external)}"
    # exactly the listed lazy delegations, all inside methods: update the list on purpose
    assert upward == CORE_LAZY_DELEGATION.get(name, set()), f"sparse3d.{name} imports {sorted(upward)}"


def test_core_package_files_stay_small():
    for p in (PKG / "core").glob("*.py"):
        assert len(p.read_text(encoding="utf-8").splitlines()) < 600, p.name
    assert not (PKG / "core.py").exists()


def test_function_registry_and_ufunc_policy_never_name_dask():
    for path in _files("_functions") + _files("_ufuncs"):
        assert not any("dask" in m for _, m in imports(path)), path.name


@pytest.mark.parametrize("path", sorted((PKG / "fit").glob("*.py")), ids=lambda p: p.name)
def test_fit_imports_no_integration(path):
    upward = [(where, m) for where, m in imports(path) if _within(m, ABOVE_FIT)]
    upward = [wm for wm in upward if wm not in FIT_LAZY_DELEGATION]
    external = [(where, m) for where, m in imports(path) if m.split(".")[0] in ("dask", "xarray")]
    assert not upward and not external, f"{path.name} imports {upward + external}"


def test_fit_package_files_stay_small():
    for p in (PKG / "fit").glob("*.py"):
        assert len(p.read_text(encoding="utf-8").splitlines()) < 600, p.name
    assert not (PKG / "_fit.py").exists()


def _run(code: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, check=True)


def test_import_sparse3d_loads_no_heavy_dependency():
    heavy = ("scipy", "xarray", "dask", "numba", "sparse", "distributed", "cvxopt", "matplotlib")
    code = "import sys, sparse3d; print(' '.join(sorted(sys.modules)))"
    proc = _run(code, "-X", "importtime")
    loaded = set(proc.stdout.split())
    # -X importtime lists every module imported, in its own words (stderr)
    timed = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "sparse3d.core" in loaded and "sparse3d.core" in timed  # the readers work
    for mods in (loaded, timed):
        bad = sorted(m for m in mods if m.split(".")[0] in heavy)
        assert not bad, f"import sparse3d loads {bad[:10]}"
    assert not any(m == "sparse3d.fit" or m.startswith("sparse3d.fit.") for m in loaded)


def test_dask_operand_loads_the_dask_integration_on_first_use():
    """np.dot / np.tensordot / S.fit on Dask arrays work without importing sparse3d.dask first."""
    pytest.importorskip("dask.array")
    code = """
import sys
import numpy as np
import dask.array as da
import sparse3d
from sparse3d.testing import random_scene
scene = random_scene(3, nsources=7, imshape=(15, 17), stamp=(3, 4))
S, dense = scene.build(), scene.dense()
assert "sparse3d.dask" not in sys.modules
w = np.arange(1.0, 8.0)
lazy = S.dot(da.from_array(w, chunks=3))
assert "sparse3d.dask" in sys.modules and type(lazy).__module__.startswith("dask")
np.testing.assert_allclose(lazy.compute(), dense @ w)
img = np.random.default_rng(4).normal(size=(15, 17))
proj = np.tensordot(S, da.from_array(img), axes=([0, 1], [0, 1]))
assert type(proj).__module__.startswith("dask")
np.testing.assert_allclose(proj.compute(), np.einsum("hwk,hw->k", dense, img))
frames = np.stack([dense @ w, dense @ (2 * w)], axis=-1)
res = S.fit(da.from_array(frames), prior_mu=0.0, prior_sigma=1e6)
assert type(res.weights).__module__.startswith("dask")
A = dense.reshape(-1, 7)
ref = np.linalg.solve(A.T @ A + 1e-12 * np.eye(7), A.T @ frames.reshape(-1, 2))
np.testing.assert_allclose(res.weights.compute(), ref, rtol=1e-6, atol=1e-8)
print("ok")
"""
    assert _run(code).stdout.strip() == "ok"


# the scene fits sit on top: they use the core, the fit and the PSF models by their public
# package names only (sparse3d.fit, never sparse3d.fit.solve), and nothing below imports them
PHOTOMETRY_ALLOWED = {"sparse3d.core", "sparse3d.fit", "sparse3d.psf"}


@pytest.mark.parametrize("path", sorted((PKG / "photometry").glob("*.py")), ids=lambda p: p.name)
def test_photometry_uses_public_apis_of_the_layers_below(path):
    below = {m for _, m in imports(path) if m.startswith("sparse3d.") and not _within(m, ["photometry"])}
    assert below <= PHOTOMETRY_ALLOWED, f"{path.name} imports {sorted(below - PHOTOMETRY_ALLOWED)}"
    assert len(path.read_text(encoding="utf-8").splitlines()) < 600, path.name


def test_nothing_below_imports_photometry():
    for path in PKG.rglob("*.py"):
        if "photometry" in path.parts:
            continue
        assert not any(_within(m, ["photometry"]) for _, m in imports(path)), path


def test_every_module_stays_small():
    """A module past ~600 lines holds more than one concept: split it into a subpackage."""
    long = {
        str(p.relative_to(PKG)): n
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) >= 600
    }
    assert not long, long
