"""Command line of sparse3d: python -m sparse3d demo [options] | precompile (or the sparse3d script)."""

from __future__ import annotations

import argparse

DEMO_DESCRIPTION = """\
Simulate the tutorial's star field (a Gaussian PSF per star), add Poisson and read noise, build the
model with Sparse3D, fit every star's brightness with uncertainties, print a timing table, the
reduced chi2 and the pulls (measured - truth) / error, and write two PNG figures.
"""


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m sparse3d`` (every option documented in ``--help``)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="python -m sparse3d",
        description="sparse3d: 3-D sparse arrays of small dense stamps. Commands:",
    )
    parser.add_argument("--version", action="version", version=f"sparse3d {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    demo = sub.add_parser(
        "demo",
        help="simulate, model and fit the tutorial's scene (1024x1024 image, 50,000 stars)",
        description=DEMO_DESCRIPTION,
    )
    demo.add_argument(
        "--imshape",
        type=_positive_int,
        nargs=2,
        default=(1024, 1024),
        metavar=("H", "W"),
        help="image size in pixels: rows, columns (default: 1024 1024)",
    )
    demo.add_argument(
        "--nsources",
        type=_positive_int,
        default=50_000,
        metavar="N",
        help="number of stars (default: %(default)s)",
    )
    demo.add_argument(
        "--output",
        default="sparse3d-demo",
        metavar="DIR",
        help="folder for the figures model_image.png and truth_vs_measured.png (created; checked "
        "to be writable before anything is computed; default: %(default)s)",
    )
    demo.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        metavar="SEED",
        help="random seed of the scene and the noise, >= 0 (default: %(default)s)",
    )
    demo.add_argument(
        "--no-plots", action="store_true", help="skip the figures (matplotlib is then not needed)"
    )
    demo.add_argument(
        "--no-recipe",
        action="store_true",
        help="skip the comparison with the seed tutorial's scipy spsolve recipe",
    )
    demo.set_defaults(subparser=demo)  # errors found after parsing print the demo's usage line
    sub.add_parser(
        "precompile",
        help="compile every numba kernel into the cache once after installing (else the first large "
        "fit compiles them)",
        description="Compile every numba kernel of sparse3d into numba's on-disk cache (NUMBA_CACHE_DIR, "
        "else next to the package) and print the time per kernel module.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "precompile":
        from ._compiled import precompile

        precompile(verbose=True)
    elif args.command == "demo":
        from ._demo import check_output_folder, run_demo

        if not args.no_plots:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                args.subparser.error(
                    'the figures need matplotlib: pip install "sparse3d[demo]" (or --no-plots)'
                )
            try:
                check_output_folder(args.output)
            except OSError as exc:
                args.subparser.error(f"argument --output: {exc}")
        run_demo(
            tuple(args.imshape),
            args.nsources,
            args.output,
            args.seed,
            plots=not args.no_plots,
            recipe=not args.no_recipe,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
