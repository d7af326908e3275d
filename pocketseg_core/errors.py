"""Exceptions with messages meant for the person at the keyboard.

Every error a user can cause derives from :class:`PocketSegError`; its message names the
problem and what to do about it. The CLI prints it without a traceback; the Slicer module
shows it in a dialog.
"""


class PocketSegError(Exception):
    """Base class of errors caused by input, configuration or environment (not by bugs)."""


class InputImageError(PocketSegError):
    """An image or label file cannot be used: missing, unreadable, not 3D, empty, NaN ..."""


class ImageWriteError(PocketSegError):
    """An image cannot be written where asked (folder missing or read-only, bad name, disk full)."""


class GridMismatchError(PocketSegError):
    """Two images that must share a voxel grid do not."""


class BundleError(PocketSegError):
    """A model bundle is missing, corrupt, fails its checksum or does not match its config."""


class NetworkConfigError(PocketSegError, ValueError):
    """A network was asked for with an unknown name or arguments it cannot honour."""


class DatasetError(PocketSegError):
    """A training dataset is empty, inconsistent, or too small for the requested folds."""


class CheckpointWriteError(PocketSegError):
    """A checkpoint or run file could not be written; the previous version was kept."""


class Cancelled(PocketSegError):
    """The user cancelled a run; nothing half-written was left behind."""
