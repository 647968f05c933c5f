"""The pipeline at scale (issue 15: 10M sources on a 16384² image in <= 20 GB), in its own process.

    python -m benchmarks.scale --nsources 10000000 --imshape 16384 16384      # ~17 GB
    python -m benchmarks.scale --nsources 2500000 --imshape 8192 8192         # ~4.5 GB

*Lean inputs* are the smallest a user can hand over for the tutorial pipeline: stamp
offsets ``x``/``y`` as broadcast views of one ``(nr, nc, 1)`` stamp (zero bytes per source),
positions as ``int16`` arrays built without an int64 temporary (``int32`` when the image
needs it), phases and brightnesses in the pipeline's dtype (float32 by default: at 10M
sources a float64 ``L`` alone is 8 GB and the tutorial expression holds two such
temporaries). The process reports the peak resident memory of the whole process (the
kernel's high-water mark, inputs included), the time of each step, and a sanity check of
the model image (its sum over the brightnesses, ~1 for a normalised PSF).

The parent (``python -m benchmarks --scale``) refuses to start when ``MemAvailable`` is below
the estimate and kills the child if its resident memory passes ``--scale-limit-gb``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: Estimated peak bytes per stored stamp element of the lean float32 pipeline: positions
#: (2 + 2 B user, 2 + 2 B stored) and the two float32 temporaries of the expression (8 B).
BYTES_PER_ELEMENT = {"float32": 16, "float64": 24}


def estimate_bytes(nsources: int, imshape: tuple[int, int], stamp: int, dtype: str) -> int:
    """Estimated peak resident bytes of :func:`run` (inputs included)."""
    H, W = imshape
    return nsources * stamp * stamp * BYTES_PER_ELEMENT[dtype] + H * W * np.dtype(dtype).itemsize + 2**28


def _status_kb(key: str, pid: str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def lean_inputs(nsources: int, imshape: tuple[int, int], stamp: int, dtype: str, seed: int = 42) -> dict:
    """The tutorial's inputs, as lean as a user can make them (see the module docstring)."""
    rng = np.random.default_rng(seed)
    H, W = imshape
    pos = np.int16 if max(H, W) + stamp < np.iinfo(np.int16).max else np.int32
    R, C = np.mgrid[:stamp, :stamp] - stamp // 2
    row_int = rng.integers(0, H, nsources).astype(pos)
    col_int = rng.integers(0, W, nsources).astype(pos)
    shape = (stamp, stamp, nsources)
    return {
        "row3d": np.add(R[:, :, None].astype(pos), row_int),  # int16 from the start
        "col3d": np.add(C[:, :, None].astype(pos), col_int),
        "x3d": np.broadcast_to(R[:, :, None].astype(dtype), shape),
        "y3d": np.broadcast_to(C[:, :, None].astype(dtype), shape),
        "row_phase": rng.uniform(0, 1, nsources).astype(dtype),
        "col_phase": rng.uniform(0, 1, nsources).astype(dtype),
        "brightness": (10 ** rng.normal(0, 1.5, nsources)).astype(dtype),
        "imshape": imshape,
    }


def run(nsources: int, imshape: tuple[int, int], stamp: int = 10, dtype: str = "float32") -> dict:
    """Build the lean inputs, run the tutorial pipeline once, and report memory and times."""
    import sparse3d

    t0 = time.perf_counter()
    inp = lean_inputs(nsources, imshape, stamp, dtype)
    input_bytes = sum(a.nbytes for k, a in inp.items() if isinstance(a, np.ndarray) and 0 not in a.strides)
    rss_inputs = _status_kb("VmRSS")
    t1 = time.perf_counter()
    X = sparse3d.Sparse3D(inp["x3d"], inp["row3d"], inp["col3d"], imshape=imshape)
    Y = sparse3d.Sparse3D(inp["y3d"], inp["row3d"], inp["col3d"], imshape=imshape)
    t2 = time.perf_counter()
    sigma = 1.0
    rp, cp = inp["row_phase"], inp["col_phase"]
    L = np.exp(-0.5 * ((X - rp) ** 2 / sigma**2 + (Y - cp) ** 2 / sigma**2)) * 1 / (2 * np.pi * sigma**2)
    t3 = time.perf_counter()
    image = L.dot(inp["brightness"])
    t4 = time.perf_counter()
    flux = float(image.sum(dtype=np.float64) / inp["brightness"].sum(dtype=np.float64))
    return {
        "nsources": nsources,
        "imshape": list(imshape),
        "stamp": stamp,
        "dtype": dtype,
        "elements": nsources * stamp * stamp,
        "input_bytes": input_bytes,
        "rss_after_inputs_bytes": None if rss_inputs is None else rss_inputs * 1024,
        "peak_rss_bytes": (_status_kb("VmHWM") or 0) * 1024,
        "position_dtype": str(X.row.dtype),
        "image_dtype": str(image.dtype),
        "flux_fraction": flux,
        "times_s": {"inputs": t1 - t0, "construct": t2 - t1, "build_L": t3 - t2, "dot": t4 - t3},
    }


def available_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo``."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_guarded(
    nsources: int, imshape: tuple[int, int], stamp: int, dtype: str, limit_bytes: int, env: dict | None = None
) -> dict:
    """Run :func:`run` in a child process under a memory guard; never raises.

    Refuses to start when ``MemAvailable`` is below the estimate (plus 1 GiB), and kills the
    child when its resident memory passes ``limit_bytes`` (polled every 50 ms).
    """
    need = estimate_bytes(nsources, imshape, stamp, dtype)
    avail = available_bytes()
    base = {"nsources": nsources, "imshape": list(imshape), "estimate_bytes": need, "available_bytes": avail}
    if avail is not None and need + 2**30 > avail:
        return {
            **base,
            "status": "skipped",
            "reason": f"needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} available",
        }
    root = Path(__file__).resolve().parent.parent
    out = Path(f"/tmp/sparse3d-scale-{os.getpid()}.json")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.scale",
        "--nsources",
        str(nsources),
        "--imshape",
        *map(str, imshape),
    ]
    cmd += ["--stamp", str(stamp), "--dtype", dtype, "--json", str(out)]
    proc = subprocess.Popen(cmd, cwd=root, env=env)
    worst = 0
    while proc.poll() is None:
        rss = (_status_kb("VmRSS", str(proc.pid)) or 0) * 1024
        worst = max(worst, rss)
        if rss > limit_bytes:
            proc.kill()
            proc.wait()
            return {
                **base,
                "status": "killed",
                "reason": f"resident memory passed {limit_bytes / 2**30:.1f} GiB",
            }
        time.sleep(0.05)
    if proc.returncode != 0 or not out.exists():
        return {
            **base,
            "status": "error",
            "reason": f"exit code {proc.returncode}",
            "polled_peak_bytes": worst,
        }
    result = json.loads(out.read_text())
    out.unlink()
    return {**base, "status": "ok", **result, "polled_peak_bytes": worst}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    p.add_argument("--nsources", type=int, default=10_000_000)
    p.add_argument("--imshape", type=int, nargs=2, default=(16384, 16384), metavar=("H", "W"))
    p.add_argument("--stamp", type=int, default=10)
    p.add_argument("--dtype", choices=sorted(BYTES_PER_ELEMENT), default="float32")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    result = run(args.nsources, tuple(args.imshape), args.stamp, args.dtype)
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
