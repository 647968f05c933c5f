"""Turn the tutorial sources (jupytext percent scripts) into executed ``.ipynb`` notebooks.

The ``tutorials/*.py`` files are the source of truth; the ``.ipynb`` next to each one is
generated from it, executed on a small scene so that the stored outputs (which the
documentation renders) stay a modest size.

Usage::

    python scripts/build_tutorials.py            # regenerate and execute every notebook
    python scripts/build_tutorials.py 2-start-here  # only some (names without extension)
    python scripts/build_tutorials.py --no-execute  # regenerate without running
    python scripts/build_tutorials.py --check       # exit 1 if a notebook is out of sync

Needs ``jupytext``, ``nbformat``, ``nbclient`` and ``ipykernel``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"

#: Scene used for the stored outputs (the tutorials default to the full 1024², 50,000 stars).
STORED_SCENE = {
    "SPARSE3D_TUTORIAL_IMSIZE": "256",
    "SPARSE3D_TUTORIAL_NSOURCES": "3000",
    "SPARSE3D_TUTORIAL_NFRAMES": "50",
}


def sources() -> list[Path]:
    """Every tutorial source script, in order."""
    return sorted(p for p in TUTORIALS.glob("*.py") if p.name[0].isdigit())


def read_source(path: Path):
    """The notebook described by a percent-format script (no outputs)."""
    import jupytext

    return jupytext.read(path, fmt="py:percent")


def cell_signature(nb) -> list[tuple[str, str]]:
    """What must agree between a script and its notebook: cell types and sources."""
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def out_of_sync(script: Path) -> str | None:
    """A message if ``script``'s notebook is missing or differs from it, else None."""
    import nbformat

    ipynb = script.with_suffix(".ipynb")
    if not ipynb.exists():
        return f"{ipynb.name} is missing"
    expected = cell_signature(read_source(script))
    actual = cell_signature(nbformat.read(ipynb, as_version=4))
    if expected != actual:
        for i, (e, a) in enumerate(zip(expected, actual)):
            if e != a:
                return f"{ipynb.name} differs from {script.name} at cell {i}: {a[1][:60]!r} vs {e[1][:60]!r}"
        return f"{ipynb.name} has {len(actual)} cells, {script.name} has {len(expected)}"
    return None


def execute(nb, cwd: Path, env: dict[str, str] | None = None, timeout: int = 1200):
    """Run ``nb`` in place with the ``python3`` kernel of the current environment."""
    from nbclient import NotebookClient

    env = dict(env or {})
    # the kernel imports sparse3d from this working tree, installed or not
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        )
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def build(script: Path, run: bool = True, env: dict[str, str] | None = None) -> Path:
    """Write ``script``'s ``.ipynb`` (executed unless ``run`` is false)."""
    import nbformat

    nb = read_source(script)
    if run:
        execute(nb, script.parent, STORED_SCENE if env is None else env)
    # keep the stored notebooks free of run-specific noise
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nb.metadata.setdefault("language_info", {"name": "python"})
    out = script.with_suffix(".ipynb")
    nbformat.write(nb, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="tutorial names (default: all)")
    parser.add_argument("--no-execute", action="store_true", help="do not run the notebooks")
    parser.add_argument("--check", action="store_true", help="only check that notebooks are in sync")
    args = parser.parse_args(argv)
    scripts = sources()
    if args.names:
        wanted = {n.removesuffix(".py").removesuffix(".ipynb") for n in args.names}
        scripts = [s for s in scripts if s.stem in wanted]
    if args.check:
        problems = [m for m in map(out_of_sync, scripts) if m]
        print("\n".join(problems) or "notebooks in sync")
        return 1 if problems else 0
    for script in scripts:
        out = build(script, run=not args.no_execute)
        print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
