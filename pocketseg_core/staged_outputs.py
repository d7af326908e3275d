"""Several output images written together or not at all, never at the cost of the user's files.

``pocketseg predict`` writes a mask and optionally a masked volume and probabilities. Writing them
one by one and deleting the written ones when a later one fails loses the user's earlier file of
the same name: it was already replaced by the new one, and the rollback deleted that. Here every
image is first written completely into a hidden staging folder beside its target (same file
system, final file names, so a detached header names its data file correctly); only when all are
written are they moved into place, each existing file set aside first. A failure while moving
puts back what was set aside; a failure while staging leaves the targets untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import SimpleITK as sitk

from pocketseg_core.errors import ImageWriteError
from pocketseg_core.io import write_image

BACKUP_FOLDER = ".previous"


class StagedOutputs:
    """``write`` each image, then ``commit()`` (or ``discard()``); usable as a context manager,
    which discards whatever was not committed."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (staging folder, target)

    def write(self, image: sitk.Image, target: str | os.PathLike) -> Path:
        """Write ``image`` for ``target`` into a staging folder beside it (nothing visible yet)."""
        target = Path(target)
        folder = target.parent if str(target.parent) else Path(".")
        if not folder.is_dir():
            raise ImageWriteError(
                f"{target}: cannot write, the folder {folder} does not exist. Create it or choose another path."
            )
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staged-", dir=folder))
        except OSError as error:
            raise ImageWriteError(
                f"{target}: cannot write into {folder} ({error.strerror or error}). Choose a folder you can write to."
            ) from error
        self._staged.append((staging, target))
        write_image(image, staging / target.name)
        return target

    def commit(self) -> list[Path]:
        """Move every staged image into place; all or nothing. Returns the targets."""
        placed: list[Path] = []
        set_aside: list[tuple[Path, Path]] = []  # (backup, original place)
        try:
            for staging, target in self._staged:
                backups = staging / BACKUP_FOLDER
                backups.mkdir()
                files = sorted(
                    (p for p in staging.iterdir() if p.is_file()), key=lambda p: p.name == target.name
                )  # a detached header last, after its data file
                for file in files:
                    destination = target.parent / file.name
                    if destination.exists() and not destination.is_dir():
                        os.replace(destination, backups / file.name)
                        set_aside.append((backups / file.name, destination))
                    os.replace(file, destination)
                    placed.append(destination)
        except OSError as error:
            for path in reversed(placed):
                path.unlink(missing_ok=True)
            for backup, original in reversed(set_aside):
                os.replace(backup, original)
            self.discard()
            raise ImageWriteError(
                f"the outputs could not be put in place ({error.strerror or error}); "
                "the files that were there before are unchanged"
            ) from error
        targets = [target for _, target in self._staged]
        self.discard()
        return targets

    def discard(self) -> None:
        """Remove the staging folders (and whatever was set aside after a commit)."""
        for staging, _ in self._staged:
            shutil.rmtree(staging, ignore_errors=True)
        self._staged = []

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()
