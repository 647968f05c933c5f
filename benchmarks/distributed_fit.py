"""One scene larger than a process: the distributed scene fit (``SourceChunked.fit``) on a LocalCluster.

The scene is generated where it is used, so that no process ever holds all of it: the image
is cut into square cells; the sources of a cell (positions, fluxes, 10 x 10 Gaussian stamps)
follow from a seed and the cell index. Each source chunk is one cell (its stamps computed on
a worker by ``SourceChunked.from_function``), and each block of the Dask image is the model of
the sources of its cell and the eight around it plus unit Gaussian noise, stored as float32.
Errors are unit.

Modes (each in its own process, so that peak memory is measured per process):

``distributed`` (default)
    LocalCluster of ``--workers`` processes (``--memory-limit`` each); the image is simulated
    and persisted on the workers first (``image_s``, not part of the fit), then the fit (its
    wall time includes computing the stamps on the workers); reports iterations, the client
    process's peak RSS (it also runs the scheduler) and every worker's peak RSS.
``eager``
    The same scene assembled in one process (``Sparse3D``) and fitted by ``S.fit`` (errors
    included): the baseline for time per source.
``check``
    Both in one process on a scene small enough for the eager fit: the distributed fluxes
    must equal the eager ones within 1e-3 of each 1-sigma error and the errors within 1 %.

    python benchmarks/distributed_fit.py --mode check --imsize 2048 --nsources 200000
    python benchmarks/distributed_fit.py --mode eager --imsize 2048 --nsources 200000
    python benchmarks/distributed_fit.py --imsize 16384 --nsources 2000000 --memory-limit 6GiB \
        --baseline 2048:200000     # then the eager fit of 200,000 sources, side by side
    python benchmarks/distributed_fit.py --smoke        # 256 x 256, 4,000 sources, seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

import numpy as np

STAMP = 10
SIGMA = 1.2


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Scene:
    """Sources laid out cell by cell; everything about a cell follows from ``(seed, cell)``."""

    def __init__(self, imsize: int, nsources: int, cell: int = 512, seed: int = 0):
        self.imsize, self.cell, self.seed = imsize, min(cell, imsize), seed
        self.ncell = -(-imsize // self.cell)
        self.per_cell = max(1, nsources // self.ncell**2)
        self.nsources = self.per_cell * self.ncell**2

    def sources(self, c: int) -> dict:
        """Stamp positions and phases of cell ``c`` (raster order)."""
        ci, cj = divmod(c, self.ncell)
        rng = np.random.default_rng([self.seed, c])
        lo = np.array([ci, cj])[:, None] * self.cell
        hi = np.minimum(lo + self.cell, self.imsize)
        pos = lo + rng.uniform(size=(2, self.per_cell)) * (hi - lo)
        flux = 10 ** rng.uniform(1.5, 3.5, self.per_cell)
        ip = np.floor(pos).astype(np.int64)
        R, C = np.mgrid[:STAMP, :STAMP] - STAMP // 2
        return {
            "row": R[:, :, None] + ip[0],
            "col": C[:, :, None] + ip[1],
            "row_phase": pos[0] - ip[0],
            "col_phase": pos[1] - ip[1],
            "flux": flux,
        }

    # -- what the fit sees ---------------------------------------------------------------
    def source_chunked(self):
        import dask.array as da

        from sparse3d.dask import SourceChunked

        nc, m = self.ncell**2, self.per_cell

        def field(name, shape):
            def block(block_id=None):
                return self.sources(block_id[-1])[name].reshape(shape + (m,))

            chunks = tuple((s,) for s in shape) + ((m,) * nc,)
            dtype = np.int64 if name in ("row", "col") else np.float64
            return da.map_blocks(block, chunks=chunks, dtype=dtype)

        params = {"row_phase": field("row_phase", ()), "col_phase": field("col_phase", ())}
        return SourceChunked.from_function(
            stamps,
            params,
            field("row", (STAMP, STAMP)),
            field("col", (STAMP, STAMP)),
            (self.imsize, self.imsize),
            chunks=m,
        )

    def image_block(self, i: int, j: int) -> np.ndarray:
        """Model + unit noise on the cell ``(i, j)``: its sources and its eight neighbours'."""
        r0, c0 = i * self.cell, j * self.cell
        h, w = min(self.cell, self.imsize - r0), min(self.cell, self.imsize - c0)
        out = np.zeros((h, w))
        for a in range(max(0, i - 1), min(self.ncell, i + 2)):
            for b in range(max(0, j - 1), min(self.ncell, j + 2)):
                s = self.sources(a * self.ncell + b)
                v = stamps(s["row_phase"], s["col_phase"]) * s["flux"]
                rr, cc = s["row"] - r0, s["col"] - c0
                ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
                np.add.at(out, (rr[ok], cc[ok]), v[ok])
        rng = np.random.default_rng([self.seed, 1, i, j])
        return (out + rng.normal(size=(h, w))).astype(np.float32)  # half the memory on the workers

    def image(self):
        import dask.array as da

        def block(block_id=None):
            return self.image_block(*block_id)

        chunks = tuple(
            (self.cell,) * (self.imsize // self.cell)
            + ((self.imsize % self.cell,) if self.imsize % self.cell else ())
            for _ in range(2)
        )
        return da.map_blocks(block, chunks=chunks, dtype=np.float32)

    def sparse3d(self):
        from sparse3d import Sparse3D

        parts = [self.sources(c) for c in range(self.ncell**2)]
        cat = {k: np.concatenate([p[k] for p in parts], axis=-1) for k in parts[0]}
        values = stamps(cat["row_phase"], cat["col_phase"])
        return Sparse3D(values, cat["row"], cat["col"], (self.imsize, self.imsize)), cat["flux"]


def stamps(row_phase, col_phase):
    """10 x 10 Gaussian stamps (``SIGMA`` pixels) centred at the sub-pixel phases."""
    R, C = np.mgrid[:STAMP, :STAMP] - STAMP // 2
    return np.exp(-((R[:, :, None] - row_phase) ** 2 + (C[:, :, None] - col_phase) ** 2) / (2 * SIGMA**2))


# -------------------------------------------------------------------------------------------
def run_distributed(args, scene: Scene) -> dict:
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=args.memory_limit,
            dashboard_address=None,
        )
    client = Client(cluster)
    try:
        from distributed import wait

        SC = scene.source_chunked()
        t0 = time.perf_counter()  # the image, simulated on the workers: not part of the fit
        data = client.persist(scene.image())
        wait(data)
        image_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = SC.fit(data, tile_size=args.tile_size, halo=args.halo, client=client)
        wall = time.perf_counter() - t0
        workers = client.run(_peak_mib)
    finally:
        client.close()
        cluster.close()
    return {
        "mode": "distributed",
        "imsize": scene.imsize,
        "nsources": scene.nsources,
        "workers": args.workers,
        "memory_limit": args.memory_limit,
        "tile_size": args.tile_size,
        "halo": args.halo,
        "n_tiles": res.n_tiles,
        "n_iterations": res.n_iterations,
        "converged": res.converged,
        "timings_s": res.timings,
        "image_s": image_s,
        "wall_s": wall,
        "us_per_source": 1e6 * wall / scene.nsources,
        "client_peak_mib": _peak_mib(),
        "worker_peak_mib": sorted(workers.values()),
        "_result": res,
    }


