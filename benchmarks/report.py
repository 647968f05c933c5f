"""Plain-text (Markdown) tables of a suite run."""

from __future__ import annotations

import math

from benchmarks.cases import CASES
from benchmarks.targets import Row


def fmt_time(seconds: float | None) -> str:
    """Human-readable duration."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(n: float | None) -> str:
    """Human-readable byte count."""
    if n is None:
        return "-"
    return f"{n / 2**20:.1f} MiB"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def _verdict(row_passed: bool | None) -> str:
    return "" if row_passed is None else ("PASS" if row_passed else "MISS")


def ratio_table(rows: list[Row]) -> str:
    """Table of ``candidate / baseline`` ratios with targets."""
    body = []
    for r in rows:
        fmt = fmt_bytes if r.kind == "memory" else fmt_time
        check = r.check or ""
        body.append(
            [
                r.case,
                r.impl,
                r.baseline,
                r.kind,
                fmt(r.value),
                fmt(r.base_value),
                f"{r.ratio:.3g}x",
                "" if r.target is None else f"<= {r.target:g}x",
                _verdict(r.passed),
                check,
            ]
        )
    return _table(
        ["case", "impl", "vs", "kind", "value", "baseline", "ratio", "target", "result", "same result"], body
    )


def limit_note(limit: dict | None) -> list[str]:
    """The physical limit's bytes and bandwidth, and whether the cores had the memory system to
    themselves (two threads about twice one thread's rate) or shared it with another tenant."""
    if not limit or not limit.get("bytes_per_s"):
        return []
    from benchmarks.limits import thread_scaling

    gbs = limit["bytes_per_s"] / 1e9
    text = f"Physical limit: {limit['pipeline_bytes'] / 1e6:.0f} MB (float64)"
    if limit.get("pipeline_f32_bytes"):
        text += f", {limit['pipeline_f32_bytes'] / 1e6:.0f} MB (float32)"
    text += f" at {gbs:.1f} GB/s ({limit.get('best', '?')})"
    scaling = thread_scaling(limit)
    if scaling:
        state = "the memory system to themselves" if scaling >= 1.5 else "shared with another load"
        text += f"; {limit.get('threads', '?')} threads reached {scaling:.2f}x one thread's rate ({state})"
    return [text + ".", ""]


def timing_table(results: dict, impls: list[str]) -> str:
    """Median warm time (and first call) of every case and implementation."""
    body = []
    for case in CASES:
        if case not in results:
            continue
        cells = [case]
        for impl in impls:
            t = results[case].get(impl)
            if not t:
                cells.append("")
            elif t.get("status") == "ok":
                cells.append(f"{fmt_time(t['median_s'])} (1st {fmt_time(t['first_call_s'])})")
            else:
                cells.append(t.get("status", "?"))
        body.append(cells)
    return _table(["case", *impls], body)


def memory_table(memory: dict) -> str:
    """Cold first call and peak memory per case and implementation."""
    body = []
    for case, per_impl in memory.items():
        for impl, m in per_impl.items():
            if m.get("status") != "ok":
                body.append([case, impl, m.get("status", "?"), "", "", ""])
                continue
            body.append(
                [
                    case,
                    impl,
                    fmt_time(m["cold_s"]),
                    fmt_bytes(m["rss_peak_bytes"]),
                    fmt_bytes(m["traced_peak_bytes"]),
                    fmt_bytes(m["rss_before_bytes"]),
                ]
            )
    return _table(
        ["case", "impl", "cold call (fresh process)", "peak RSS increase", "tracemalloc peak", "RSS before"],
        body,
    )


def absolute_table(checks: list[dict]) -> str:
    """Table of the targets on absolute numbers."""
    body = []
    for c in checks:
        if "peak RSS" in c["name"]:
            unit = lambda v: "-" if v is None else f"{v / 1e9:.2f} GB"  # noqa: E731
        else:
            unit = fmt_time if "scaling" not in c["name"] else (lambda v: f"{v:.3g}x")
        rel = c.get("vs_numpy_growth")
        med = c.get("growth_median")
        body.append(
            [
                c["name"],
                unit(c["value"]),
                unit(c["target"]),
                _verdict(c["passed"]),
                "" if med is None else f"{med:.3g}x",
                "" if rel is None else f"{rel:.3g}x",
            ]
        )
    return _table(["check", "value", "target", "result", "median-based", "growth / numpy's growth"], body)


def notes(results: dict) -> list[str]:
    """Notes, errors and unsupported cases, one line each."""
    out = []
    for case, per_impl in results.items():
        for impl, t in per_impl.items():
            for key in ("note", "error"):
                if t.get(key):
                    out.append(f"- {case} / {impl} [{t['status']}]: {t[key]}")
    return out


def full_report(data: dict) -> str:
    """The whole report as Markdown."""
    meta = data["meta"]
    parts = [
        f"# sparse3d benchmarks ({meta['mode']})",
        "",
        f"scene: {meta['scene']}; median of >= {meta['repeats']} warm runs (fast cases: until "
        f"{meta.get('min_time_s', 0)} s per implementation, max 50) after "
        f"{meta['warmup']} warm-up; {meta['when']}",
        f"versions: {meta.get('versions')}; sparse3d: {meta.get('library')}",
        "",
        "## Ratios (candidate / baseline, same run)",
        "",
        ratio_table([Row(**r) for r in data["ratios"]]),
        "",
        *limit_note(meta.get("limit")),
        "## Absolute targets",
        "",
        absolute_table(data["absolute"]),
        "",
        "## Median warm time per case",
        "",
        timing_table(data["results"], meta["impls_reported"]),
    ]
    if data.get("memory"):
        parts += [
            "",
            "## Memory and cold first call (fresh process per case)",
            "",
            memory_table(data["memory"]),
        ]
    if data.get("imports"):
        parts += ["", "## Import time (-X importtime cumulative, median)", ""]
        parts += [
            f"- {k}: {fmt_time(v.get('cumulative_s'))} (first {fmt_time(v.get('first_cumulative_s'))},"
            f" wall {fmt_time(v.get('wall_s'))})"
            if v.get("status") == "ok"
            else f"- {k}: {v}"
            for k, v in data["imports"].items()
        ]
    scaling = data.get("scaling")
    if scaling:
        parts += [
            "",
            "## Scaling (pipeline, time per stored element)",
            "",
            "Growth checks above use the fastest run of each size, pairs on the same image.",
            "",
        ]
        parts.append(
            _table(
                [
                    "series",
                    "impl",
                    "sources",
                    "image",
                    "stamp",
                    "elements",
                    "median",
                    "ns/element (median)",
                    "ns/element (fastest)",
                ],
                [
                    [
                        p["series"],
                        p["impl"],
                        str(p["scene"]["nsources"]),
                        "x".join(map(str, p["scene"]["imshape"])),
                        str(p["scene"]["stamp"]),
                        f"{p['nstored']:.3g}",
                        fmt_time(p["median_s"]),
                        f"{p['ns_per_element']:.2f}",
                        f"{p['ns_per_element_min']:.2f}",
                    ]
                    for p in scaling["points"]
                ],
            )
        )
        for s in scaling.get("skipped", []):
            parts.append(f"- skipped {s['series']} {s['scene']['nsources']} sources: {s['reason']}")
    if n := notes(data["results"]):
        parts += ["", "## Notes", "", *n]
    s = data["summary"]
    parts += ["", f"**Targets: {s['passed']} passed, {s['missed']} missed.**", ""]
    return "\n".join(parts)
