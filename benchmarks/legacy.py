"""Install ``sparse3d==1.2.11`` into a cache directory for the comparison.

Both versions share the import name ``sparse3d``, so the old one is installed
with ``pip install --target`` into ``benchmarks/.cache/`` and imported only in
a worker whose ``sys.path`` starts with that directory.  It is installed with
``--no-deps`` so that it runs on the *same* NumPy/SciPy as the other
implementations; a requirement the running interpreter lacks is then
installed into the same directory.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

LEGACY_VERSION = "1.2.11"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"


def legacy_dir(cache_dir: Path = CACHE_DIR) -> Path:
    """Directory holding the cached install."""
    return cache_dir / f"sparse3d-{LEGACY_VERSION}"


def _installed(target: Path) -> bool:
    dists = metadata.distributions(path=[str(target)])
    return any(d.metadata["Name"] == "sparse3d" and d.version == LEGACY_VERSION for d in dists)


def _missing_requirements(target: Path) -> list[str]:
    """Requirements of the cached install that the interpreter cannot import."""
    from packaging.requirements import Requirement

    dist = next(d for d in metadata.distributions(path=[str(target)]) if d.metadata["Name"] == "sparse3d")
    missing = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(str(req))
            continue
        if have not in req.specifier:
            missing.append(str(req))
    return missing


def ensure_legacy(cache_dir: Path = CACHE_DIR, quiet: bool = True) -> Path:
    """Install ``sparse3d==1.2.11`` into the cache unless it is already there.

    Parameters
    ----------
    cache_dir : pathlib.Path
        The cache directory (``benchmarks/.cache`` by default).
    quiet : bool
        Pass ``-q`` to pip.

    Returns
    -------
    pathlib.Path
        The directory to put first on ``sys.path``.

    Raises
    ------
    RuntimeError
        If pip fails.
    """
    target = legacy_dir(cache_dir)
    if _installed(target):
        return target
    target.mkdir(parents=True, exist_ok=True)
    ignore = cache_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# installs made by the benchmark suite\n*\n")
    base = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--target",
        str(target),
        "--upgrade",
    ]
    if quiet:
        base.append("-q")
    _pip(base + ["--no-deps", f"sparse3d=={LEGACY_VERSION}"])
    missing = _missing_requirements(target)
    if missing:
        _pip(base + missing)
    return target


def _pip(cmd: list[str]) -> None:
    print("  $ " + " ".join(cmd[2:]), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
