"""The fit at scale: time and peak memory of ``L.fit(image, errors=...)`` plus ``weights_err``.

One process per run (peak RSS is per process)::

    python -m benchmarks.fit_scale --nsources 250000 --imsize 2048     # ~2 GB
    python -m benchmarks.fit_scale --nsources 1000000 --imsize 4096    # ~8 GB: run alone
    python -m benchmarks.fit_scale --nsources 2000000 --imsize 8192 --no-errors-output

The inputs are the tutorial's raw arrays (``row3d``, ``col3d`` int64 and ``x3d``, ``y3d``
float64, ``(10, 10, n)`` each: 3.2 GB at 1M sources), kept alive throughout as a tutorial
user would; ``L`` is built from them with in-place NumPy (the pipeline's own memory is a
separate benchmark). The image is Poisson noise on ``L.dot(w)`` plus Gaussian read noise of
3, the errors ``sqrt(L.dot(w) + 9)``, so the pulls should have unit spread. Reported:
seconds per step and the peak resident memory of the process (``VmHWM``) after each step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from benchmarks.scene import SceneSpec, make_scene


def _hwm_gib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fit_scale", description=__doc__.splitlines()[0])
    p.add_argument("--nsources", type=int, default=250_000)
    p.add_argument("--imsize", type=int, default=2048)
    p.add_argument("--stamp", type=int, default=10)
    p.add_argument("--solver", default="auto")
    p.add_argument("--no-errors-output", action="store_true", help="skip weights_err")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    import sparse3d
    from sparse3d.fit import fit_design

    out: dict = {"nsources": args.nsources, "imshape": [args.imsize] * 2, "solver": args.solver, "steps": []}

    def step(name: str, t0: float) -> None:
        out["steps"].append({"step": name, "seconds": time.perf_counter() - t0, "peak_gib": _hwm_gib()})
        print(f"{name:28s} {out['steps'][-1]['seconds']:8.2f} s   peak {_hwm_gib():6.2f} GiB", flush=True)

    t0 = time.perf_counter()
    spec = SceneSpec(nsources=args.nsources, imshape=(args.imsize, args.imsize), stamp=args.stamp)
    sc = make_scene(spec)
    inputs = sum(a.nbytes for a in (sc.row3d, sc.col3d, sc.x3d, sc.y3d))
    out["inputs_gib"] = inputs / 2**30
    step(f"inputs ({inputs / 2**30:.2f} GiB)", t0)

    t0 = time.perf_counter()
    v = np.subtract(sc.x3d, sc.row_phase)
    v *= v
    t = np.subtract(sc.y3d, sc.col_phase)
    t *= t
    v += t
    del t
    v *= -0.5 / spec.sigma**2
    np.exp(v, out=v)
    v /= 2 * np.pi * spec.sigma**2
    L = sparse3d.Sparse3D(v, sc.row3d, sc.col3d, imshape=spec.imshape)
    del v
    step("build L", t0)

    t0 = time.perf_counter()
    rng = np.random.default_rng(1)
    model = np.asarray(L.dot(sc.brightness))
    image = rng.poisson(model).astype(np.float64)
    image += rng.normal(0, 3, image.shape)
    errors = np.sqrt(model + 9.0)  # Poisson + read noise of 3
    del model
    step("image and errors", t0)

    t0 = time.perf_counter()
    res = fit_design(L, image, imshape=L.imshape, errors=errors, solver=args.solver)
    step(f"fit ({res.solver})", t0)
    if not args.no_errors_output:
        t0 = time.perf_counter()
        err = res.weights_err
        step("weights_err", t0)
        pull = (res.weights - sc.brightness) / err
        ok = np.isfinite(pull)
        out["pull_std"] = float(np.std(pull[ok]))
        print(f"pulls: std {out['pull_std']:.3f} over {ok.sum()} sources (1 expected)")
    out["peak_gib"] = _hwm_gib()
    print(f"peak resident memory: {out['peak_gib']:.2f} GiB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
