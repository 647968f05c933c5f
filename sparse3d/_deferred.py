"""Deferred elementwise chains: a run of float ufuncs evaluated in one pass over the values.

A chain such as ``np.exp(-0.5 * ((X - rp) ** 2 + (Y - cp) ** 2))`` makes eight passes over
the values when every operator computes its result at once, even with the buffers of
temporaries reused: eight reads and eight writes of the whole values block. Here an
operator may instead return an array whose values are *deferred*: it records the ufunc and
its operands (a :class:`Node`) and computes nothing. The first access to the values
(``S._values``: a product, a conversion, ``S.data``, an operator that is not deferred, ...)
evaluates the whole recorded expression in cache-sized chunks, every ufunc of the chain on
one chunk before the next chunk is read, so the leaves are read once and the result is
written once.

Why the results and the behaviour are those of the eager path:

* **Same values, bit for bit.** Each node applies the same NumPy ufunc to the same operands
  (the same Python scalars, per-source arrays and values dtypes, so NumPy resolves the same
  loop and result dtype) into an ``out=`` buffer of the dtype it would have returned; an
  elementwise ufunc computes every element independently of the others, so computing it a
  chunk at a time changes nothing. Chunks are contiguous, like the eager path's arrays.
* **Same errors and warnings, at the same place.** An operation is deferred only when it
  provably sets no floating-point flag that NumPy's error state would report: either every
  such kind (``over``, ``invalid``, ``divide``) is ``"ignore"``, or interval bounds of its
  operands (finite ``[lo, hi]`` of the leaves' values and of every intermediate, widened
  for rounding) show that no overflow, no invalid operation and no division by zero can
  occur. ``under`` must be ``"ignore"`` (NumPy's default). Otherwise the operation runs
  eagerly, exactly as before, and raises or warns where it is written. Evaluation later
  runs under ``np.errstate(all="ignore")``, which reproduces what the operations did when
  they were recorded (nothing reportable).
* **Immutability.** A node holds the leaves' read-only values buffers (so the buffer pool
  and in-place reuse of temporaries, which count references, never touch them) and owned
  copies of per-source operands (a caller modifying its array later changes nothing).
* **Stamp semantics.** Only operands that broadcast straight onto the stamp block are
  recorded: Sparse3D arrays of one (non-grouped) structure, scalars and per-source vectors;
  image-shaped operands (gathered at the stamp pixels) take the eager path.

Runs of two or more cheap operations (everything but ``exp``) of one dtype, each result used
once, are evaluated on blocks of at least :data:`COMPILED_MIN_ELEMENTS` by one numba loop
generated for the run (:mod:`sparse3d._segments`, the same bits); float64 ``exp`` stays
NumPy's SIMD loop, float32 ``exp`` joins the loop where its bits are NumPy's
(:mod:`sparse3d._exp_kernels`). A chain computed by one loop has no intermediates, so its
chunks are just the pieces threads share (:data:`PIECES_PER_THREAD` each).

Which operations are deferred: :data:`DEFERRED_UFUNCS` (add, subtract, multiply, true
division, negative, positive, square, exp) on float32/float64 arrays of at least
:data:`MIN_ELEMENTS` values, with no keyword arguments, in chains of at most
:data:`MAX_NODES` operations (a longer chain evaluates its recorded part first).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from . import _kernels, _pool, _threads

__all__ = ["Node", "defer", "evaluate", "MIN_ELEMENTS", "MAX_NODES", "DEFERRED_UFUNCS"]

#: Arrays with fewer values are computed eagerly (a pass over them is already cheap).
MIN_ELEMENTS = 1 << 18
#: Operations recorded in one expression at most.
MAX_NODES = 16
#: Elements per chunk: each live intermediate holds one chunk (512 KiB in float64), so a
#: chain's working set stays in the L2/L3 caches; smaller chunks cost more in per-call
#: overhead than they gain (measured on the tutorial scene: 16K elements 1.3x slower).
CHUNK = 1 << 16
#: A chain with intermediates on a large block takes up to this many chunks at a time (2 MiB
#: of float64 per intermediate and thread), as long as every thread still gets
#: :data:`PIECES_PER_THREAD` pieces: each piece costs a few Python calls under the GIL, which
#: the other thread waits for. Measured on the tutorial's float64 pipeline (its ``exp``
#: chain, 5 M values, two threads; four rounds in one process): 1, 2 and 4 chunks took
#: 22.9-24.3, 21.7-24.7 and 21.0-22.1 ms; float32 (one compiled loop, no intermediates) is
#: unaffected.
SCRATCH_CHUNKS = 4

DEFERRED_UFUNCS = frozenset(
    (np.add, np.subtract, np.multiply, np.true_divide, np.negative, np.positive, np.square, np.exp)
)
_FLOAT_DTYPES = frozenset((np.dtype(np.float32), np.dtype(np.float64)))
_REPORTED_KINDS = ("over", "invalid", "divide")
#: Relative widening of every bound (float32 rounds to 2**-24; intervals are computed in float64).
_WIDEN = 2.0**-20


class Node:
    """One recorded ufunc call: ``func(*args)`` with result ``dtype`` and value ``bounds``.

    ``args`` holds Nodes, read-only values blocks ``(nr, nc, n)`` (leaves), per-source
    arrays ``(1, 1, n)`` or ``(1, 1, 1)`` owned here, and scalars (Python or NumPy scalars,
    0-d arrays). ``bounds`` is a finite ``(lo, hi)`` containing every value, or None.
    ``size`` is the number of distinct nodes in the expression.
    """

    __slots__ = ("func", "args", "dtype", "bounds", "size")

    def __init__(self, func, args, dtype, bounds, size):
        self.func, self.args, self.dtype, self.bounds, self.size = func, args, dtype, bounds, size


# -- recording --------------------------------------------------------------------------------
def defer(ufunc, inputs, kwargs, sparse3d_type):
    """A Sparse3D with the deferred result of ``ufunc(*inputs)``, or None to compute it now."""
    if ufunc not in DEFERRED_UFUNCS or kwargs:
        return None
    structure = None
    args = []
    for x in inputs:
        if isinstance(x, sparse3d_type):
            if type(x) is not sparse3d_type:
                return None
            s = x._structure
            if structure is None:
                structure = s
            elif s is not structure:
                return None  # equal structures or an error: the eager path decides
            if s.grouped or s.nelements < MIN_ELEMENTS or x.dtype not in _FLOAT_DTYPES:
                return None
            node = x._lazy
            if node is not None:
                args.append(node)
                continue
            values = x._values
            if not values.flags.c_contiguous:
                return None
            args.append(values)
        else:
            op = _small_operand(x)
            if op is None:
                return None
            args.append(op)
    if structure is None:
        return None
    n = structure.nsources
    if any(isinstance(a, np.ndarray) and a.ndim == 1 and a.shape[0] not in (1, n) for a in args):
        return None  # per-source operands of another length: the eager path's error
    err = np.geterr()
    if err["under"] != "ignore":
        return None
    dtype = _resolve(ufunc, args)
    if dtype not in _FLOAT_DTYPES:
        return None
    size = 1 + _count_nodes(args)
    if size > MAX_NODES:
        return None
    bounds = _result_bounds(ufunc, args, dtype, inputs)  # also kept for the next operations
    if bounds is None and any(err[k] != "ignore" for k in _REPORTED_KINDS):
        return None  # a reportable flag is possible: compute it now, where it is written
    return sparse3d_type._from_node(Node(ufunc, tuple(args), dtype, bounds, size), structure)


def _small_operand(x):
    """A scalar or per-source operand as recorded (arrays copied: owned here), or None.

    Per-source operands (``(n,)``, ``(1, n)``, ``(1, 1, n)``) become 1-D copies; 0-d arrays
    0-d copies. Anything else (image-shaped, stamp-shaped, non-numeric) returns None: the
    eager path handles it (a gather or an error).
    """
    if type(x) in (int, float):
        return x
    if isinstance(x, np.generic):
        return x if x.dtype.kind in "iuf" else None
    if type(x) is not np.ndarray or x.dtype.kind not in "iuf" or not x.dtype.isnative:
        return None
    if x.ndim > 3 or any(d != 1 for d in x.shape[:-1]):
        return None
    out = np.array(x.reshape(x.shape[-1:]), copy=True)  # 0-d stays 0-d
    out.flags.writeable = False
    return out


def _count_nodes(args) -> int:
    seen: set[int] = set()
    stack = [a for a in args if isinstance(a, Node)]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(a for a in node.args if isinstance(a, Node))
    return len(seen)


def _resolve(ufunc, args):
    """The dtype NumPy's ``ufunc`` returns for these operands (None if it cannot tell)."""
    dtypes = []
    for a in args:
        if isinstance(a, Node):
            dtypes.append(a.dtype)
        elif type(a) in (int, float):
            dtypes.append(type(a))  # weakly typed Python scalars (NEP 50)
        else:
            dtypes.append(a.dtype)
    try:
        return ufunc.resolve_dtypes((*dtypes, None))[-1]
    except (TypeError, ValueError):
        return None


