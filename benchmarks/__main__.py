"""``python -m benchmarks COMMAND``: the benchmark harness's command line.

Commands: ``speed`` (see :mod:`benchmarks.cli`), ``peers-speed`` (see :mod:`benchmarks.peers_speed`), ``targets`` (see :mod:`benchmarks.targets`), ``accuracy`` (see :mod:`benchmarks.accuracy`), ``consensus-labels`` (see :mod:`benchmarks.consensus_labels`). Errors of the input are printed as one sentence.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import accuracy, cli, consensus_labels, peers_speed, targets
from pocketseg_core.errors import PocketSegError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    cli.add_parser(subparsers)
    peers_speed.add_parser(subparsers)
    targets.add_parser(subparsers)
    accuracy.add_parser(subparsers)
    consensus_labels.add_parser(subparsers)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        runners = {
            "peers-speed": peers_speed.run,
            "targets": targets.run,
            "accuracy": accuracy.run,
            "consensus-labels": consensus_labels.run,
        }
        return runners.get(args.command, cli.run)(args)
    except PocketSegError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
