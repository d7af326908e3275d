"""One server job in its own process: ``python -m pocketseg_core.server.child JOB.json``.

The server runs every job in a child process so that Cancel can kill it at once, a crash of
torch or CUDA ends one job and not the service, and each worker can be given its own GPU
(``CUDA_VISIBLE_DEVICES``). The job file and the events follow the Slicer worker's contract
(``{"kind": "segment", "model", "input", "output", "options"}`` in; one JSON object per line
on stdout: ``progress``, ``result``, ``error``), so the two can become one module.

Exit status: 0 done, 1 an error for the user (``PocketSegError``), 3 anything else. The mask is
written atomically; a child whose server died stops at its next progress report and removes
its job folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from pocketseg_core.errors import PocketSegError

#: the smallest time between two progress events with the same message (s)
PROGRESS_INTERVAL_S = 0.1


class Events:
    """Writes one JSON event per line; its ``progress`` is a pocketseg_core progress callback."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.parent = os.getppid()
        self.orphaned = False
        self._last = (0.0, "")

    def emit(self, event: str, **fields: Any) -> None:
        try:
            self.stream.write(json.dumps({"event": event, **fields}) + "\n")
            self.stream.flush()
        except OSError:  # the server is gone (its end of the pipe closed): stop at the next report
            self.orphaned = True

    def progress(self, fraction: float, message: str) -> bool:
        now = time.monotonic()
        if message != self._last[1] or now - self._last[0] >= PROGRESS_INTERVAL_S:
            self.emit("progress", fraction=round(float(fraction), 4), message=str(message))
            self._last = (now, message)
        # the server died (SIGKILL, crash): stop instead of computing for nobody
        self.orphaned = self.orphaned or os.getppid() != self.parent
        return not self.orphaned


def run_segment(job: dict[str, Any], events: Events) -> dict[str, Any]:
    from pocketseg_core.bundles import load_bundle
    from pocketseg_core.inference import InferenceOptions, segment_image
    from pocketseg_core.io import read_image, write_image

    events.progress(0.0, "reading the image")
    image = read_image(Path(job["input"]))
    events.progress(0.0, "loading the model")
    bundle = load_bundle(job["model"])
    options = InferenceOptions(**dict(job.get("options") or {}))
    result = segment_image(image, bundle, options, events.progress)
    write_image(result.mask, Path(job["output"]))
    return {"device": str(result.device), "seconds": float(result.seconds), "messages": list(result.messages)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # stdout carries only events: whatever a library prints goes to stderr (the job's log)
    stream = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    events = Events(stream)
    events.emit("started", pid=os.getpid())
    job_file = Path(argv[0])
    try:
        job = json.loads(job_file.read_text(encoding="utf-8"))
        result = run_segment(job, events)
    except PocketSegError as error:
        events.emit("error", error=type(error).__name__, message=str(error))
        return 1
    except BaseException as error:  # reported to the server, which keeps the traceback in its log
        print(traceback.format_exc(), file=sys.stderr)
        events.emit("error", error="unexpected", message=f"{type(error).__name__}: {error}")
        return 3
    finally:
        if events.orphaned:  # nobody will clean up after us
            shutil.rmtree(job_file.parent, ignore_errors=True)
    events.emit("result", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