# -- interval bounds --------------------------------------------------------------------------
def _bounds_of(a, x):
    """Finite ``(lo, hi)`` of an operand's values, or None (NaN, inf, or unknown)."""
    if isinstance(a, Node):
        return a.bounds
    if isinstance(a, np.ndarray) and a.ndim == 3:  # a leaf: the values of the Sparse3D ``x``
        return _leaf_bounds(x)
    if isinstance(a, np.ndarray) and a.ndim == 1:  # per-source
        return _array_bounds(a)
    try:
        v = float(a)
    except (OverflowError, TypeError, ValueError):
        return None
    return (v, v) if math.isfinite(v) else None


def _leaf_bounds(S):
    """Bounds of a materialised Sparse3D's values, computed once and kept with the array."""
    got = S.__dict__.get("_bounds", False)
    if got is False:
        got = S.__dict__["_bounds"] = _array_bounds(S._vals)
    return got


def copy_with_bounds(arr: np.ndarray):
    """``(copy, bounds)``: a read-only C-contiguous copy of the float array ``arr`` and the
    finite ``(lo, hi)`` of its values (None if it holds NaN or inf), in one pass.

    Large arrays are copied by one compiled loop that keeps the bounds in registers
    (:mod:`sparse3d._copy_kernels`); otherwise the copy is made 512 KiB at a time and each
    chunk's minimum and maximum are taken while it is still in cache. Either way the bounds
    later operations need (:func:`defer`) cost no second pass over memory. In threads
    (:func:`sparse3d._kernels.elementwise_threads`) the work is cut into spans taken by
    whichever thread is free (:func:`sparse3d._threads.share`); the spans' bounds are
    reduced at the end. ``arr`` must be C-contiguous.
    """
    out = _pool.empty(arr.shape, arr.dtype)
    src, dst = arr.reshape(-1), out.reshape(-1)
    step = CHUNK * 8 // arr.itemsize  # float32 chunks hold twice the elements: half the calls

    def copy_chunk(start, _):
        part = dst[start : start + step]
        np.copyto(part, src[start : start + step])
        return np.minimum.reduce(part), np.maximum.reduce(part)  # NaN if the chunk holds one

    threads = _kernels.elementwise_threads(src.size)
    if src.size >= _kernels.MIN_ELEMENTS and _kernels.available():  # one compiled pass per span
        from ._copy_kernels import copy_bounds

        # one span in one thread; else spans of COPY_SPAN values, taken by whichever thread is free
        span = COPY_SPAN if threads > 1 else max(src.size, 1)
        spans = [(a, min(a + span, src.size)) for a in range(0, src.size, span)] or [(0, 0)]
        got = _threads.share(lambda ab, _: copy_bounds(src[slice(*ab)], dst[slice(*ab)]), spans, threads)
        out.flags.writeable = False
        if any(b is None for b in got):
            return out, None
        return out, (min(b[0] for b in got), max(b[1] for b in got))
    got = _threads.share(copy_chunk, range(0, src.size, step), threads)
    lows = [b[0] for b in got]
    highs = [b[1] for b in got]
    out.flags.writeable = False
    if not lows:
        return out, (0.0, 0.0)
    lo, hi = float(np.min(lows)), float(np.max(highs))  # NaN propagates
    return out, ((lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None)


def _array_bounds(a: np.ndarray):
    if a.size == 0:
        return (0.0, 0.0)
    lo, hi = float(a.min()), float(a.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return lo, hi


def _widened(lo: float, hi: float, dtype):
    """``[lo, hi]`` widened for rounding; None if its values could come near overflow."""
    info = np.finfo(dtype)
    lo -= abs(lo) * _WIDEN + float(info.tiny)
    hi += abs(hi) * _WIDEN + float(info.tiny)
    limit = float(info.max) * 2.0**-8
    if not (math.isfinite(lo) and math.isfinite(hi)) or max(-lo, hi) > limit:
        return None
    return lo, hi


def _result_bounds(ufunc, args, dtype, inputs):
    """Bounds of ``ufunc(*args)`` if it provably sets no overflow/invalid/divide flag, else None."""
    got = []
    for a, x in zip(args, inputs):
        b = _bounds_of(a, x)
        if b is None:
            return None
        b = _widened(*b, dtype)  # an operand cast to the result dtype must fit it too
        if b is None:
            return None
        got.append(b)
    try:
        if ufunc in (np.negative, np.positive, np.square, np.exp):
            ((lo, hi),) = got
            if ufunc is np.negative:
                return _widened(-hi, -lo, dtype)
            if ufunc is np.positive:
                return _widened(lo, hi, dtype)
            if ufunc is np.square:
                sq = (lo * lo, hi * hi)
                return _widened(0.0 if lo <= 0.0 <= hi else min(sq), max(sq), dtype)
            if hi > math.log(float(np.finfo(dtype).max) * 2.0**-8):
                return None
            return _widened(math.exp(lo) if lo > -745.0 else 0.0, math.exp(hi), dtype)
        (alo, ahi), (blo, bhi) = got
        if ufunc is np.add:
            return _widened(alo + blo, ahi + bhi, dtype)
        if ufunc is np.subtract:
            return _widened(alo - bhi, ahi - blo, dtype)
        if ufunc is np.true_divide:
            margin = float(np.finfo(dtype).tiny) * 2.0**20
            if blo <= margin and bhi >= -margin:
                return None  # the divisor may be zero (or so small the quotient overflows)
            blo, bhi = 1.0 / bhi, 1.0 / blo
        products = (alo * blo, alo * bhi, ahi * blo, ahi * bhi)
        return _widened(min(products), max(products), dtype)
    except (OverflowError, ValueError):
        return None


# -- evaluation -------------------------------------------------------------------------------
def evaluate(node: Node, block_shape: tuple[int, int, int]) -> np.ndarray:
    """The values of ``node``'s expression on a ``block_shape`` block, one chunk at a time.

    In threads (:func:`sparse3d._kernels.elementwise_threads`) the chunks are taken by
    whichever thread is free (:func:`sparse3d._threads.share`), each thread with its own
    chunk buffers: every element is computed by the same operations whatever the split, so
    the bits do not depend on the thread count. Every thread evaluates under
    ``np.errstate(all="ignore")`` (the error state is per thread: the caller's does not
    reach a worker, and is not needed: nothing reportable can be raised, see the module
    docstring).
    """
    out = _pool.empty(block_shape, node.dtype)
    nr, nc, n = block_shape
    P = nr * nc
    if out.size == 0:
        return out
    out2 = out.reshape(P, n)
    if not any(isinstance(a, Node) for a in node.args):  # one operation: no chunks
        getters = [_getter(a, {}, P, n) for a in node.args]

        def run_rows(rows, _):
            p0, p1 = rows
            node.func(*[g(p0, p1, 0, n, None) for g in getters], out=out2[p0:p1])

        # one cheap operation streams memory at what one core reaches (X * c: 3.0 ms in one
        # thread and in two on the tutorial's block); exp is compute-bound (4.6 -> 3.2 ms)
        threads = _kernels.elementwise_threads(out.size) if node.func is np.exp else 1
        # rows of about a chunk per item, and a few items per thread
        step = P if threads <= 1 else max(1, min(CHUNK // n, P // (2 * threads)))
        rows = [(p, min(p + step, P)) for p in range(0, P, step)]
        _threads.share(run_rows, rows, threads, lambda: np.errstate(all="ignore"))
        return out
    if out.size >= COMPILED_MIN_ELEMENTS and _kernels.available():
        from ._segments import fused

        node = fused(node)
    order, slots, nscratch = _plan(node)
    threads = _kernels.elementwise_threads(out.size)
    # intermediates live in per-thread chunk buffers sized to stay in cache; a chain that one
    # compiled loop computes whole has none, so its chunks are only the pieces threads share
    # (with intermediates: pieces of at most SCRATCH_CHUNKS chunks)
    budget = max(CHUNK, out.size // (PIECES_PER_THREAD * threads))
    if nscratch:
        budget = min(budget, SCRATCH_CHUNKS * CHUNK)
    if n >= budget:
        pieces = -(-n // budget)
        edges = [n * i // pieces for i in range(pieces + 1)]
        chunks = [(p, p + 1, k0, k1) for p in range(P) for k0, k1 in zip(edges[:-1], edges[1:])]
        width = edges[1] - edges[0] + 1
        scratch_size = width
    else:
        rows = max(1, budget // n)
        chunks = [(p0, min(p0 + rows, P), 0, n) for p0 in range(0, P, rows)]
        scratch_size = rows * n
    steps = []
    for nd in order:
        getters = [_getter(a, slots, P, n) for a in nd.args]
        steps.append((nd.func, getters, slots[id(nd)]))

    def run_chunk(chunk, scratch):
        p0, p1, k0, k1 = chunk
        shape = (p1 - p0, k1 - k0)
        m = shape[0] * shape[1]
        views = [buf[:m].reshape(shape) for buf in scratch]
        for func, getters, slot in steps:
            ops = [g(p0, p1, k0, k1, views) for g in getters]
            target = out2[p0:p1, k0:k1] if slot is None else views[slot]
            func(*ops, out=target)

    @contextlib.contextmanager
    def participant():  # each thread's own chunk buffers, and its own error state
        with np.errstate(all="ignore"):
            yield [np.empty(scratch_size, dtype=dt) for dt in nscratch]

    _threads.share(run_chunk, chunks, threads, participant)
    return out


#: Pieces per thread of a chain evaluated by one compiled loop (no intermediates): few calls,
#: and enough pieces that a thread descheduled for a while leaves its share to the others.
PIECES_PER_THREAD = 4


#: Values per span of a constructor's compiled copy when it runs in threads (2 MiB of float64).
COPY_SPAN = 1 << 18

#: Blocks at least this large run runs of cheap operations as one compiled loop (numba).
COMPILED_MIN_ELEMENTS = 1 << 20


def _plan(root: Node):
    """Nodes in evaluation order and the scratch buffer of each (None: the output block).

    A node's scratch is freed after its last use, so the next node can write into it (an
    elementwise ufunc may write over its own input): the chain needs as many chunk buffers
    as it has intermediates alive at once.
    """
    order = _postorder(root)
    last = {}
    for i, nd in enumerate(order):
        for a in nd.args:
            if isinstance(a, Node):
                last[id(a)] = i
    slots: dict[int, int | None] = {}
    dtypes: list = []
    free: dict = {}
    for i, nd in enumerate(order):
        for a in {id(a): a for a in nd.args if isinstance(a, Node)}.values():
            if last[id(a)] == i:
                free.setdefault(a.dtype, []).append(slots[id(a)])
        if nd is root:
            slots[id(nd)] = None
        elif free.get(nd.dtype):
            slots[id(nd)] = free[nd.dtype].pop()
        else:
            slots[id(nd)] = len(dtypes)
            dtypes.append(nd.dtype)
    return order, slots, dtypes


def _postorder(root: Node) -> list[Node]:
    """The distinct nodes of ``root``'s expression, every node after its operands.

    Iterative (a recursive closure would be a reference cycle, keeping the leaves' buffers
    alive until the garbage collector runs).
    """
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        nd, expanded = stack.pop()
        if expanded:
            order.append(nd)
            continue
        if id(nd) in seen:
            continue
        seen.add(id(nd))
        stack.append((nd, True))
        stack.extend((a, False) for a in reversed(nd.args) if isinstance(a, Node) and id(a) not in seen)
    return order


def _getter(a, slots, P, n):
    """A function giving operand ``a`` on the chunk ``[p0:p1, k0:k1]`` of the ``(P, n)`` block."""
    if isinstance(a, Node):
        slot = slots[id(a)]
        return lambda p0, p1, k0, k1, views: views[slot]
    if isinstance(a, np.ndarray) and a.ndim == 3:  # a leaf: C-contiguous values
        block = a.reshape(P, n)
        return lambda p0, p1, k0, k1, views: block[p0:p1, k0:k1]
    if isinstance(a, np.ndarray) and a.ndim == 1 and a.shape[0] > 1:  # per-source
        return lambda p0, p1, k0, k1, views: a[k0:k1]
    return lambda p0, p1, k0, k1, views: a  # scalars, 0-d and one-element arrays broadcast
