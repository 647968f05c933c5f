"""Library-wide options, and the guard against silent huge dense allocations."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

__all__ = ["DenseAllocationError", "get_options", "set_options"]

_DEFAULTS = {"max_dense_bytes": 2 * 1024**3, "buffer_pool_bytes": 256 * 1024**2, "num_threads": 0}
# Process-wide (not thread-local): the limits must reach Dask workers' threads and any
# thread pool the caller uses. The lock makes each update atomic.
_LOCK = threading.Lock()
_options = dict(_DEFAULTS)


class DenseAllocationError(MemoryError):
    """Raised *before* an operation allocates an array larger than ``max_dense_bytes``.

    Raise the limit with :func:`sparse3d.set_options` (``max_dense_bytes=...``) or, for
    :meth:`Sparse3D.todense`, pass ``force=True``.
    """


def get_options() -> dict:
    """The options in force (a copy); they are process-wide, shared by all threads."""
    return dict(_options)


@contextlib.contextmanager
def _restore(previous: dict) -> Iterator[None]:
    global _options
    try:
        yield
    finally:
        with _LOCK:
            _options = previous


def set_options(
    *,
    max_dense_bytes: int | None = None,
    buffer_pool_bytes: int | None = None,
    num_threads: int | None = None,
) -> contextlib.AbstractContextManager:
    """Set library options; use as a plain call or as a context manager.

    Options are **process-wide**: they apply in every thread (Dask's threaded scheduler,
    thread pools), not only in the calling one. Used as a context manager, the previous
    options are restored on exit; two threads changing options at the same time therefore
    see each other's settings.

    Parameters
    ----------
    max_dense_bytes : int
        Largest dense allocation (in bytes) that an operation may make implicitly: the
        image of a ``dot``, a CSR row pointer, ``todense()``. Default 2 GiB.
    buffer_pool_bytes : int
        Bytes of value buffers of dead arrays kept for reuse by new arrays of the same shape
        and dtype (no fresh page faults; see :mod:`sparse3d._pool`). Buffers above a quarter
        of it are never kept. Default 256 MiB; 0 disables the pool.
    num_threads : int
        Threads that large operations may use: many-frame fits (the right-hand sides, the
        solves) and the first ``dot`` of a grid-stamp array (see :mod:`sparse3d._threads`);
        deferred elementwise chains and a constructor's copy and grid check use them only
        when the count is set. Results are the same bits whatever the count. 0 (default): the
        environment variable ``SPARSE3D_NUM_THREADS`` if set, else ``min(4, usable CPUs)``;
        1 runs everything in the calling thread.

    Examples
    --------
    >>> import sparse3d
    >>> with sparse3d.set_options(max_dense_bytes=2**34):
    ...     pass
    """
    global _options
    current = get_options()
    options = {}
    given = (
        ("max_dense_bytes", max_dense_bytes),
        ("buffer_pool_bytes", buffer_pool_bytes),
        ("num_threads", num_threads),
    )
    for name, value in given:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int; got {value!r}")
        options[name] = value
    with _LOCK:
        _options = {**current, **options}
    return _restore(current)


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_dense_allocation(nbytes: int, what: str | Callable[[], str]) -> None:
    """Raise :class:`DenseAllocationError` if ``what`` would need more than the limit.

    ``what`` names the result; a callable returning the name is called only when the error is
    raised (a hot path, e.g. one product per model of a jitter loop, formats nothing).
    """
    limit = get_options()["max_dense_bytes"]
    if nbytes > limit:
        if callable(what):
            what = what()
        raise DenseAllocationError(
            f"{what} would allocate {_format_bytes(nbytes)}, above max_dense_bytes="
            f"{_format_bytes(limit)}; work on a cutout (S[r0:r1, c0:c1]) or raise the limit "
            "with sparse3d.set_options(max_dense_bytes=...)"
        )
