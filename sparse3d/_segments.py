"""Compiled segments of a deferred chain (:mod:`sparse3d._deferred`).

Runs of two or more cheap operations (everything but ``exp``; float32 ``exp`` too where
:func:`sparse3d._exp_kernels.matches_numpy`) of one dtype, each result used once, are
evaluated by one numba loop generated for the run (:class:`_Segment`): the intermediates stay
in registers. Its operations are the IEEE operations of NumPy's loops in the same dtype,
compiled without fast-math (nothing is contracted into a fused multiply-add), and float32
``exp`` is :func:`sparse3d._exp_kernels.npexp32`, the operations of NumPy's own SIMD loop, so
the bits do not change: the tutorial's float32 chain is one loop reading ``X`` and ``Y`` and
writing ``L``. The loop runs over a 2-D chunk (rows of the stamp block, per-source operands
along its columns), so a chunk of several rows is one call. The loop's text is written to a
file in :func:`segment_dir` so that numba caches its compiled code: compiled once per machine
and run shape (~0.1-0.4 s), then loaded. Imported by
:func:`sparse3d._deferred.evaluate` when a block is large enough.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from pathlib import Path

import numpy as np

from ._deferred import Node, _postorder

#: The cheap operations a compiled segment runs, as Python expressions of its operands.
_CHEAP = {
    np.add: "{0} + {1}",
    np.subtract: "{0} - {1}",
    np.multiply: "{0} * {1}",
    np.true_divide: "{0} / {1}",
    np.negative: "-{0}",
    np.positive: "{0}",
    np.square: "{0} * {0}",
}
#: float32 ``exp`` in a segment (:func:`_compilable` admits it only where it is NumPy's bits).
_EXP = "npexp32({0})"
_SEGMENT_KERNELS: dict[str, object] = {}


class _Segment:
    """A compiled loop computing a run of cheap operations per element, called like a ufunc.

    Each operation is the IEEE operation NumPy's loop performs in the same dtype (numba
    without fast-math contracts nothing into fused multiply-adds), so the bits are NumPy's;
    the intermediates stay in registers instead of passing through memory.
    """

    __slots__ = ("kernel", "scalars", "__name__")

    def __init__(self, kernel, scalars):
        self.kernel, self.scalars, self.__name__ = kernel, scalars, "segment"

    def __call__(self, *ops, out):
        """``out[p, i] = f(ops...)`` for the 2-D chunk ``out``: stamp-block operands are chunks of
        ``out``'s shape, per-source operands 1-D slices along its columns."""
        args = []
        for a in ops:
            if not a.flags.c_contiguous:  # chunks are C-contiguous; anything else is copied
                a = np.ascontiguousarray(a)
            if a.flags.writeable:  # one type for every array argument: read-only
                a = a.view()
                a.flags.writeable = False
            args.append(a)
        self.kernel(out, *args, *self.scalars)
        return out


def fused(root: Node) -> Node:
    """``root``'s expression with every run of two or more cheap operations of one dtype
    (each used once) replaced by a node calling one compiled loop (:class:`_Segment`)."""
    order = _postorder(root)
    consumers: dict[int, int] = {}  # every use counts (``T + T`` uses T twice: not inlined)
    for nd in order:
        for a in nd.args:
            if isinstance(a, Node):
                consumers[id(a)] = consumers.get(id(a), 0) + 1
    cheap = {id(nd) for nd in order if _compilable(nd)}
    inlined = set()
    for nd in order:
        if id(nd) in cheap:
            for a in nd.args:
                if isinstance(a, Node) and id(a) in cheap and consumers[id(a)] == 1 and a.dtype == nd.dtype:
                    inlined.add(id(a))
    new: dict[int, Node] = {}
    for nd in order:
        if id(nd) in inlined:
            continue
        members = _members(nd, inlined) if id(nd) in cheap else [nd]
        if len(members) < 2:
            args = tuple(new.get(id(a), a) if isinstance(a, Node) else a for a in nd.args)
            new[id(nd)] = Node(nd.func, args, nd.dtype, nd.bounds, nd.size)
            continue
        new[id(nd)] = _segment_node(members, new)
    return new[id(root)]


def _members(top: Node, inlined: set) -> list[Node]:
    """``top`` and the nodes inlined into it, operands first (``top`` last)."""
    out: list[Node] = []
    stack: list[tuple[Node, bool]] = [(top, False)]
    while stack:
        nd, expanded = stack.pop()
        if expanded:
            out.append(nd)
            continue
        stack.append((nd, True))
        stack.extend((a, False) for a in reversed(nd.args) if isinstance(a, Node) and id(a) in inlined)
    return out


def _compilable(nd: Node) -> bool:
    """A cheap operation whose loop runs in its own dtype on float operands of that dtype, or a
    float32 ``exp`` where :func:`sparse3d._exp_kernels.npexp32` gives NumPy's bits."""
    if nd.func is np.exp:
        if nd.dtype != np.float32 or any(getattr(a, "dtype", None) != nd.dtype for a in nd.args):
            return False
        from ._exp_kernels import matches_numpy

        return matches_numpy()
    if nd.func not in _CHEAP:
        return False
    for a in nd.args:
        if isinstance(a, (Node, np.ndarray)) and not (isinstance(a, np.ndarray) and a.ndim == 0):
            if a.dtype != nd.dtype:
                return False
        elif type(a) is int and abs(a) > 2**53:
            return False
    dtypes = [type(a) if type(a) in (int, float) else a.dtype for a in nd.args]
    try:
        loop = nd.func.resolve_dtypes((*dtypes, None))
    except (TypeError, ValueError):
        return False
    return all(d == nd.dtype for d in loop)


