"""Run a long job in a child process with progress and Cancel, for a GUI that never freezes.

Why a process and not a thread: inside the Slicer application the main thread holds Python's
GIL while Qt's event loop waits (CTK starts PythonQt without thread support and nothing releases
the GIL), so a Python thread advances only when the GUI happens to run Python: a 7 s skull strip
took 248 s, and Cancel was as late. SlicerMONAIAuto3DSeg and SlicerTotalSegmentator run their
work in ``PythonSlicer`` for the same reason.

A :class:`WorkerRun` writes the job as a JSON file into its own temporary folder, starts
``python -m pocketseg_core.worker job.json`` (``PythonSlicer`` inside Slicer, ``sys.executable``
elsewhere) in a new process group, and never waits on it: :meth:`WorkerRun.status` (called by
the widget's QTimer, or by the blocking :meth:`WorkerRun.wait`) reads whatever JSON lines the
child has written to its stdout pipe without blocking, and the child's stderr goes to a log file
in the same folder. :meth:`WorkerRun.cancel` kills the whole process group at once (the child
writes its outputs atomically, so nothing half-written is left); the temporary folder is removed
in every outcome, as soon as the run has ended and its result was read.

No thread is started here, so the run advances whatever the host does with the GIL.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketseg_core import errors
from pocketseg_core.errors import Cancelled, PocketSegError

ProgressCallback = Callable[[float, str], bool]

RUNNING, SUCCEEDED, CANCELLED, FAILED = "running", "succeeded", "cancelled", "failed"
#: how long a killed child may take to be reaped before we stop waiting (s)
KILL_WAIT_S = 1.0
#: the last part of the child's stderr kept for an error's details (characters)
LOG_TAIL_CHARS = 20_000
#: environment variables passed on to the child even from Slicer's clean start-up environment
PASSED_ENVIRONMENT_PREFIXES = ("POCKETSEG_",)


class WorkerFailed(PocketSegError):
    """The child process failed on something that is not the user's input (a bug, a crash)."""


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


def core_folder() -> Path:
    """The folder that holds the ``pocketseg_core`` package (put on the child's PYTHONPATH)."""
    import pocketseg_core

    return Path(pocketseg_core.__file__).resolve().parent.parent


def python_command() -> list[str]:
    """The Python that runs the worker: Slicer's ``PythonSlicer`` inside Slicer, else this one."""
    slicer = sys.modules.get("slicer")
    if slicer is not None and getattr(slicer, "app", None) is not None:
        found = shutil.which("PythonSlicer")
        if found:
            return [found]
        raise PocketSegError(
            "Slicer's Python launcher (PythonSlicer) was not found next to Slicer; reinstall Slicer"
        )
    return [sys.executable]


