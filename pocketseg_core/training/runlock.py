"""One training run per folder at a time, and no trace of a run that failed before it began.

:func:`locked_run` holds an exclusive lock on ``<run folder>/.pocketseg-run.lock`` for the whole
run (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows; the operating system drops it when
the process dies, so a killed run never leaves a stale lock). A second ``pocketseg train`` on the
same folder, ``--resume`` or not, is refused at once instead of both writing the same
checkpoints.

When the run fails (an error, not a cancel or Ctrl-C, which stay resumable) before any fold
has saved a checkpoint, every file and folder the run created is removed again (nothing that
was there before is touched), so the rerun is not refused as "already holds a training run".
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from pocketseg_core.errors import Cancelled, PocketSegError

LOCK_FILE = ".pocketseg-run.lock"


def _try_lock(handle) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _started(run_dir: Path) -> bool:
    """True once a fold has saved something worth resuming."""
    return any(run_dir.glob("fold_*/last.pt")) or any(run_dir.glob("fold_*/state.json"))


@contextlib.contextmanager
def locked_run(run_dir: Path) -> Iterator[None]:
    """Hold the folder's run lock; undo a failed start (see the module docstring).

    Raises:
        PocketSegError: another process holds the lock.
    """
    created_folder = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        before = {entry.name for entry in run_dir.iterdir()}
        handle = open(run_dir / LOCK_FILE, "a+b")  # noqa: SIM115 - held for the whole run
    except OSError as error:
        raise PocketSegError(
            f"cannot use {run_dir} as the run folder ({error.strerror or error}); choose a folder you can write to"
        ) from None
    if not _try_lock(handle):
        handle.close()
        raise PocketSegError(
            f"another training run is using {run_dir} right now (its lock {LOCK_FILE} is held); "
            f"wait for it to finish or stop it, or choose another --output"
        )
    try:
        yield
    except Cancelled:
        raise  # the user stopped it: kept as it is, resumable (as the message says)
    except Exception:
        if not _started(run_dir):
            for entry in run_dir.iterdir():
                if entry.name in before or entry.name == LOCK_FILE:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            if created_folder:
                handle.close()
                (run_dir / LOCK_FILE).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    run_dir.rmdir()
        raise
    finally:
        handle.close()  # also releases the lock
