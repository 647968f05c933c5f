"""PNG plot of time per stored element vs scene size."""

from __future__ import annotations

from pathlib import Path


def plot_scaling(scaling: dict, path: Path) -> Path:
    """Plot ``ns_per_element`` against stored elements for both series.

    Parameters
    ----------
    scaling : dict
        Output of :func:`benchmarks.scaling.run_scaling`.
    path : pathlib.Path
        Where to write the PNG.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    titles = {"sources": "more sources (10x10 stamps)", "stamp": "bigger stamps (50,000 sources)"}
    for ax, series in zip(axes, ("sources", "stamp")):
        pts_all = [p for p in scaling["points"] if p["series"] == series]
        for impl, marker in (("numpy", "s"), ("sparse3d", "o")):
            for imshape in sorted({tuple(p["scene"]["imshape"]) for p in pts_all}):
                pts = sorted(
                    (p for p in pts_all if p["impl"] == impl and tuple(p["scene"]["imshape"]) == imshape),
                    key=lambda p: p["nstored"],
                )
                if not pts:
                    continue
                label = f"{impl}, {imshape[0]}x{imshape[1]} image"
                x = [p["nstored"] for p in pts]
                (line,) = ax.plot(
                    x, [p["ns_per_element_min"] for p in pts], marker=marker, label=f"{label} (fastest run)"
                )
                ax.plot(
                    x,
                    [p["ns_per_element"] for p in pts],
                    marker=marker,
                    linestyle=":",
                    alpha=0.5,
                    color=line.get_color(),
                    label=f"{label} (median)",
                )
                if impl != "sparse3d":
                    continue
                for p in pts:
                    sc = p["scene"]
                    text = f"{sc['stamp']}x{sc['stamp']}" if series == "stamp" else f"{sc['nsources']:,}"
                    ax.annotate(
                        text,
                        (p["nstored"], p["ns_per_element_min"]),
                        fontsize=7,
                        textcoords="offset points",
                        xytext=(0, -12),
                        ha="center",
                    )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("stored stamp elements")
        ax.set_title(titles[series])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("pipeline time per element [ns]")
    axes[0].set_ylim(bottom=0)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
