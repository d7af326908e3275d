"""PocketSegTrain's MRML logic, importable without Qt (``slicer-core`` is enough).

One concern per module; the scene and module logics come from PocketSeg's
:class:`~PocketSegLib.scene_context.SlicerContext` (Slicer's globals inside Slicer, a headless
scene in the tests):

- ``cases``       a training case (volume + segmentation + segment) copied out of the scene and
                  written to a run folder as image + label files with the CSV the training reads
- ``validation``  checks of the cases before any training (clear errors naming the case)
- ``terminology`` a segment's name, colour and SNOMED codes <-> a bundle label
- ``results``     out-of-fold predictions as segmentation nodes, the per-case metrics table
- ``curves``      the learning curves as a table node + plot chart node
- ``logic``       :class:`PocketSegTrainLogic`, used by the widget and the Python console

Nothing here imports ``qt`` or ``ctk``; ``PocketSegTrain.py`` holds the only Qt code.
"""

from PocketSegTrainLib.cases import TrainingCase

__all__ = ["TrainingCase"]
