"""The MRML scene and the module logics PocketSeg's logic works with.

Inside the Slicer application they already exist (``slicer.mrmlScene``,
``slicer.modules.segmentations.logic()``): :meth:`SlicerContext.from_slicer` picks them up.
Outside it (pytest on ``slicer-core``, a plain Python process) :func:`create_headless_context`
builds a scene and registers the logics the way Slicer's application does at start-up; without
that registration the segmentation conversion rules do not exist and ``AddEmptySegment`` fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import slicer


@dataclass
class SlicerContext:
    """A scene and the logics PocketSeg needs from it.

    ``keep_alive`` holds the objects a headless context created (application logic, other
    module logics) so that Python does not free them while the scene still uses them.
    """

    scene: Any  # vtkMRMLScene
    segmentations_logic: Any  # vtkSlicerSegmentationsModuleLogic
    volumes_logic: Any | None = None  # vtkSlicerVolumesLogic (reading volumes by file name)
    keep_alive: list[Any] = field(default_factory=list, repr=False)

    @property
    def subject_hierarchy(self) -> Any:
        """The scene's ``vtkMRMLSubjectHierarchyNode`` (created on first use)."""
        return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)

    @classmethod
    def from_slicer(cls) -> SlicerContext:
        """The running Slicer application's scene and logics."""
        scene = getattr(slicer, "mrmlScene", None)
        modules = getattr(slicer, "modules", None)
        if scene is None or modules is None:
            raise RuntimeError(
                "no running Slicer application (slicer.mrmlScene is missing): outside Slicer, "
                "build a scene with PocketSegLib.create_headless_context() and pass it on"
            )
        return cls(
            scene=scene,
            segmentations_logic=modules.segmentations.logic(),
            volumes_logic=modules.volumes.logic(),
        )


def default_context(context: SlicerContext | None = None) -> SlicerContext:
    """``context`` when given, else the running Slicer application's."""
    return context if context is not None else SlicerContext.from_slicer()


def create_headless_context() -> SlicerContext:
    """A new scene with the application and module logics registered, as Slicer does at start-up.

    Used by the tests and by scripts run with plain Python on ``slicer-core``.
    """
    from vtkmodules.vtkCommonCore import vtkCollection

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    app_logic.SetSliceLogics(vtkCollection())
    app_logic.SetViewLogics(vtkCollection())

    def register(logic: Any, name: str) -> Any:
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        return logic

    # Colors first: AddArchetypeVolume looks up the default colour tables through it.
    colors = register(slicer.vtkMRMLColorLogic(), "Colors")
    volumes = register(slicer.vtkSlicerVolumesLogic(), "Volumes")
    segmentations = register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
    subject_hierarchy = register(slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy")
    tables = register(slicer.vtkSlicerTablesLogic(), "Tables")
    return SlicerContext(
        scene=scene,
        segmentations_logic=segmentations,
        volumes_logic=volumes,
        keep_alive=[app_logic, colors, subject_hierarchy, tables],
    )


class SceneBoundRun:
    """A background run started from the scene (a segmentation or a training), for the logics'
    ``Background*`` classes: cancelled when the scene closes, ended with the subclass's clear
    message (:meth:`missing_node_error`) when a node it reads or writes leaves the scene.

    Subclasses set ``self.logic`` (whose ``context.scene`` is watched) and ``self.run`` (a
    ``WorkerRun`` or ``RemoteRun``).
    """

    logic: Any
    run: Any
    _observer: int | None = None

    def watch_scene(self) -> None:
        """Cancel the run when the scene starts closing (File > Close scene, scene.Clear())."""
        scene = self.logic.context.scene
        self._observer = scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._on_scene_close)

    def _on_scene_close(self, caller: Any = None, event: Any = None) -> None:
        self.cancel()

    def _unwatch_scene(self) -> None:
        if self._observer is not None:
            self.logic.context.scene.RemoveObserver(self._observer)
            self._observer = None

    def missing_node_error(self) -> Exception | None:
        """A clear error when a node of the run has left the scene, else None."""
        raise NotImplementedError

    def status(self) -> Any:
        """The run's ``RunStatus``; ends it first when :meth:`missing_node_error` finds a node gone."""
        if not self.run.status().done:
            error = self.missing_node_error()
            if error is not None:
                self.run.cancel(reason=error)
        return self.run.status()

    def cancel(self) -> None:
        self.run.cancel()
        self._unwatch_scene()

    def wait(self, progress: Any = None, timeout: float | None = None) -> Any:
        """Block until the run ends (console use); ``progress`` returning False cancels it."""

        def watching(fraction: float, message: str) -> bool:
            if self.status().done:
                return True
            return True if progress is None else progress(fraction, message) is not False

        return self.run.wait(watching, timeout)
