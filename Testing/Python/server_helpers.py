"""A ``pocketseg serve`` for tests: the real command in its own process group, on loopback.

Shared by the server tests and the Slicer-logic tests that segment through a server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO_ROOT

from pocketseg_core.remote import RemoteClient, ServerUnreachable

#: the tiny fitted bundle, made once per test session for every server test module
_FITTED: dict[str, Path] = {}

TOKEN = "test-token-0123456789abcdef"
MODEL = "tiny-skullstrip"
#: options that make the tiny model slow (many overlapping windows, 8 flips): a job to cancel
SLOW_OPTIONS = {"tta": True, "overlap": 0.9}
#: an oblique, flipped grid: geometry must survive the round trip exactly
OBLIQUE = (0.0, -0.8, 0.6, 1.0, 0.0, 0.0, 0.0, 0.6, 0.8)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """``pocketseg serve`` in a child process group, stopped at the end."""

    def __init__(self, models_dir: Path, work_dir: Path, token_file: Path | None, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.work_dir = work_dir
        env = {**os.environ, "POCKETSEG_MODELS_DIR": str(models_dir), "PYTHONPATH": str(REPO_ROOT)}
        command = [sys.executable, "-m", "pocketseg_core", "serve", "--port", str(self.port)]
        command += ["--device", "cpu", "--work-dir", str(work_dir), *extra]
        if token_file is not None:
            command += ["--token-file", str(token_file)]
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.token = TOKEN if token_file is not None else None
        deadline = time.monotonic() + 60
        while True:
            try:
                RemoteClient(self.url, self.token, timeout=2).health()
                return
            except ServerUnreachable:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    output = self.process.stdout.read().decode("utf-8", "replace")
                    raise RuntimeError(f"the server did not start:\n{output}") from None
                time.sleep(0.2)

    def client(self, token: str | None = TOKEN) -> RemoteClient:
        return RemoteClient(self.url, token)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process.stdout.close()


def child_processes(work_dir: Path) -> list[int]:
    """Ids of the job processes whose job file lies under ``work_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        if "pocketseg_core.worker" in command and str(work_dir) in command:
            found.append(int(entry.name))
    return found


def job_folders(work_dir: Path) -> list[Path]:
    return [p for p in work_dir.rglob("job-*") if p.is_dir()]


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def fitted_tiny_bundle(tmp_path_factory) -> Path:
    """A tiny skull-strip bundle fitted on phantoms, made once per session (fitting takes seconds)."""
    if "skullstrip" not in _FITTED:
        from tiny_bundles import make_tiny_bundle

        _FITTED["skullstrip"] = make_tiny_bundle(
            tmp_path_factory.mktemp("bundle") / "brain", "skullstrip", "MR"
        )
    return _FITTED["skullstrip"]
