"""Wall-clock timing: warm-up, then the median of interleaved warm runs."""

from __future__ import annotations

import gc
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.cases import Prepared


@dataclass
class Timing:
    """Timing of one implementation of one case.

    Attributes
    ----------
    status : str
        ``"ok"``, ``"unsupported"`` (the implementation cannot express the
        case), ``"missing"`` (the implementation is not importable) or
        ``"error"``.
    times : list of float
        Warm run times in seconds.
    first_call_s : float or None
        Time of the warm-up call (includes lazy imports / JIT compilation if
        it is the first use in the process).
    note, error : str
        Free-text caveat and error summary.
    check : dict or None
        :func:`benchmarks.cases.summarize` of the canonical result.
    """

    status: str = "ok"
    times: list[float] = field(default_factory=list)
    first_call_s: float | None = None
    note: str = ""
    error: str = ""
    check: dict | None = None

    @property
    def median_s(self) -> float | None:
        """Median of the warm runs, or ``None``."""
        return statistics.median(self.times) if self.times else None

    def to_dict(self) -> dict:
        """JSON-serialisable form, including summary statistics."""
        out: dict[str, Any] = {"status": self.status, "median_s": self.median_s}
        if self.times:
            out["min_s"] = min(self.times)
            out["max_s"] = max(self.times)
            out["repeats"] = len(self.times)
        out["times"] = self.times
        out["first_call_s"] = self.first_call_s
        for key in ("note", "error"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.check is not None:
            out["check"] = self.check
        return out


def error_summary(exc: BaseException) -> str:
    """One-line description of ``exc`` with its innermost frame."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"[:500]


def timed_call(prepared: Prepared) -> tuple[float, Any]:
    """Time one call of a prepared case.

    ``prepared.setup`` (if any) runs first, untimed, then a garbage
    collection, then the timed ``prepared.run``.

    Parameters
    ----------
    prepared : Prepared
        The case.

    Returns
    -------
    tuple
        ``(seconds, result)``.
    """
    arg = prepared.setup() if prepared.setup is not None else None
    gc.collect()
    if prepared.setup is None:
        t0 = time.perf_counter()
        result = prepared.run()
    else:
        t0 = time.perf_counter()
        result = prepared.run(arg)
    elapsed = time.perf_counter() - t0
    del arg
    return elapsed, result


def time_interleaved(
    runs: dict[str, Prepared],
    repeats: int,
    warmup: int = 1,
    on_first: Callable[[str, Any], None] | None = None,
    min_total_s: float = 0.0,
    max_repeats: int = 50,
) -> dict[str, Timing]:
    """Time several implementations of one case, interleaving their runs.

    Each implementation gets ``warmup`` untimed calls (the first one's time
    is kept as ``first_call_s``), then ``repeats`` timed calls taken in
    round-robin order so that slow drifts of a shared machine hit all
    implementations alike.

    Parameters
    ----------
    runs : dict
        Implementation name -> :class:`~benchmarks.cases.Prepared`.
    repeats : int
        Minimum number of timed warm runs per implementation.
    warmup : int
        Number of warm-up calls per implementation (at least 1).
    on_first : callable, optional
        Called as ``on_first(name, result)`` with the first call's result.
    min_total_s : float
        After ``repeats`` rounds, implementations that have spent less than
        this long in timed runs get more (interleaved) rounds, up to
        ``max_repeats`` runs: a short burst of load from elsewhere then moves
        the median of a fast case less.
    max_repeats : int
        Upper bound on the rounds added by ``min_total_s``.

    Returns
    -------
    dict
        Implementation name -> :class:`Timing`.
    """
    out = {name: Timing() for name in runs}
    live = dict(runs)
    for name, prepared in runs.items():
        try:
            for i in range(max(1, warmup)):
                dt, result = timed_call(prepared)
                if i == 0:
                    out[name].first_call_s = dt
                    if on_first is not None:
                        on_first(name, result)
                del result
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            out[name].status, out[name].error = "error", error_summary(exc)
            live.pop(name)
    rounds = 0
    while live:
        if rounds < repeats:
            batch = list(live)
        else:  # extra rounds only for the implementations that are still fast
            batch = [n for n in live if sum(out[n].times) < min_total_s and len(out[n].times) < max_repeats]
        if not batch:
            break
        rounds += 1
        for name in batch:
            try:
                dt, _result = timed_call(live[name])
            except Exception as exc:  # noqa: BLE001
                out[name].status, out[name].error = "error", error_summary(exc)
                live.pop(name)
                continue
            del _result
            out[name].times.append(dt)
    return out
