"""PocketSeg's benchmark harness: speed and memory beside full-size networks and peers.

Run from the repository root as ``python -m benchmarks COMMAND`` (see benchmarks/README.md). It is
not part of the installed ``pocketseg_core`` package, so a Slicer install carries none of it; MONAI
and the peer tools are extras of this harness only.
"""
