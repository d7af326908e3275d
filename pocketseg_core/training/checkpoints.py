"""Atomic writes of checkpoints and run files: a reader (or a resumed run) sees the old file or the new one.

Every write goes to a temporary file in the target's folder (same file system), is flushed to
disk, then moved over the target with ``os.replace``. If writing fails (disk full, permission)
the temporary file is removed, the previous file is untouched, and
:class:`CheckpointWriteError` says what happened.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

from pocketseg_core.errors import PocketSegError
from pocketseg_core.io import give_default_permissions


class CheckpointWriteError(PocketSegError):
    """A checkpoint or run file could not be written; the previous version was kept."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    give_default_permissions(temporary)  # mkstemp makes 0600; the user's umask decides instead
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"could not write {target} ({error.strerror or error}); the previous version was kept. "
            f"Free disk space or choose another output folder, then rerun with --resume."
        ) from error
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))  # names under an ASCII locale


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically. Serialisation happens in memory first, so a failure
    while pickling or while writing leaves the previous file as it was."""
    import torch  # here, not at the top: report.py uses this module and must load without torch

    buffer = io.BytesIO()
    try:
        torch.save(obj, buffer)
    except OSError as error:
        raise CheckpointWriteError(f"could not serialise the checkpoint for {path}: {error}") from error
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> Any:
    """A checkpoint written by :func:`atomic_torch_save`, loaded with ``weights_only=True`` on the CPU."""
    import torch

    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise PocketSegError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); delete it to restart "
            f"that fold, or rerun without --resume"
        ) from error
