"""Atomic writes of checkpoints and run files: a reader (or a resumed run) sees the old file or the new one.

Every write goes through :func:`pocketseg_core.io.write_bytes_atomic` (a temporary file in the
target's folder, flushed to disk, then ``os.replace``). If writing fails (disk full, permission)
the temporary file is removed, the previous file is untouched, and
:class:`~pocketseg_core.errors.CheckpointWriteError` says what happened and how to resume.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from pocketseg_core.errors import CheckpointWriteError, PocketSegError
from pocketseg_core.io import write_bytes_atomic

__all__ = [
    "CheckpointWriteError",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_checkpoint",
]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`pocketseg_core.io.write_bytes_atomic`),
    creating the folder; a failure is a :class:`CheckpointWriteError` that says how to resume."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return write_bytes_atomic(target, data)
    except (OSError, PocketSegError) as error:
        reason = error if isinstance(error, PocketSegError) else f"{target}: {error.strerror or error}"
        raise CheckpointWriteError(
            f"{reason} Free disk space or choose another output folder, then rerun with --resume."
        ) from error


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
