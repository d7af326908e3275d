"""``pocketseg serve``: an HTTP service that segments for other machines (Slicer, ``predict --server``).

The web packages (FastAPI, uvicorn) are an optional extra and are imported only when the
command runs, so every other command works without them.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path

from pocketseg_core.errors import PocketSegError
from pocketseg_core.remote import read_token_file

#: the smallest token length accepted (a token_urlsafe(32) has 43 characters)
MIN_TOKEN_CHARS = 16
INSTALL_HINT = "pip install 'pocketseg-core[server]'"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="segment for other machines over HTTP (one GPU box for a lab's Slicers)",
        description=(
            "Serve the installed models over HTTP: clients (the Slicer module, pocketseg predict --server) "
            "upload a volume, follow its progress, cancel it and fetch the mask. Jobs wait in line and run "
            "--workers at a time, each in its own process. A token is required whenever --host is not a "
            f"loopback address. Needs the server extra: {INSTALL_HINT}."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument(
        "--token-file", help="file holding the token clients must send (required beyond loopback)"
    )
    parser.add_argument("--workers", type=int, default=1, help="jobs run at once (one per GPU; default 1)")
    parser.add_argument(
        "--gpus", help="GPU indices for the workers, e.g. 0,1 (worker i sees only GPU i; default: all)"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--max-upload-mb", type=float, default=2048.0, help="largest accepted upload in MB (default 2048)"
    )
    parser.add_argument("--max-queued", type=int, default=32, help="jobs that may wait in line (default 32)")
    parser.add_argument("--work-dir", help="folder for the jobs' temporary files (default: the system's)")
    parser.set_defaults(command="serve")
    return parser


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def server_token(host: str, token_file: str | None) -> str | None:
    """The token to require, or None on loopback without a token file; refuses an open server."""
    if token_file is None:
        if not is_loopback(host):
            raise PocketSegError(
                f"--host {host} is reachable from other machines: give --token-file FILE (make one with: "
                'python -c "import secrets; print(secrets.token_urlsafe(32))" > FILE)'
            )
        return None
    token = read_token_file(token_file)
    if len(token) < MIN_TOKEN_CHARS:
        raise PocketSegError(
            f"{token_file}: the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
            '(python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return token


def run(args: argparse.Namespace) -> int:
    token = server_token(args.host, args.token_file)
    if args.workers < 1:
        raise PocketSegError(f"--workers must be at least 1, got {args.workers}")
    if args.max_upload_mb <= 0:
        raise PocketSegError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.work_dir and not Path(args.work_dir).is_dir():
        raise PocketSegError(f"--work-dir {args.work_dir} is not a folder; create it first")
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else []
    try:
        import uvicorn

        from pocketseg_core.server.app import create_app
    except ImportError as error:
        raise PocketSegError(
            f"pocketseg serve needs the server packages ({error.name} is missing): {INSTALL_HINT}"
        ) from None
    from pocketseg_core.server.jobs import JobQueue

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    jobs = JobQueue(
        workers=args.workers,
        gpus=gpus,
        device=args.device,
        work_root=Path(args.work_dir) if args.work_dir else None,
        max_queued=args.max_queued,
    )
    app = create_app(jobs, token, int(args.max_upload_mb * 1e6))
    where = f"http://{args.host}:{args.port}"
    print(
        f"pocketseg serve: {where}, {args.workers} worker(s)"
        f"{' on GPUs ' + ','.join(gpus) if gpus else ''}, token {'required' if token else 'not required (loopback)'}",
        flush=True,
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        jobs.shutdown()
    return 0
