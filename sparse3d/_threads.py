"""Threads for large compiled work: how many, and how work is split.

Users: many-frame fits, the first grid-stamp ``dot``, the planes scatter (``dot`` into
sparse3d 1.x's ``(k, H, W)`` layout), deferred elementwise chains, a constructor's copy and
grid check (:func:`sparse3d._kernels.elementwise_threads`), the Gaussian PSF's stamp block.
Work that is independent per frame column (the supernodal solves of many right-hand sides)
or per band of sources (the stamp right-hand sides) runs as contiguous blocks, one per
thread (:func:`run`); the passes of the elementwise pipeline and the grid and planes
scatters hand out small pieces to whichever thread is free (:func:`share`), so a
thread that starts late (its core busy) costs no waiting. Python threads: the numba kernels
release the GIL (``nogil=True``), as NumPy's loops do. Every column, every source's sum,
every value is computed by exactly the same sequence of operations whatever the split, so
the results are the same bits for any thread count. Small problems (single images) stay in
the calling thread: below :data:`PARALLEL_MIN_WORK` multiply-adds a thread costs more than it
saves.

The thread count is :func:`num_threads`: ``sparse3d.set_options(num_threads=N)``; 0 (the
default) means the environment variable ``SPARSE3D_NUM_THREADS`` if set, else
``min(MAX_DEFAULT_THREADS, usable CPUs)`` (the kernels are memory-bound: a few threads reach a
socket's bandwidth), of which :func:`threads_for` uses at most the CPUs other processes left
idle (:func:`idle_cpus`). Inside one of this module's worker threads everything runs
serially (no nested oversubscription).

This module imports neither numba nor scipy.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ._options import get_options

__all__ = ["num_threads", "requested_threads", "threads_for", "idle_cpus", "split", "run", "share", "submit"]

#: The default thread count is at most this many (and at most the usable CPUs).
MAX_DEFAULT_THREADS = 4
#: Work (multiply-adds, or values streamed) below which one thread does it all.
PARALLEL_MIN_WORK = 1 << 22
#: The environment variable read when the option ``num_threads`` is 0.
ENV_VAR = "SPARSE3D_NUM_THREADS"

_PREFIX = "sparse3d-worker"
_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
#: Work started by :func:`submit` and not finished yet: each keeps one thread busy beside the
#: caller's, which :func:`threads_for` leaves to it.
_BACKGROUND = [0]


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def requested_threads() -> int:
    """The thread count asked for explicitly: the option ``num_threads`` if set, else
    ``SPARSE3D_NUM_THREADS`` if set; 0 when neither is.

    Raises ValueError when ``SPARSE3D_NUM_THREADS`` is consulted and is not a positive integer.
    """
    n = get_options()["num_threads"]
    if n > 0:
        return int(n)
    env = os.environ.get(ENV_VAR, "").strip()
    if not env:
        return 0
    try:
        n = int(env)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"the environment variable {ENV_VAR} must be a positive integer, got {env!r}")
    return n


def num_threads() -> int:
    """The number of threads the compiled kernels may use (see the module docstring):
    :func:`requested_threads`, else ``min(MAX_DEFAULT_THREADS, usable CPUs)``."""
    return requested_threads() or min(MAX_DEFAULT_THREADS, _usable_cpus())


def _in_worker() -> bool:
    return threading.current_thread().name.startswith(_PREFIX)


def threads_for(work: float) -> int:
    """Threads for a task of ``work`` multiply-adds: 1 below :data:`PARALLEL_MIN_WORK` or
    inside a worker thread; else the count asked for (:func:`requested_threads`) when one
    was, else :func:`num_threads` at most the CPUs other processes leave idle
    (:func:`idle_cpus`, rounded), less one per background task of this process still running
    (:func:`submit`); at least 1."""
    if work < PARALLEL_MIN_WORK or _in_worker():
        return 1
    asked = requested_threads()
    if asked:
        return asked
    n = num_threads()
    idle = idle_cpus()
    n = n if idle is None else min(n, int(idle + 0.5))
    return max(1, n - _BACKGROUND[0])


#: Seconds between two looks at the machine's load (:func:`idle_cpus`).
LOAD_INTERVAL = 0.25
_LOAD: dict[str, Any] = {"time": None, "ticks": None, "own": None, "idle": None}


def _cpu_ticks() -> tuple[int, int] | None:
    """``(busy, total)`` clock ticks of all CPUs since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != b"cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


