"""``pocketseg web``: PocketSeg's one-click segmentation and segment editor in a browser.

The page (``pocketseg_web``, on Kitware's trame-slicer) is an optional extra beside this library:
it is imported only when the command runs, and this module imports neither trame nor Slicer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pocketseg_core.cli.serve import server_token
from pocketseg_core.errors import PocketSegError

INSTALL_HINT = "pip install -e '.[web]' from a checkout of PocketSeg"
DEFAULT_PORT = 8766


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "web",
        help="segment and edit in a browser (open, Skull strip / Segment liver, edit, download)",
        description=(
            "Serve the PocketSeg page: open or upload an image, click Skull strip or Segment liver, follow the "
            "progress or cancel, edit the segment (paint, erase, scissors, islands, smoothing, undo), compare "
            "with a reference mask and download the mask (on the input's grid) or the segmentation. One "
            "process holds one scene, shared by every browser that opens it. A token is required whenever "
            f"--host is not a loopback address. Needs the web extra: {INSTALL_HINT}."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--token-file", help="file holding the token the page's address must carry (required beyond loopback)"
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=1024.0, help="largest accepted upload in MB (default 1024)"
    )
    parser.add_argument("--input", help="an image file or DICOM folder of this machine to open at start")
    parser.set_defaults(command="web")
    return parser


def run(args: argparse.Namespace) -> int:
    token = server_token(args.host, args.token_file)
    if args.max_upload_mb <= 0:
        raise PocketSegError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.input and not Path(args.input).exists():
        raise PocketSegError(f"--input {args.input}: no such file or folder. Check the path.")
    try:
        from pocketseg_web.app import create_app
    except ImportError as error:
        raise PocketSegError(
            f"pocketseg web needs the web packages ({error.name or error} is missing): {INSTALL_HINT}"
        ) from None
    app = create_app(args.max_upload_mb, token)
    if args.input:
        app.open_path(args.input)
    address = f"http://{args.host}:{args.port}/"
    print(
        f"pocketseg web: open {address}{'?token=<the token of ' + args.token_file + '>' if token else ''} "
        f"(token {'required' if token else 'not required: loopback only'})",
        flush=True,
    )
    sys.argv = sys.argv[:1]  # trame reads its own options from the command line: give it none
    app.server.start(
        host=args.host,
        port=args.port,
        open_browser=False,
        show_connection_info=False,
        timeout=0,
    )
    return 0
