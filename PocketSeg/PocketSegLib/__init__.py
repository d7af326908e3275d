"""PocketSeg's MRML logic, importable without Qt and without a running Slicer application.

One concern per module; every function receives the scene (and the module logics it needs)
through a :class:`~PocketSegLib.scene_context.SlicerContext`, which defaults to Slicer's globals
inside Slicer and is built by :func:`~PocketSegLib.scene_context.create_headless_context` in the
tests (``slicer-core``, no GUI):

- ``scene_context``  the scene + the logics, inside Slicer or headless
- ``volume_io``      volume node <-> SimpleITK image with exact geometry (RAS <-> LPS)
- ``segmentation``   segmentation nodes with named, coloured, SNOMED-coded segments
- ``comparison``     two segments -> a table node of the eight metrics
- ``runner``         a child process (``python -m pocketseg_core.worker``) polled without threads,
                     with progress, Cancel (kills its process group) and its temporary folder
- ``dependencies``   torch checked without importing it, installed only after asking
- ``logic``          :class:`PocketSegLogic`, used by the module's widget and the Python console

Nothing here imports ``qt`` or ``ctk``; the widget in ``PocketSeg.py`` is the only Qt code.
"""

from PocketSegLib.scene_context import SlicerContext, create_headless_context

__all__ = ["SlicerContext", "create_headless_context"]