def idle_cpus() -> float | None:
    """How many CPUs other processes left idle lately: over the time since the previous look
    (at least :data:`LOAD_INTERVAL` s ago), the machine's idle CPUs plus the CPU time this
    process used, in CPUs (this process's own threads do not count as load). None before
    the first two looks, or where ``/proc/stat`` cannot be read (then every default thread
    is used).

    On a machine whose other cores are busy with other processes, threads of a
    memory-bound pass share a core with the caller and make it slower (measured on the
    shared 2-core machine: the tutorial pipeline 52.8 ms in two threads against 40.0 ms in
    one), so the default thread count follows what is free; the results are the same bits
    for any thread count. An explicit count (:func:`requested_threads`) is used as given.
    """
    now = time.monotonic()
    with _LOCK:
        last = _LOAD["time"]
        if last is not None and now - last < LOAD_INTERVAL:
            return _LOAD["idle"]
        ticks, own = _cpu_ticks(), time.process_time()
        if ticks is None:
            return None
        prev, prev_own = _LOAD["ticks"], _LOAD["own"]
        _LOAD.update(time=now, ticks=ticks, own=own)
        if prev is None or ticks[1] <= prev[1]:  # the first look, or no tick since: as before
            return _LOAD["idle"]
        busy, total = ticks[0] - prev[0], ticks[1] - prev[1]
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        others = max(0.0, busy - (own - prev_own) * hz)  # ticks other processes were busy
        idle = (os.cpu_count() or 1) * (1.0 - others / total)  # /proc/stat counts every CPU
        _LOAD["idle"] = min(float(_usable_cpus()), max(0.0, idle))
        return _LOAD["idle"]


def split(total: int, parts: int, align: int = 1) -> list[int]:
    """``parts + 1`` increasing edges from 0 to ``total`` cutting it into near-equal blocks whose
    inner edges are multiples of ``align`` (fewer blocks when ``total`` is small; never empty)."""
    parts = max(1, min(parts, total // max(align, 1)))
    edges = [0]
    for i in range(1, parts):
        e = (total * i // parts) // align * align
        if e > edges[-1]:
            edges.append(e)
    edges.append(total)
    return edges if total > 0 else [0, 0]


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None:  # threads are started on demand and then reused
            _POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix=_PREFIX)
        return _POOL


def _forget_pool_in_child() -> None:
    """A forked child has none of the parent's threads: a new pool (and lock) on first use,
    instead of one that believes it has idle workers and never runs the work."""
    global _POOL, _LOCK
    _POOL = None
    _LOCK = threading.Lock()
    _BACKGROUND[0] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def run(fn: Callable[..., Any], blocks: Sequence[tuple]) -> list[Any]:
    """``[fn(*args) for args in blocks]``, the blocks in parallel: all but the last in worker
    threads, the last in the calling thread. The first exception is raised once all are done."""
    if len(blocks) <= 1:
        return [fn(*args) for args in blocks]
    futures = [_pool().submit(fn, *args) for args in blocks[:-1]]
    try:
        last = fn(*blocks[-1])
    finally:
        done = [f.exception() for f in futures]  # waits for every block
    for err in done:
        if err is not None:
            raise err
    return [f.result() for f in futures] + [last]


def share(
    fn: Callable[[Any, Any], Any],
    items: Sequence[Any],
    threads: int,
    state: Callable[[], AbstractContextManager] | None = None,
) -> list[Any]:
    """``[fn(item, st) for item in items]``, the items handed out one at a time to ``threads``
    participants: the calling thread and ``threads - 1`` workers, each taking the next item
    not yet taken until none is left. ``state`` is entered once per participant, in its own
    thread (``with state() as st``): the participant's scratch buffers, its error state.

    Unlike :func:`run`'s one fixed block per thread, a participant that is slow to start or is
    descheduled (the other core busy with another process) costs no waiting: the others take
    its share, so on a loaded machine the work takes about as long as in one thread instead of
    twice as long. Every item is computed by the same code whoever takes it, so the results
    are the same bits for any thread count. The first exception is raised once all are done.
    """
    n = len(items)
    state = state or nullcontext
    if threads <= 1 or n <= 1:
        with state() as st:
            return [fn(item, st) for item in items]
    results: list[Any] = [None] * n
    counter = itertools.count()  # next() is atomic under the GIL: each index is taken once
    failed: list[BaseException] = []

    def participate() -> None:
        try:
            with state() as st:
                while not failed:
                    i = next(counter)
                    if i >= n:
                        return
                    results[i] = fn(items[i], st)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            failed.append(err)
            raise

    futures = [_pool().submit(participate) for _ in range(min(threads, n) - 1)]
    try:
        participate()
    except BaseException:  # noqa: BLE001 - recorded in failed
        pass
    finally:
        for f in futures:
            if not f.cancel():  # a worker that never started is not waited for
                f.exception()  # waits for a running one to finish its item
    if failed:
        raise failed[0]
    return results


def submit(fn: Callable[..., Any], *args: Any) -> Future:
    """Start ``fn(*args)`` in a worker thread (work that overlaps the caller's); its future.

    Until it finishes it counts as a busy thread: :func:`threads_for` gives the caller's other
    work one thread fewer meanwhile (no oversubscription of the cores)."""
    with _LOCK:
        _BACKGROUND[0] += 1

    def task() -> Any:
        try:
            return fn(*args)
        finally:
            with _LOCK:
                _BACKGROUND[0] -= 1

    try:
        return _pool().submit(task)
    except BaseException:
        with _LOCK:
            _BACKGROUND[0] -= 1
        raise