def _segment_node(members: list[Node], new: dict) -> Node:
    dtype = members[-1].dtype
    inside = {id(m): i for i, m in enumerate(members)}
    arrays: dict[int, int] = {}
    args: list = []
    scalars: list = []
    lines = []
    for i, m in enumerate(members):
        refs = []
        for a in m.args:
            if isinstance(a, Node) and id(a) in inside:
                refs.append(f"t{inside[id(a)]}")
            elif isinstance(a, Node) or (isinstance(a, np.ndarray) and a.ndim > 0 and a.size > 1):
                if id(a) not in arrays:
                    arrays[id(a)] = len(args)
                    args.append(new.get(id(a), a) if isinstance(a, Node) else a)
                per_source = isinstance(a, np.ndarray) and a.ndim == 1  # else a chunk of the block
                refs.append(f"a{arrays[id(a)]}[i]" if per_source else f"a{arrays[id(a)]}[p, i]")
            else:  # a scalar, cast to the loop dtype as NumPy casts it
                if type(a) in (int, float):
                    scalars.append(np.array(a, dtype=dtype)[()])
                else:
                    scalars.append(np.asarray(a).reshape(()).astype(dtype)[()])
                refs.append(f"s{len(scalars) - 1}")
        op = _EXP if m.func is np.exp else _CHEAP[m.func]
        if m.func is np.true_divide and refs[1].startswith("s"):
            inverse = _exact_inverse(scalars[int(refs[1][1:])])
            if inverse is not None:  # x / 2**k is x * 2**-k, the same real number: the same bits
                scalars[int(refs[1][1:])] = inverse
                op = _CHEAP[np.multiply]
        lines.append(f"            t{i} = " + op.format(*refs))
    params = ["out"] + [f"a{j}" for j in range(len(args))] + [f"s{j}" for j in range(len(scalars))]
    header = []
    if any(m.func is np.exp for m in members):  # the version names the exp code cached with it
        from ._exp_kernels import VERSION

        header = [f"from sparse3d._exp_kernels import npexp32  # {VERSION}", ""]
    source = "\n".join(
        [*header, f"def kernel({', '.join(params)}):", "    for p in range(out.shape[0]):",
         "        for i in range(out.shape[1]):", *lines, f"            out[p, i] = t{len(members) - 1}"]
    )
    kernel = _SEGMENT_KERNELS.get(source)
    if kernel is None:
        import numba

        func, cached = _segment_function(source)
        kernel = numba.njit(nogil=True, error_model="numpy", cache=cached)(func)
        if len(_SEGMENT_KERNELS) >= 64:
            _SEGMENT_KERNELS.clear()
        _SEGMENT_KERNELS[source] = kernel
    top = members[-1]
    return Node(_Segment(kernel, tuple(scalars)), tuple(args), dtype, top.bounds, top.size)


def _exact_inverse(s):
    """``1 / s`` when it is exact and dividing by ``s`` equals multiplying by it for every
    operand, or None: ``s`` a power of two whose inverse is a normal number of its dtype.

    Then ``x / s`` and ``x * (1 / s)`` are the same real number for every ``x`` (infinities,
    NaN, zeros and subnormal results included), and IEEE operations round that number the
    same way, so the loop may multiply (a vector division costs ~8x a multiplication).
    """
    if not np.isfinite(s) or s == 0:
        return None
    mantissa, _ = np.frexp(s)
    if abs(float(mantissa)) != 0.5:
        return None
    with np.errstate(all="ignore"):
        inverse = (np.ones((), s.dtype) / s)[()]
    if not np.isfinite(inverse) or abs(inverse) < np.finfo(s.dtype).tiny or inverse * s != 1:
        return None
    return inverse


def segment_dir() -> Path:
    """Where generated segment kernels are written, so that numba can cache their code.

    ``$NUMBA_CACHE_DIR/sparse3d_segments`` when that variable is set, else
    ``sparse3d/segments`` under ``$XDG_CACHE_HOME`` (default ``~/.cache``).
    """
    numba_dir = os.environ.get("NUMBA_CACHE_DIR")
    if numba_dir:
        return Path(numba_dir) / "sparse3d_segments"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sparse3d" / "segments"


def _segment_function(source: str):
    """The Python function of a generated kernel and whether numba may cache it on disk.

    numba caches only functions that live in a source file, so the kernel's text goes to a
    file named by its digest in :func:`segment_dir` (written once, atomically; read back and
    compared before use, so a file that does not hold exactly this text is never run) and is
    imported from there: later processes load its compiled code instead of compiling it
    (~0.3 s). Where no such file can be written, the text is executed in memory, uncached.
    """
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    text = source + "\n"
    try:
        folder = segment_dir()
        path = folder / f"segment_{digest}.py"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".segment_{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        if path.read_text(encoding="utf-8") == text:
            name = f"sparse3d_segment_{digest}"
            module = sys.modules.get(name)
            if module is None:  # registered: numba's cached code names its module on loading
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules[name] = module
            return module.kernel, True
    except OSError:  # read-only or missing home: compile in memory
        pass
    namespace: dict = {}
    exec(compile(source, "<sparse3d deferred segment>", "exec"), namespace)  # our own text
    return namespace["kernel"], False