def child_environment() -> dict[str, str]:
    """The child's environment: Slicer's start-up one inside Slicer (as ``launchConsoleProcess``
    uses), else ours; with ``pocketseg_core`` importable and PocketSeg's own settings passed on."""
    slicer = sys.modules.get("slicer")
    startup = getattr(getattr(slicer, "util", None), "startupEnvironment", None)
    env = (
        dict(startup())
        if callable(startup) and getattr(slicer, "app", None) is not None
        else dict(os.environ)
    )
    for key, value in os.environ.items():
        if key.startswith(PASSED_ENVIRONMENT_PREFIXES):
            env[key] = value
    paths = [str(core_folder())] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def kill_process_tree(process: subprocess.Popen) -> None:
    """Kill the child and everything it started (its process group / job tree) at once."""
    if process.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(
            ["taskkill", "/F", "/T", "/PID", str(process.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        process.kill()
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        logging.warning(
            "PocketSeg: process %d did not end within %.1f s of being killed", process.pid, KILL_WAIT_S
        )


def error_from_event(event: dict[str, Any]) -> BaseException:
    """The exception a child's error event stands for (a PocketSegError subclass by name)."""
    name, message = str(event.get("error", "")), str(event.get("message", ""))
    if name == "Cancelled":
        return Cancelled(message or "cancelled")
    error_class = getattr(errors, name, None)
    if isinstance(error_class, type) and issubclass(error_class, PocketSegError):
        return error_class(message)
    return WorkerFailed(message or "the worker process failed")


class PolledRun:
    """What a run polled by a timer shares (a local worker or a server's job): ``wait`` for the
    console, on top of the subclass's ``status()`` and ``cancel()``; the run's temporary folder
    (``work_dir``, made by :meth:`_make_work_dir` with the subclass's ``files`` written into it)
    and the ``on_finish`` callbacks called when the run ends (``_finishers``)."""

    work_dir: Path | None
    files: dict[str, Callable[[Path], Any]]
    _finishers: list[Callable[[Any], None]]

    def path(self, name: str) -> Path:
        """A file of the run's temporary folder (exists from ``start`` until the run ends)."""
        if self.work_dir is None:
            raise RuntimeError("the run has not started")
        return self.work_dir / name

    def on_finish(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(run)`` once, when the run has ended (before the temporary folder goes)."""
        self._finishers.append(callback)

    def _make_work_dir(self, prefix: str) -> Path:
        """Make the run's temporary folder and write ``files`` into it (removed again if a write fails)."""
        self.work_dir = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            for file_name, write in self.files.items():
                write(self.work_dir / file_name)
        except BaseException:
            self._remove_work_dir()
            raise
        return self.work_dir

    def _remove_work_dir(self) -> None:
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _call_finishers(self) -> BaseException | None:
        """Call the ``on_finish`` callbacks once, then remove the temporary folder. A callback that
        raises (the mask is unreadable, say) fails a run that had succeeded: that error is returned."""
        failure = None
        try:
            for callback in self._finishers:
                try:
                    callback(self)
                except BaseException as error:
                    if self._state == SUCCEEDED:
                        self._state, self._error, self._message = FAILED, error, "failed"
                        failure = error
        finally:
            self._finishers = []
            self._remove_work_dir()
        return failure

    def status(self) -> RunStatus:
        raise NotImplementedError

    def cancel(self, reason: BaseException | None = None) -> None:
        raise NotImplementedError

    def take_progress(self, status: RunStatus) -> list[tuple[float, str]]:
        """The progress reports (fraction, message) since the last call, oldest first, for
        :meth:`wait`; by default the latest one while the run is on."""
        return [] if status.done else [(status.fraction, status.message)]

    def _snapshot(self, details: str = "") -> RunStatus:
        """The run's state as a ``RunStatus``, from the fields every subclass keeps (``_state``,
        ``_fraction``, ``_message``, ``_error``, and ``_started`` / ``_ended`` perf-counter times)."""
        end = self._ended if self._ended is not None else time.perf_counter()
        return RunStatus(
            self._state,
            self._fraction,
            self._message,
            end - self._started if self._started else 0.0,
            self._error,
            details,
        )

    def wait(
        self, progress: ProgressCallback | None = None, timeout: float | None = None, interval: float = 0.05
    ) -> RunStatus:
        """Block until the run ends (console use); ``progress`` returning False cancels it."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while True:
            status = self.status()
            if progress is not None:
                for fraction, message in self.take_progress(status):
                    if progress(fraction, message) is False and not status.done:
                        self.cancel()
                        return self.status()
            if status.done:
                return status
            if deadline is not None and time.perf_counter() > deadline:
                return status
            time.sleep(interval)


class WorkerRun(PolledRun):
    """One job in a child process: start, poll without blocking, cancel, read the result.

    ``files`` are written into the run's temporary folder before the start: a mapping from file
    name to a ``write(path)`` function (the input volume, for example). ``on_log`` receives the
    child's ``log`` events (training epochs) as they are read.
    """

    def __init__(
        self,
        job: dict[str, Any],
        files: dict[str, Callable[[Path], Any]] | None = None,
        name: str = "PocketSeg",
        on_log: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.job = dict(job)
        self.files = dict(files or {})
        self.on_log = on_log
        self.work_dir: Path | None = None
        self.process: subprocess.Popen | None = None
        self._buffer = b""
        self._log_offset = 0
        self._log_tail = ""
        self._state = RUNNING
        self._fraction = 0.0
        self._message = "starting"
        #: every progress event since the last take_progress(): a short job can send all of them
        #: between two polls, and the console's wait() should still pass each one on
        self._progress_reports: list[tuple[float, str]] = []
        self._started = 0.0
        self._ended: float | None = None
        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._error_event: dict[str, Any] | None = None
        self._details = ""
        self._lines: list[str] = []
        self._finishers: list[Callable[[WorkerRun], None]] = []

    # --- starting ---------------------------------------------------------------------------

    def start(self) -> WorkerRun:
        self._started = time.perf_counter()
        self._make_work_dir("pocketseg-run-")
        try:
            job = {
                key: (
                    str(self.work_dir / value[len("@") :])
                    if isinstance(value, str) and value.startswith("@")
                    else value
                )
                for key, value in self.job.items()
            }
            job["own_folder"] = True  # if Slicer dies mid-run, the worker removes this folder
            job_path = self.work_dir / "job.json"
            job_path.write_text(json.dumps(job, indent=1), encoding="utf-8")
            log = open(self.work_dir / "worker.log", "wb")  # noqa: SIM115 (the child owns it)
            try:
                options: dict[str, Any] = {}
                if os.name == "nt":
                    options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(
                        subprocess, "CREATE_NO_WINDOW", 0
                    )
                else:
                    # Its own process group, so Cancel kills it whole; but no setsid(): Linux
                    # schedules each setsid() group as a separate "autogroup", and a worker
                    # started that way got a third of the CPU beside other jobs started from
                    # Slicer (a 4 s skull strip took 17 s beside two background trainings).
                    options["process_group"] = 0
                self.process = subprocess.Popen(
                    [*python_command(), "-m", "pocketseg_core.worker", str(job_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=child_environment(),
                    cwd=str(self.work_dir),
                    **options,
                )
            finally:
                log.close()
            os.set_blocking(self.process.stdout.fileno(), False)
        except BaseException:
            if self.process is not None:
                kill_process_tree(self.process)
            self._remove_work_dir()
            raise
        return self

    # --- polling ----------------------------------------------------------------------------

    def _read_events(self) -> None:
        stream = self.process.stdout if self.process is not None else None
        if stream is None or stream.closed:
            return
        while True:
            try:
                chunk = os.read(stream.fileno(), 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._handle_line(line.decode("utf-8", errors="replace").strip())

    def _handle_line(self, line: str) -> None:
        if not line:
            return
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            self._lines.append(line)  # not an event: keep it as a log line
            return
        kind = event["event"]
        if kind == "progress":
            self._fraction = min(max(float(event.get("fraction", 0.0)), 0.0), 1.0)
            if self._state == RUNNING:
                self._message = str(event.get("message", ""))
                self._progress_reports.append((self._fraction, self._message))
        elif kind == "log":
            message = str(event.get("message", ""))
            self._lines.append(message)
            if self.on_log is not None:
                self.on_log(message)
        elif kind == "result":
            self._result = {key: value for key, value in event.items() if key != "event"}
        elif kind == "error":
            self._error_event = event

    def _read_log(self) -> None:
        if self.work_dir is None:
            return
        try:
            with open(self.work_dir / "worker.log", "rb") as handle:
                handle.seek(self._log_offset)
                data = handle.read()
        except OSError:
            return
        if data:
            self._log_offset += len(data)
            text = data.decode("utf-8", errors="replace")
            self._log_tail = (self._log_tail + text)[-LOG_TAIL_CHARS:]
            for line in text.splitlines():
                if line.strip():
                    logging.info("%s worker: %s", self.name, line)

    def status(self) -> RunStatus:
        """Read what the child reported so far (never blocks); ends the run when the child has."""
        if self._state == RUNNING and self.process is not None:
            self._read_events()
            self._read_log()
            code = self.process.poll()
            if code is not None:
                self._read_events()
                if self._buffer:
                    self._handle_line(self._buffer.decode("utf-8", errors="replace").strip())
                    self._buffer = b""
                self._end_with_exit_code(code)
        return self._snapshot(self._details)

    def take_progress(self, status: RunStatus) -> list[tuple[float, str]]:
        reports, self._progress_reports = self._progress_reports, []
        return reports or super().take_progress(status)

    def _end_with_exit_code(self, code: int) -> None:
        if code == 0 and self._result is not None:
            self._state, self._fraction, self._message = SUCCEEDED, 1.0, "done"
            self._end()
            return
        if self._error_event is not None:
            error = error_from_event(self._error_event)
            details = str(self._error_event.get("traceback", "")) or self._log_tail
        else:
            error = WorkerFailed(
                f"the {self.name} process ended unexpectedly (exit status {code}); the details are in the log"
            )
            details = self._log_tail
        self._fail(error, details, CANCELLED if isinstance(error, Cancelled) else FAILED)

    def _fail(self, error: BaseException, details: str = "", state: str = FAILED) -> None:
        self._state, self._error, self._details = state, error, details
        self._message = "cancelled" if state == CANCELLED else "failed"
        self._end()

    def _end(self) -> None:
        self._ended = time.perf_counter()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        failure = self._call_finishers()
        if failure is not None:  # e.g. reading the mask failed: the run failed
            self._details = str(failure)

    # --- cancel, wait, result ----------------------------------------------------------------

    def cancel(self, reason: BaseException | None = None) -> None:
        """Kill the child and its children now; the run ends cancelled (or failed with ``reason``)."""
        if self._state != RUNNING:
            return
        if self.process is not None:
            kill_process_tree(self.process)
        if reason is None:
            self._fail(Cancelled(f"{self.name} cancelled by the user; nothing was changed"), "", CANCELLED)
        else:
            self._fail(reason, "", FAILED)

    def take_log(self) -> list[str]:
        """The child's log lines read since the last call."""
        lines, self._lines = self._lines, []
        return lines

    @property
    def log_tail(self) -> str:
        return self._log_tail

    def result(self) -> dict[str, Any]:
        """The child's result event; raises its error (or ``Cancelled``) if it did not succeed."""
        if self._state == RUNNING:
            raise RuntimeError("the run has not finished yet: poll status() or wait() first")
        if self._error is not None:
            raise self._error
        return dict(self._result or {})
