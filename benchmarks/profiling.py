"""Profile one case of one implementation with cProfile.

Usage::

    python -m benchmarks.profiling build_L               # sparse3d, tutorial scene
    python -m benchmarks.profiling pipeline --impl numpy --nsources 5000 --top 20
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys

from benchmarks.cases import CASES, NEEDS_FAKE_DATA, Prepared
from benchmarks.impls import load
from benchmarks.impls.numpy_baseline import model_image
from benchmarks.scene import TUTORIAL, SceneSpec, add_fake_data, make_scene


def profile_case(
    case: str, impl: str, spec: SceneSpec, calls: int = 3, sort: str = "tottime", top: int = 15
) -> pstats.Stats:
    """Warm ``case`` up once, then profile ``calls`` calls and print the top entries.

    Parameters
    ----------
    case, impl : str
        Case and implementation names (see :data:`benchmarks.cases.CASES`).
    spec : SceneSpec
        The scene.
    calls : int
        Number of profiled calls (set-up excluded).
    sort : str
        :mod:`pstats` sort key.
    top : int
        Number of entries printed.

    Returns
    -------
    pstats.Stats
        The statistics.
    """
    scene = make_scene(spec)
    if case in NEEDS_FAKE_DATA:
        add_fake_data(scene, model_image(scene))
    prepared: Prepared = load(impl)[case](scene)
    prepared.call()
    prof = cProfile.Profile()
    for _ in range(calls):
        arg = prepared.setup() if prepared.setup is not None else None
        prof.enable()
        result = prepared.run() if prepared.setup is None else prepared.run(arg)
        prof.disable()
        del result, arg
    stats = pstats.Stats(prof, stream=sys.stdout).strip_dirs().sort_stats(sort)
    stats.print_stats(top)
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__.splitlines()[0])
    p.add_argument("case", choices=list(CASES))
    p.add_argument("--impl", default="sparse3d", choices=["sparse3d", "numpy", "pydata"])
    p.add_argument("--nsources", type=int, default=TUTORIAL.nsources)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--sort", default="tottime")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    spec = SceneSpec(nsources=args.nsources)
    profile_case(args.case, args.impl, spec, args.calls, args.sort, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
