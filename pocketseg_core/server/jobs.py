"""The server's job queue: jobs wait in line and run N at a time, each in a child process.

No web framework here: :class:`JobQueue` is plain threads and processes, and the HTTP layer
(:mod:`pocketseg_core.server.app`) only calls it. Each job owns a temporary folder (the upload,
the job file, the mask, the child's log) that is removed in every outcome: the mask's bytes are
kept in memory until the client fetches them or the job is forgotten (``keep_s`` after it ended).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketseg_core.remote import CANCELLED, FAILED, FINISHED_STATES, QUEUED, RUNNING, SUCCEEDED

logger = logging.getLogger("pocketseg.serve")

#: the job process: the Slicer modules' worker (job file in, JSON event lines on stdout)
CHILD_MODULE = "pocketseg_core.worker"
#: seconds a finished job (and its mask) is kept for its client
KEEP_FINISHED_S = 3600.0
#: the last characters of a failed child's log kept for the server's log
LOG_TAIL_CHARS = 4000


@dataclass
class Job:
    """One segmentation request and what became of it (guarded by the queue's lock)."""

    id: str
    model: str  # the name the client asked for
    model_path: Path
    extension: str  # the upload's (and the mask's) file ending
    options: dict[str, Any]
    work_dir: Path
    state: str = QUEUED
    fraction: float = 0.0
    message: str = "queued"
    error: str = ""
    error_kind: str = ""
    device: str = ""
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)
    mask: bytes | None = None
    created: float = field(default_factory=time.monotonic)
    ended: float | None = None
    process: subprocess.Popen | None = None

    @property
    def input_path(self) -> Path:
        return self.work_dir / f"input{self.extension}"

    @property
    def mask_path(self) -> Path:
        return self.work_dir / f"mask{self.extension}"

    def to_dict(self, position: int | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "state": self.state,
            "fraction": round(self.fraction, 4),
            "message": self.message,
            "error": self.error,
            "error_kind": self.error_kind,
            "device": self.device,
            "seconds": round(self.seconds, 3),
            "messages": list(self.messages),
            "format": self.extension,
            "position": position,
        }


