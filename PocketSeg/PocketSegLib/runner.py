"""Run a long job in a background thread with progress and cancel, for a GUI that never freezes.

The widget starts a :class:`BackgroundRun` and polls :meth:`BackgroundRun.status` from a timer
(as SlicerMONAIAuto3DSeg polls its process). The job receives a ``progress(fraction, message)``
callback that returns ``False`` once :meth:`BackgroundRun.cancel` was called:
``pocketseg_core.inference.segment_image`` then raises ``Cancelled`` within one batch of
windows. The job must not touch the MRML scene (VTK/MRML are not thread-safe): the caller
applies the result on the main thread after the run is done, so a cancelled or failed run
leaves the scene exactly as it was.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pocketseg_core.errors import Cancelled

ProgressCallback = Callable[[float, str], bool]

RUNNING, SUCCEEDED, CANCELLED, FAILED = "running", "succeeded", "cancelled", "failed"


@dataclass(frozen=True)
class RunStatus:
    """A snapshot of a run for the GUI: state, fraction done in [0, 1], last message, seconds."""

    state: str
    fraction: float
    message: str
    elapsed_s: float
    error: BaseException | None = None
    error_details: str = ""

    @property
    def done(self) -> bool:
        return self.state != RUNNING


class BackgroundRun:
    """``job(progress)`` in a daemon thread; thread-safe status, cancel and result."""

    def __init__(self, job: Callable[[ProgressCallback], Any], name: str = "PocketSeg run") -> None:
        self._job = job
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._state = RUNNING
        self._fraction = 0.0
        self._message = "starting"
        self._started: float | None = None
        self._ended: float | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self._details = ""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> BackgroundRun:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop at its next progress report."""
        self._cancel.set()
        with self._lock:
            if self._state == RUNNING:
                self._message = "cancelling..."

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def _progress(self, fraction: float, message: str) -> bool:
        with self._lock:
            self._fraction = min(max(float(fraction), 0.0), 1.0)
            if not self._cancel.is_set():
                self._message = message
        return not self._cancel.is_set()

    def _run(self) -> None:
        try:
            result = self._job(self._progress)
            state, error, details = SUCCEEDED, None, ""
            if self._cancel.is_set():
                # Finished before it saw the request: honour the user's cancel, drop the result.
                state, result, error = CANCELLED, None, Cancelled("cancelled by the user")
        except Cancelled as cancelled:
            state, result, error, details = CANCELLED, None, cancelled, ""
        except BaseException as failure:  # reported to the GUI, which shows it in plain words
            state, result, error, details = FAILED, None, failure, traceback.format_exc()
        with self._lock:
            self._state, self._result, self._error, self._details = state, result, error, details
            if state == SUCCEEDED:
                self._fraction, self._message = 1.0, "done"
            elif state == CANCELLED:
                self._message = "cancelled"
            self._ended = time.perf_counter()
        self._finished.set()

    def status(self) -> RunStatus:
        with self._lock:
            end = self._ended if self._ended is not None else time.perf_counter()
            elapsed = end - self._started if self._started is not None else 0.0
            return RunStatus(self._state, self._fraction, self._message, elapsed, self._error, self._details)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends (or ``timeout`` s pass); True when it has ended."""
        return self._finished.wait(timeout)

    def result(self) -> Any:
        """The job's return value; raises the job's exception (or ``Cancelled``) if it did not succeed."""
        if not self._finished.is_set():
            raise RuntimeError("the run has not finished yet: poll status() or wait() first")
        if self._error is not None:
            raise self._error
        return self._result
