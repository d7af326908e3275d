"""The ``pocketseg`` command line: parses, dispatches, and prints user errors plainly.

Each sub-command lives in its own module of this package with two functions:
``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``.
Modules are imported lazily so ``pocketseg --help`` stays fast and a broken optional
dependency of one command cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pocketseg_core import __version__
from pocketseg_core.errors import PocketSegError

#: sub-command name -> module (relative to this package) implementing it
COMMANDS: dict[str, str] = {
    "models": "models",
    "predict": "predict",
    "evaluate": "evaluate",
    "train": "train",
    "demo": "demo",
    "serve": "serve",
    "web": "web",
    "export-onnx": "export_onnx",
}


def build_parser(available: dict[str, object] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pocketseg",
        description="PocketNet and LV-Net: small, fast 3D segmentation (brain extraction, liver).",
    )
    parser.add_argument("--version", action="version", version=f"pocketseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (available or _load_commands()).values():
        module.add_parser(subparsers)
    return parser


def _load_commands(only: str | None = None) -> dict[str, object]:
    """The command modules: all of them, or ``only`` that one (a run of one command imports
    nothing of the others: ``pocketseg predict`` starts without the server's or training's)."""
    modules = {}
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            modules[name] = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as error:
            # A command whose module has not been written yet is simply not offered.
            if error.name == f"{__name__}.{module_name}":
                continue
            raise
    return modules


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    modules = _load_commands(given[0] if given and given[0] in COMMANDS else None)
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except PocketSegError as error:
        print(f"pocketseg {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pocketseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
