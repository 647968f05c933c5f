"""Eager vs Dask: a time series of model frames and the fit of every star's light curve.

The workload is what a user with many frames does: frames ``(H, W, k)`` are generated (here
simulated lazily: the model cube ``S.dot(lightcurves)`` plus per-frame noise) and reduced to
something small — per-frame statistics of the model cube, and the light curves
``(nsources, k)`` fitted from the frames. The eager path holds the whole cube in memory; the
Dask paths stream it chunk by chunk, so the client's peak memory stays near the size of a
few chunks whatever the number of frames.

Each mode runs in its own subprocess so that peak memory (``ru_maxrss``) is measured
separately; ``processes`` also reports the peak of the largest worker.

    python benchmarks/dask_bench.py                                  # 200 x 1024 x 1024
    python benchmarks/dask_bench.py --frames 40 --imsize 256 --nsources 2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _scene(args):
    from sparse3d import Sparse3D
    from sparse3d.testing import gaussian_scene

    g = gaussian_scene((args.imsize, args.imsize), nsources=args.nsources, stamp_size=10, seed=0)
    values = np.exp(-((g["x3d"] - g["row_phase"]) ** 2 + (g["y3d"] - g["col_phase"]) ** 2) / 2)
    S = Sparse3D(values, g["row3d"], g["col3d"], g["imshape"])
    rng = np.random.default_rng(1)
    t = np.arange(args.frames)
    period = rng.uniform(5, 50, size=args.nsources)
    amp = rng.uniform(0, 0.2, size=args.nsources)
    lc = g["brightness"][:, None] * (1 + amp[:, None] * np.sin(2 * np.pi * t / period[:, None]))
    return S, lc


def _noise(imshape, first: int, count: int, scale: float = 0.1) -> np.ndarray:
    """Per-frame noise, seeded by the frame index, so every mode sees identical frames."""
    out = np.empty((*imshape, count))
    for j in range(count):
        out[:, :, j] = np.random.default_rng(10_000 + first + j).normal(scale=scale, size=imshape)
    return out


def _add_noise(block, block_info=None):
    first = block_info[0]["array-location"][2][0]
    return block + _noise(block.shape[:2], first, block.shape[2])


def run_mode(args) -> dict:
    if args.run_mode != "eager":  # imports are not part of the measured memory
        import dask.array  # noqa: F401
        import dask.distributed  # noqa: F401
    S, lc = _scene(args)
    out = {"mode": args.run_mode, "baseline_mib": _rss_mib()}
    if args.run_mode == "eager":
        t0 = time.perf_counter()
        cube = S.dot(lc)
        stats = cube.sum(axis=(0, 1))
        out["model_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        frames = cube + _noise(S.imshape, 0, args.frames)
        del cube
        weights = S.fit(frames).weights
        out["fit_s"] = time.perf_counter() - t0
        del frames
    else:
        import dask
        import dask.array as da

        client = None
        if args.run_mode == "processes":
            from dask.distributed import Client, LocalCluster

            cluster = LocalCluster(
                n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(cluster)
            ctx = dask.config.set(scheduler=client)
        else:
            ctx = dask.config.set(scheduler="threads", num_workers=args.workers)
        with ctx:
            w = da.from_array(lc, chunks=(S.nsources, args.chunk))
            t0 = time.perf_counter()
            cube = S.dot(w)  # lazy (H, W, k)
            stats = cube.sum(axis=(0, 1)).compute()
            out["model_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            frames = cube.map_blocks(_add_noise, dtype=cube.dtype)
            weights = S.fit(frames).weights.compute()
            out["fit_s"] = time.perf_counter() - t0
        if client is not None:
            peaks = client.run(_peak_mib)
            out["worker_peak_mib"] = max(peaks.values())
            client.close()
            cluster.close()
    out["peak_mib"] = _peak_mib()
    np.save(os.path.join(args.outdir, f"{args.run_mode}-weights.npy"), weights)
    np.save(os.path.join(args.outdir, f"{args.run_mode}-stats.npy"), stats)
    return out


def _scaled_diff(x: np.ndarray, ref: np.ndarray) -> float:
    """Largest difference, in units of the reference's RMS (faint stars' weights cross zero)."""
    return float(np.max(np.abs(x - ref)) / np.sqrt(np.mean(ref**2)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--nsources", type=int, default=20_000)
    p.add_argument("--imsize", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=10, help="frames per Dask chunk")
    p.add_argument("--workers", type=int, default=2, help="threads or worker processes")
    p.add_argument("--modes", default="eager,threads,processes")
    p.add_argument("--run-mode", help=argparse.SUPPRESS)
    p.add_argument("--outdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_mode:
        print(json.dumps(run_mode(args)))
        return

    cube_mib = args.imsize**2 * args.frames * 8 / 2**20
    chunk_mib = args.imsize**2 * args.chunk * 8 / 2**20
    print(
        f"scene: {args.nsources:,} sources on {args.imsize}x{args.imsize}, {args.frames} frames "
        f"(cube {cube_mib:,.0f} MiB; Dask chunks of {args.chunk} frames = {chunk_mib:,.0f} MiB), "
        f"{args.workers} workers"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--run-mode", mode, "--outdir", tmp]
            cmd += [f"--{k}={getattr(args, k)}" for k in ("frames", "nsources", "imsize", "chunk", "workers")]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                sys.exit(f"{mode} failed:\n{res.stderr[-3000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        ref_w = np.load(os.path.join(tmp, f"{rows[0]['mode']}-weights.npy"))
        ref_s = np.load(os.path.join(tmp, f"{rows[0]['mode']}-stats.npy"))
        for r in rows:
            w = np.load(os.path.join(tmp, f"{r['mode']}-weights.npy"))
            s = np.load(os.path.join(tmp, f"{r['mode']}-stats.npy"))
            r["max_rel_diff"] = max(_scaled_diff(w, ref_w), _scaled_diff(s, ref_s))

    ref = rows[0]
    head = (
        f"{'mode':<10} {'model s':>8} {'fit s':>8} {'x ' + ref['mode']:>9} {'client peak MiB':>16} "
        f"{'(above scene)':>14} {'worker peak MiB':>16} {'max |diff|/rms':>14}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        total, ref_total = r["model_s"] + r["fit_s"], ref["model_s"] + ref["fit_s"]
        worker = f"{r['worker_peak_mib']:,.0f}" if "worker_peak_mib" in r else "-"
        print(
            f"{r['mode']:<10} {r['model_s']:>8.2f} {r['fit_s']:>8.2f} {total / ref_total:>9.2f} "
            f"{r['peak_mib']:>16,.0f} {r['peak_mib'] - r['baseline_mib']:>14,.0f} {worker:>16} "
            f"{r['max_rel_diff']:>14.1e}"
        )
    print(
        "model s: the model cube reduced to per-frame totals; fit s: frames (model + noise) fitted "
        "to light curves.\nclient peak: ru_maxrss of the process that holds the results "
        "(the threads mode also computes there)."
    )


if __name__ == "__main__":
    main()
