"""Command line: ``python -m sparse3d demo [--imshape H W] [--nsources N] [--output DIR]``."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse3d", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="simulate, model and fit the tutorial's scene (1024², 50,000 stars)")
    demo.add_argument("--imshape", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"))
    demo.add_argument("--nsources", type=int, default=50_000)
    demo.add_argument("--output", default="sparse3d-demo", help="folder for the PNG figures")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-plots", action="store_true", help="skip the figures (no matplotlib needed)")
    demo.add_argument("--no-recipe", action="store_true", help="skip the tutorial's spsolve comparison")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.nsources < 1 or min(args.imshape) < 1:
            parser.error("--nsources and --imshape must be positive")
        from ._demo import run_demo

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
