"""Run on a PocketSeg server: the same progress, Cancel and scene rules as a run on this computer.

"Run on: a PocketSeg server (URL, token)" sends the volume to ``pocketseg serve`` on another
machine (a lab's GPU box) through :mod:`pocketseg_core.remote` (standard library only: no torch
and no extra package in Slicer). :class:`RemoteRun` has the shape of the local runner's
:class:`~PocketSegLib.runner.WorkerRun`: ``start()``, ``status() -> RunStatus`` (polled from the
widget's timer; one short HTTP request at most every ``poll_interval_s``), ``cancel(reason)``
(the server kills the job's process), ``wait(progress)``, ``result() -> dict`` (device, seconds,
messages) and ``path(name)``/``on_finish(callback)`` for the mask file, which lives in a
temporary folder removed in every outcome. :meth:`PocketSegLib.logic.PocketSegLogic.start`
builds one when ``SegmentOptions.server`` is set, so the logic's checks and ``finish()`` are
the same for both: nothing enters the scene before ``finish()`` on the main thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketseg_core.errors import Cancelled, PocketSegError
from pocketseg_core.remote import REQUEST_TIMEOUT_S, RemoteClient, ServerError, ServerUnreachable
from pocketseg_core.remote import SUCCEEDED as SERVER_SUCCEEDED
from PocketSegLib.runner import CANCELLED, FAILED, RUNNING, SUCCEEDED, PolledRun, RunStatus

#: seconds between two status requests, however often the GUI polls
POLL_INTERVAL_S = 0.25
#: seconds a server may stay unreachable before the run fails (a Wi-Fi hiccup is not an error)
UNREACHABLE_GRACE_S = 10.0


@dataclass
class ServerSettings:
    """What "Run on: a PocketSeg server" holds: its address and token (empty: no token)."""

    url: str
    token: str = field(default="", repr=False)  # kept out of reprs, hence out of logs

    def client(self, timeout: float = REQUEST_TIMEOUT_S) -> RemoteClient:
        """A client of the server; ``timeout``: seconds a request may wait for an answer."""
        return RemoteClient(self.url, self.token or None, timeout)


class RemoteRun(PolledRun):
    """One job on a PocketSeg server, polled like the local runner's run (never runs MRML).

    ``files`` are written into the run's temporary folder before the upload (file name ->
    ``write(path)``); ``upload`` names the one sent (its ending is its format: ``.mha``,
    ``.nrrd``, ``.nii.gz``), and the server's mask, in the same format, is saved as ``mask``.
    """

    def __init__(
        self,
        client: RemoteClient,
        model: str,
        options: dict[str, Any] | None,
        files: dict[str, Callable[[Path], Any]],
        upload: str,
        mask: str,
        name: str = "PocketSeg server",
        poll_interval_s: float = POLL_INTERVAL_S,
        unreachable_grace_s: float = UNREACHABLE_GRACE_S,
    ) -> None:
        self.client, self.model, self.options = client, model, dict(options or {})
        self.files, self.upload, self.mask, self.name = dict(files or {}), upload, mask, name
        self.poll_interval_s, self.unreachable_grace_s = poll_interval_s, unreachable_grace_s
        self.work_dir: Path | None = None
        self.job_id: str | None = None
        self._state, self._fraction, self._message = RUNNING, 0.0, "starting"
        self._started, self._ended = 0.0, None
        self._last_poll = 0.0
        self._unreachable_since: float | None = None
        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._finishers: list[Callable[[RemoteRun], None]] = []

    def start(self) -> RemoteRun:
        """Write the files and upload the input (blocking for the upload's duration)."""
        self._started = time.perf_counter()
        self._make_work_dir("pocketseg-remote-")
        try:
            self._message = "uploading"
            self.job_id = self.client.submit(self.path(self.upload), self.model, self.options)
            self._message = "queued on the server"
        except BaseException:
            self._remove_work_dir()
            raise
        return self

    def status(self) -> RunStatus:
        """The run as last seen; asks the server when ``poll_interval_s`` has passed."""
        now = time.perf_counter()
        if (
            self._state == RUNNING
            and self.job_id is not None
            and now - self._last_poll >= self.poll_interval_s
        ):
            self._last_poll = now
            self._poll(now)
        return self._snapshot()

    def _poll(self, now: float) -> None:
        try:
            seen = self.client.status(self.job_id)
        except ServerUnreachable as error:
            self._unreachable_since = self._unreachable_since or now
            if now - self._unreachable_since >= self.unreachable_grace_s:
                self._end(FAILED, error)
            return
        except ServerError as error:  # the server forgot the job (restarted), refused the token ...
            self._end(FAILED, error)
            return
        self._unreachable_since = None
        self._fraction, self._message = seen.fraction, seen.message
        if not seen.done:
            return
        if seen.state != SERVER_SUCCEEDED:
            error = seen.error_instance()
            self._end(CANCELLED if isinstance(error, Cancelled) else FAILED, error)
            return
        try:
            self.client.fetch_mask(self.job_id, self.path(self.mask))
        except PocketSegError as error:
            self._end(FAILED, error)
            return
        self._result = {
            "device": seen.device,
            "seconds": seen.seconds,
            "messages": list(seen.messages),
            "output": str(self.path(self.mask)),
        }
        self._fraction = 1.0
        self._end(SUCCEEDED, None)

    def _end(self, state: str, error: BaseException | None) -> None:
        self._state, self._error = state, error
        self._message = {SUCCEEDED: "done", CANCELLED: "cancelled"}.get(state, "failed")
        self._ended = time.perf_counter()
        try:
            self._call_finishers()
        finally:
            if self.job_id is not None and not isinstance(error, ServerUnreachable):
                self._forget()

    def _forget(self) -> None:
        try:
            self.client.cancel(self.job_id)  # stops it if still running, forgets it otherwise
        except ServerError:
            pass

    def cancel(self, reason: BaseException | None = None) -> None:
        """Stop the server's job now; the run ends cancelled (or failed with ``reason``)."""
        if self._state != RUNNING:
            return
        if reason is None:
            self._end(CANCELLED, Cancelled(f"{self.name} run cancelled by the user; nothing was changed"))
        else:
            self._end(FAILED, reason)

    def result(self) -> dict[str, Any]:
        """Device, seconds and messages of the job; raises its error (or ``Cancelled``) otherwise."""
        if self._state == RUNNING:
            raise RuntimeError("the run has not finished yet: poll status() or wait() first")
        if self._error is not None:
            raise self._error
        return dict(self._result or {})