def run_eager(args, scene: Scene) -> dict:
    t0 = time.perf_counter()
    S, _ = scene.sparse3d()
    data = np.concatenate(
        [
            np.concatenate([scene.image_block(i, j) for j in range(scene.ncell)], axis=1)
            for i in range(scene.ncell)
        ]
    )
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = S.fit(data)
    err = res.weights_err  # computed on first access: part of the fit
    wall = time.perf_counter() - t0
    return {
        "mode": "eager",
        "imsize": scene.imsize,
        "nsources": scene.nsources,
        "scene_build_s": build,
        "wall_s": wall,
        "us_per_source": 1e6 * wall / scene.nsources,
        "peak_mib": _peak_mib(),
        "_result": (res.weights, err),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["distributed", "eager", "check"], default="distributed")
    p.add_argument("--imsize", type=int, default=2048)
    p.add_argument("--nsources", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="6GiB")
    p.add_argument("--tile-size", type=int, default=2048)
    p.add_argument("--halo", type=int, default=2 * STAMP)
    p.add_argument(
        "--smoke", action="store_true", help="256 x 256, 4,000 sources, 64-pixel tiles, check mode"
    )
    p.add_argument(
        "--baseline",
        metavar="IMSIZE:NSOURCES",
        help="after the distributed run, the eager fit of this scene in a fresh process (e.g. 2048:200000); "
        "reports the ratio of the times per source",
    )
    p.add_argument("--json", help="append the result (one JSON line) to this file")
    args = p.parse_args(argv)
    if args.smoke:
        args.imsize, args.nsources, args.tile_size, args.mode = 256, 4000, 64, "check"
    scene = Scene(args.imsize, args.nsources, cell=min(512, args.tile_size))
    out: dict = {}
    if args.mode in ("distributed", "check"):
        out = run_distributed(args, scene)
    if args.mode == "eager":
        out = run_eager(args, scene)
    if args.mode == "check":
        dist = out
        eager = run_eager(args, scene)
        w, e = eager["_result"]
        ok = np.isfinite(e)
        dw = np.abs(dist["_result"].weights - w)[ok] / e[ok]
        de = np.abs(dist["_result"].weights_err[ok] / e[ok] - 1)
        out = {
            "mode": "check",
            "imsize": scene.imsize,
            "nsources": scene.nsources,
            "max_dw_over_sigma": float(dw.max(initial=0)),
            "max_rel_err_diff": float(de.max(initial=0)),
            "distributed": {k: v for k, v in dist.items() if not k.startswith("_")},
            "eager": {k: v for k, v in eager.items() if not k.startswith("_")},
            "ok": bool(dw.max(initial=0) < 1e-3 and de.max(initial=0) < 1e-2),
        }
    out = {k: v for k, v in out.items() if not k.startswith("_")}
    if args.baseline and args.mode == "distributed":
        size, count = args.baseline.split(":")
        cmd = [sys.executable, __file__, "--mode", "eager", "--imsize", size, "--nsources", count]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        base = json.loads(proc.stdout.strip().splitlines()[-1])
        out["eager_baseline"] = base
        out["us_per_source_ratio"] = out["us_per_source"] / base["us_per_source"]
    line = json.dumps(out)
    print(line)
    if args.json:
        with open(args.json, "a") as f:
            f.write(line + "\n")
    return 0 if out.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