class JobQueue:
    """Jobs in line, ``workers`` running at once; worker ``i`` sees GPU ``gpus[i]`` when given."""

    def __init__(
        self,
        workers: int = 1,
        gpus: list[str] | None = None,
        device: str = "auto",
        work_root: Path | None = None,
        max_queued: int = 32,
        keep_s: float = KEEP_FINISHED_S,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.gpus = list(gpus or [])
        self.device = device
        self.max_queued = max_queued
        self.keep_s = keep_s
        self.work_root = Path(tempfile.mkdtemp(prefix="pocketseg-serve-", dir=work_root))
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._line: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._work, args=(index,), name=f"pocketseg-worker-{index}", daemon=True)
            for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # --- the HTTP layer's calls ------------------------------------------------------------------

    def new_job(self, model: str, model_path: Path, extension: str, options: dict[str, Any]) -> Job:
        """A job with its folder, not yet queued (the upload is written into ``job.input_path``)."""
        self._forget_old()
        job_id = secrets.token_urlsafe(16)
        work_dir = Path(tempfile.mkdtemp(prefix="job-", dir=self.work_root))
        return Job(job_id, model, model_path, extension, dict(options), work_dir)

    def discard(self, job: Job) -> None:
        """Drop a job that was never queued (its upload failed or was refused)."""
        shutil.rmtree(job.work_dir, ignore_errors=True)

    def queued_count(self) -> int:
        with self._lock:
            return sum(1 for job in self._jobs.values() if job.state == QUEUED)

    def running_count(self) -> int:
        with self._lock:
            return sum(1 for job in self._jobs.values() if job.state == RUNNING)

    def is_full(self) -> bool:
        return self.queued_count() >= self.max_queued

    def enqueue(self, job: Job) -> dict[str, Any]:
        with self._lock:
            self._jobs[job.id] = job
        self._line.put(job.id)
        return self.describe(job.id)

    def describe(self, job_id: str) -> dict[str, Any] | None:
        """The job as the client sees it (with its place in line when queued), or None."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            position = None
            if job.state == QUEUED:
                waiting = sorted((j.created, j.id) for j in self._jobs.values() if j.state == QUEUED)
                position = [j for _, j in waiting].index(job_id) + 1
            return job.to_dict(position)

    def mask(self, job_id: str) -> tuple[bytes, str] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.mask is None:
                return None
            return job.mask, job.extension

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued or running job (its process is killed); forget a finished one."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state in FINISHED_STATES:
                del self._jobs[job_id]
                return job.to_dict()
            process, was_queued = job.process, job.state == QUEUED
            self._finish(job, CANCELLED, "cancelled", "the job was cancelled; nothing was kept", "Cancelled")
        if process is not None:
            kill_process_group(process)
        if was_queued:  # no worker will see it: its folder goes now
            shutil.rmtree(job.work_dir, ignore_errors=True)
        return self.describe(job_id)

    def shutdown(self) -> None:
        """Stop every job and remove every folder (the server is stopping)."""
        for job_id in list(self._jobs):
            self.cancel(job_id)
        for _ in self._threads:
            self._line.put(None)
        shutil.rmtree(self.work_root, ignore_errors=True)

    # --- the workers ---------------------------------------------------------------------------------

    def _work(self, index: int) -> None:
        while True:
            job_id = self._line.get()
            if job_id is None:
                return
            with self._lock:
                job = self._jobs.get(job_id)
                if job is None or job.state != QUEUED:
                    continue
                job.state, job.message = RUNNING, "starting"
            try:
                self._run(job, index)
            except BaseException as error:  # a bug here must not stop the worker
                logger.exception("job %s failed in the server", job.id)
                with self._lock:
                    self._finish(job, FAILED, "failed", f"the server failed to run the job ({error})", "")
            finally:
                shutil.rmtree(job.work_dir, ignore_errors=True)

    def _environment(self, index: int) -> dict[str, str]:
        import pocketseg_core

        env = dict(os.environ)
        core = str(Path(pocketseg_core.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            [core, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
        )
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("PYTHONIOENCODING", "utf-8")
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[index % len(self.gpus)]
        return env

    def _run(self, job: Job, index: int) -> None:
        job_file = job.work_dir / "job.json"
        spec = {
            "kind": "segment",
            "model": str(job.model_path),
            "input": str(job.input_path),
            "output": str(job.mask_path),
            "options": {**job.options, "device": self.device},
            "own_folder": True,  # a job process orphaned by a killed server removes the folder
        }
        job_file.write_text(json.dumps(spec), encoding="utf-8")
        log_path = job.work_dir / "child.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", CHILD_MODULE, str(job_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=str(job.work_dir),
                env=self._environment(index),
                # its own process group (Cancel kills it whole), no setsid(): a setsid() group
                # is a separate scheduler autogroup on Linux (see PocketSegLib.runner)
                process_group=0,
            )
        with self._lock:
            cancelled = job.state != RUNNING
            job.process = process
        if cancelled:  # cancelled between the queue and the start
            kill_process_group(process)
        result: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        with process.stdout:
            for raw in process.stdout:
                try:
                    event = json.loads(raw.decode("utf-8", errors="replace"))
                except ValueError:
                    continue
                kind = event.get("event") if isinstance(event, dict) else None
                if kind == "progress":
                    with self._lock:
                        if job.state == RUNNING:
                            job.fraction = min(max(float(event.get("fraction", 0.0)), 0.0), 1.0)
                            job.message = str(event.get("message", ""))
                elif kind == "result":
                    result = event
                elif kind == "error":
                    error = event
        code = process.wait()
        mask = job.mask_path.read_bytes() if code == 0 and result and job.mask_path.is_file() else None
        with self._lock:
            job.process = None
            if job.state != RUNNING:  # cancelled meanwhile: already finished
                return
            if mask is not None:
                job.mask = mask
                job.device = str(result.get("device", ""))
                job.seconds = float(result.get("seconds", 0.0))
                job.messages = [str(m) for m in result.get("messages", [])]
                self._finish(job, SUCCEEDED, "done", "", "")
                job.fraction = 1.0
                return
            if error is not None and error.get("error") != "unexpected":
                self._finish(
                    job, FAILED, "failed", str(error.get("message", "")), str(error.get("error", ""))
                )
                return
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]
        logger.error("job %s: the child process ended with status %s:\n%s", job.id, code, tail)
        message = (
            str(error.get("message"))
            if error
            else f"the segmentation process ended unexpectedly (status {code})"
        )
        with self._lock:
            self._finish(job, FAILED, "failed", f"{message}; the server's log has the details", "")

    @staticmethod
    def _finish(job: Job, state: str, message: str, error: str, error_kind: str) -> None:
        job.state, job.message, job.error, job.error_kind = state, message, error, error_kind
        job.ended = time.monotonic()

    def _forget_old(self) -> None:
        now = time.monotonic()
        with self._lock:
            for job_id in [
                j.id for j in self._jobs.values() if j.ended is not None and now - j.ended > self.keep_s
            ]:
                del self._jobs[job_id]


def kill_process_group(process: subprocess.Popen) -> None:
    """Kill a child started in its own process group and everything it started, and reap it."""
    if process.poll() is not None:
        return
    kill_group = getattr(os, "killpg", None)  # POSIX; elsewhere the child alone
    try:
        if kill_group is None:
            raise PermissionError
        kill_group(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        logger.warning("process %d did not end within 5 s of being killed", process.pid)
