"""The child-process entry point: ``python -m pocketseg_core.worker JOB.json``.

The Slicer modules never run torch in Slicer's own process: inside the application the main
thread holds Python's GIL while Qt waits for events, so a Python thread would advance only when
the GUI happens to run Python (see docs/architecture.md, "Runs out of process"). They write a job
file and the input as files, start this module with Slicer's Python (``PythonSlicer``) or
``sys.executable``, poll its stdout from a timer and kill its process group on Cancel. The
server (``pocketseg serve``, :mod:`pocketseg_core.server.jobs`) runs each job with it too.

Job file (JSON, UTF-8), one of::

    {"kind": "segment", "model": BUNDLE_FOLDER, "input": IMAGE, "output": MASK,
     "options": {InferenceOptions fields}}
    {"kind": "train", "config": {TrainingConfig fields}, "run_dir": FOLDER, "resume": false,
     "register": true}

and optionally ``"own_folder": true``: the job file's folder belongs to this job alone, and a
worker whose parent died (a killed server, a crashed Slicer) removes it, input included, since
nobody else will.

Stdout carries only events, one JSON object per line (anything else a library prints goes to
stderr, which the parent keeps as the log)::

    {"event": "started", "pid": 123, "python": "3.12.1"}
    {"event": "progress", "fraction": 0.42, "message": "windows 10/24"}
    {"event": "log", "message": "fold 1 epoch 2: loss ..."}
    {"event": "result", ...}            # segment: device, seconds, messages, output
                                        # train: summary, per_case, bundle_path, model_path, model_name
    {"event": "error", "error": "InputImageError", "message": "one sentence", "traceback": ""}

Exit status: 0 done, 1 a :class:`~pocketseg_core.errors.PocketSegError` (message for the user),
2 an unusable job file, 3 an unexpected error (traceback in the event and on stderr).
Outputs are written atomically, so a killed worker leaves no partial mask. An orphaned worker
(its parent gone, or its end of the events pipe closed) stops at its next progress report.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from pocketseg_core.errors import Cancelled, PocketSegError

#: the smallest time between two progress events of one message (s): enough for a 5 Hz poll
PROGRESS_INTERVAL_S = 0.1
EXIT_OK, EXIT_USER_ERROR, EXIT_BAD_JOB, EXIT_UNEXPECTED = 0, 1, 2, 3


class EventWriter:
    """Writes one JSON event per line to the events stream (the worker's real stdout)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last_time = 0.0
        self._last_message = ""
        self._parent = os.getppid()
        self.orphaned = False  # nobody reads the events any more

    def emit(self, event: str, **fields: Any) -> None:
        if self.orphaned:
            return
        try:
            self.stream.write(json.dumps({"event": event, **fields}, ensure_ascii=True) + "\n")
            self.stream.flush()
        except OSError:  # the parent is gone (a killed server closed its end of the pipe)
            self.orphaned = True
            try:  # closed now, so that no flush at exit reports the broken pipe again
                self.stream.close()
            except OSError:
                pass

    def parent_gone(self) -> bool:
        """True once the worker is orphaned: its parent died, or the events pipe broke."""
        self.orphaned = self.orphaned or os.getppid() != self._parent
        return self.orphaned

    def progress(self, fraction: float, message: str) -> bool:
        """A progress callback for pocketseg_core (throttled); False once the parent is gone."""
        now = time.monotonic()
        if message != self._last_message or now - self._last_time >= PROGRESS_INTERVAL_S or fraction >= 1.0:
            self.emit("progress", fraction=round(float(fraction), 4), message=str(message))
            self._last_time, self._last_message = now, message
        # an orphaned worker (the application or server died) stops at its next report
        return not self.parent_gone()


def _inference_options(values: dict[str, Any]) -> Any:
    from dataclasses import fields

    from pocketseg_core.inference import InferenceOptions

    known = {f.name for f in fields(InferenceOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PocketSegError(f"the job names unknown inference options: {', '.join(unknown)}")
    if values.get("window_size_zyx") is not None:
        values = {**values, "window_size_zyx": tuple(values["window_size_zyx"])}
    return InferenceOptions(**values)


def run_segment(job: dict[str, Any], events: EventWriter) -> dict[str, Any]:
    """Read the input, segment it with the bundle, write the mask (atomically)."""
    from pocketseg_core.bundles import load_bundle
    from pocketseg_core.inference import segment_image
    from pocketseg_core.io import read_image, write_image
    from pocketseg_core.malloc_tuning import tune_malloc_for_large_arrays

    tune_malloc_for_large_arrays()  # the worker process is the job's own
    events.progress(0.0, "reading the image")
    image = read_image(Path(job["input"]))
    events.progress(0.0, "loading the model")
    bundle = load_bundle(job["model"], read_weights=False)  # read (by torch) only if torch runs it
    result = segment_image(image, bundle, _inference_options(dict(job.get("options") or {})), events.progress)
    write_image(result.mask, Path(job["output"]))
    return {
        "output": str(job["output"]),
        "device": str(result.device),
        "backend": result.backend,
        "seconds": float(result.seconds),
        "messages": list(result.messages),
        "timings": {key: float(value) for key, value in result.timings.items()},
    }


class _TrainingEvents:
    """pocketseg_core training callbacks -> progress and log events."""

    def __init__(self, events: EventWriter) -> None:
        self.events = events

    def on_progress(self, fraction: float, message: str) -> bool:
        return self.events.progress(fraction, message)

    def on_epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        self.events.emit(
            "log",
            message=(
                f"fold {fold} epoch {epoch}: loss {metrics['train_loss']:.4f}, validation loss "
                f"{metrics['val_loss']:.4f}, validation Dice {metrics['val_dice']:.4f} "
                f"({metrics['seconds']:.1f} s)"
            ),
        )


def run_train(job: dict[str, Any], events: EventWriter) -> dict[str, Any]:
    """Run the cross-validation of the job's config; register the bundle when asked."""
    from pocketseg_core.training import TrainingConfig, run_cross_validation

    config = TrainingConfig.from_dict(dict(job["config"])).replace(show_progress=False)
    result = run_cross_validation(
        config, Path(job["run_dir"]), resume=bool(job.get("resume")), callbacks=_TrainingEvents(events)
    )
    model_path = model_name = None
    if job.get("register", True) and result.bundle_path is not None:
        from pocketseg_core.bundles import read_config, register_bundle

        model_path = register_bundle(result.bundle_path)
        model_name = read_config(model_path).name
    return {
        "run_dir": str(result.run_dir),
        "bundle_path": str(result.bundle_path) if result.bundle_path else None,
        "model_path": str(model_path) if model_path else None,
        "model_name": model_name,
        "summary": result.summary,
        "per_case": result.per_case,
    }


JOBS: dict[str, Callable[[dict[str, Any], EventWriter], dict[str, Any]]] = {
    "segment": run_segment,
    "train": run_train,
}


def _events_stream() -> TextIO:
    """The real stdout, reserved for events; fd 1 (and ``sys.stdout``) then point at stderr, so
    whatever torch or a library prints cannot break a line of the protocol."""
    sys.stdout.flush()
    stream = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return stream


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    events = EventWriter(_events_stream())
    events.emit("started", pid=os.getpid(), python=sys.version.split()[0])
    try:
        if len(argv) != 1:
            raise ValueError("usage: python -m pocketseg_core.worker JOB.json")
        job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        kind = job.get("kind") if isinstance(job, dict) else None
        if kind not in JOBS:
            raise ValueError(f"unknown job kind {kind!r}; expected one of {', '.join(JOBS)}")
    except (OSError, ValueError) as error:
        events.emit("error", error="BadJob", message=f"unusable job file: {error}", traceback="")
        return EXIT_BAD_JOB
    try:
        return _run(job, kind, events)
    finally:
        # nobody will clean up after an orphaned worker: the folder that is its own goes (the input)
        if job.get("own_folder") is True and events.parent_gone():
            shutil.rmtree(Path(argv[0]).resolve().parent, ignore_errors=True)


def _run(job: dict[str, Any], kind: str, events: EventWriter) -> int:
    """Run a parsed job; report its result or error as events; the exit status."""
    try:
        result = JOBS[kind](job, events)
    except Cancelled as error:
        events.emit("error", error="Cancelled", message=str(error), traceback="")
        return EXIT_USER_ERROR
    except PocketSegError as error:
        events.emit("error", error=type(error).__name__, message=str(error), traceback="")
        return EXIT_USER_ERROR
    except BaseException as error:  # reported to the parent, which shows it with the details
        details = traceback.format_exc()
        print(details, file=sys.stderr)
        events.emit(
            "error", error="unexpected", message=f"{type(error).__name__}: {error}", traceback=details
        )
        return EXIT_UNEXPECTED
    events.emit("progress", fraction=1.0, message="done")
    events.emit("result", **result)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
