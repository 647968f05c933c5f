"""Import time of a module, measured in fresh interpreters."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _cumulative_us(stderr: str, module: str) -> int | None:
    """Cumulative microseconds of ``module`` in ``-X importtime`` output."""
    for line in stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() == module:
            return int(parts[1].strip())
    return None


def measure_import(
    module: str,
    repeats: int = 5,
    sys_path_first: str | None = None,
    cwd: Path | None = None,
    env: dict | None = None,
) -> dict:
    """Time ``import module`` in ``repeats`` fresh interpreters.

    Parameters
    ----------
    module : str
        Top-level module name, e.g. ``"sparse3d"`` or ``"numpy"``.
    repeats : int
        Number of fresh processes; the first is the coldest.
    sys_path_first : str, optional
        Directory put first on ``sys.path`` (for ``sparse3d==1.2.11``).
    cwd : pathlib.Path, optional
        Working directory (the repository root, so ``sparse3d`` is found).
    env : dict, optional
        Environment of the child processes.

    Returns
    -------
    dict
        ``cumulative_s`` (median of ``-X importtime``'s cumulative time of
        the module, which includes its dependencies such as NumPy),
        ``first_cumulative_s``, ``wall_s`` (median wall time of the child
        minus that of an empty child) and ``status``.
    """
    code = f"import {module}"
    if sys_path_first:
        code = f"import sys; sys.path.insert(0, {sys_path_first!r}); {code}"
    env = dict(os.environ if env is None else env)
    cums, walls, empties = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], cwd=cwd, env=env, check=True)
        empties.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code], cwd=cwd, env=env, capture_output=True, text=True
        )
        walls.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            return {"status": "error", "error": proc.stderr.strip().splitlines()[-1:]}
        us = _cumulative_us(proc.stderr, module)
        if us is None:
            return {"status": "error", "error": f"{module} not in -X importtime output"}
        cums.append(us / 1e6)
    return {
        "status": "ok",
        "cumulative_s": statistics.median(cums),
        "first_cumulative_s": cums[0],
        "wall_s": statistics.median(walls) - statistics.median(empties),
        "repeats": repeats,
    }
