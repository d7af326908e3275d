"""PocketSegTrainLogic: k-fold cross-validation from segmentation nodes, results back in the scene.

Slicer's Python console (or ``Slicer --no-main-window --python-script``, or ``PythonSlicer``)::

    from PocketSegTrainLib.logic import PocketSegTrainLogic
    from PocketSegTrainLib.cases import TrainingCase
    cases = [TrainingCase(volumeNode, segmentationNode, "Brain"), ...]   # or a dataset folder
    result = PocketSegTrainLogic().run(cases, "pocketnet-nfbs", "/data/runs/brain", folds=5, epochs=50)
    result.table_node, result.chart_node, result.prediction_nodes, result.model_name

Like PocketSeg's logic, a run has three steps and only the middle one computes, in a child
process (``python -m pocketseg_core.worker``, see ``PocketSegLib.runner``):
:meth:`PocketSegTrainLogic.prepare` copies the cases out of the scene and checks them (main
thread, no torch), :meth:`PocketSegTrainLogic.start` exports them to the run folder and starts the
cross-validation in the child (which also registers the model), and
:meth:`BackgroundTraining.finish` brings the results into the scene (main thread). Nothing is
added to the scene before ``finish``: a cancelled run (the child is killed; its checkpoints are
written atomically) leaves the scene as it was and its run folder marked ``INCOMPLETE``;
``resume=True`` with the same settings continues it. This process never imports torch.

Run folder: ``<output_dir>/cases`` (the exported images, labels and ``cases.csv``) and
``<output_dir>/run`` (the cross-validation run, layout in ``pocketseg_core.training.crossval``).
Every new run needs a folder of its own: :func:`new_run_folder` makes one per run (the GUI's
output folder is the parent of its runs).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PocketSegLib.runner import ProgressCallback, WorkerRun
from PocketSegLib.scene_context import SceneBoundRun, SlicerContext, default_context

from pocketseg_core.devices import device_name
from pocketseg_core.errors import PocketSegError
from PocketSegTrainLib import cases as cases_module
from PocketSegTrainLib import curves, results, validation
from PocketSegTrainLib.cases import CaseData, TrainingCase
from PocketSegTrainLib.terminology import label_from_segment, task_of_label

CASES_FOLDER, RUN_FOLDER = "cases", "run"
#: the networks of ``pocketseg_core.networks.network_names()`` as plain data (no torch import);
#: a test keeps the two equal
NETWORK_NAMES: tuple[str, ...] = (
    "pocket_unet3d",
    "unet3d",
    "pocket_resnet3d",
    "resnet3d",
    "pocket_densenet3d",
    "densenet3d",
    "pocket_unet2d",
    "unet2d",
    "pocket_resnet2d",
    "resnet2d",
    "pocket_densenet2d",
    "densenet2d",
    "lvnet",
)


def default_runs_folder() -> Path:
    """Where the GUI puts its runs unless told otherwise: ``~/.pocketseg/runs``."""
    return Path.home() / ".pocketseg" / "runs"


def new_run_folder(parent: str | os.PathLike, name: str) -> Path:
    """A folder of its own for a new run: ``<parent>/<name>-<YYYYmmdd-HHMMSS>`` (``-2``... when taken).

    Not created here (``prepare`` writes nothing); two runs started in one second still differ.
    """
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", name.strip()) or "run"
    stem = Path(parent).expanduser() / f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, number = stem, 2
    while candidate.exists() or str(candidate) in _RESERVED_FOLDERS:
        candidate, number = stem.with_name(f"{stem.name}-{number}"), number + 1
    _RESERVED_FOLDERS.add(str(candidate))
    return candidate


_RESERVED_FOLDERS: set[str] = set()


@dataclass
class PreparedTraining:
    """A checked run, its cases copied out of the scene (or a dataset path), and its config."""

    data: list[CaseData]
    config: Any  # pocketseg_core.training.TrainingConfig
    output_dir: Path
    resume: bool
    register: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def cases_dir(self) -> Path:
        return self.output_dir / CASES_FOLDER

    @property
    def run_dir(self) -> Path:
        return self.output_dir / RUN_FOLDER


@dataclass
class TrainingResult:
    """What a finished run brought into the scene and the catalog."""

    run_dir: Path
    model_name: str | None
    model_path: Path | None  # the registered bundle (None when not registered)
    prediction_nodes: dict[str, Any]  # case name -> segmentation node "<case> <network> CV"
    table_node: Any
    chart_node: Any
    curves_table_node: Any
    summary: dict[str, dict[str, float]]
    warnings: list[str]
    cross_validation: dict[str, Any]  # the worker's result: run_dir, bundle_path, summary, per_case...

    @property
    def nodes(self) -> list[Any]:
        """Every node this run added to the scene."""
        return [*self.prediction_nodes.values(), self.table_node, self.chart_node, self.curves_table_node]


class PocketSegTrainLogic:
    """The MRML logic of PocketSegTrain; ``context`` defaults to the running Slicer's."""

    def __init__(self, context: SlicerContext | None = None) -> None:
        self._context = context
        self._runs: list[BackgroundTraining] = []

    @property
    def context(self) -> SlicerContext:
        if self._context is None:
            self._context = default_context()
        return self._context

    @staticmethod
    def preset_names() -> list[str]:
        """The training presets (plain data; no torch import)."""
        from pocketseg_core.training import presets

        return presets.preset_names()

    @staticmethod
    def network_names() -> list[str]:
        """The networks a run may use instead of its preset's (plain data; no torch import)."""
        return list(NETWORK_NAMES)

    # --- the three steps ------------------------------------------------------------------

    def prepare(
        self,
        cases: list[TrainingCase] | str | os.PathLike,
        preset: str = "pocketnet-nfbs",
        output_dir: str | os.PathLike | None = None,
        folds: int = 5,
        epochs: int | None = None,
        device: str = "auto",
        network: str | None = None,
        resume: bool = False,
        model_name: str | None = None,
        register: bool = True,
        **overrides: Any,
    ) -> PreparedTraining:
        """Check the cases and copy them out of the scene (main thread).

        ``cases``: a list of :class:`TrainingCase`, or a dataset folder / list file in any layout
        ``pocketseg_core.training.datasets`` reads (then no prediction nodes are made: the cases
        are not in the scene). ``overrides`` are any ``TrainingConfig`` keys (``steps_per_epoch``,
        ``spacing``, ``network_args``...). Raises ``DatasetError`` naming the case for bad input.
        """
        from pocketseg_core.training import config_from_preset

        if output_dir is None:
            output_dir = new_run_folder(default_runs_folder(), model_name or preset)
        output_dir = Path(output_dir)
        run_dir = output_dir / RUN_FOLDER
        if model_name is None and resume and (run_dir / "run.json").is_file():
            model_name = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["config"]["name"]
        model_name = model_name or f"{preset}-slicer-{time.strftime('%Y%m%d-%H%M%S')}"
        from pocketseg_core.bundles import check_bundle_name

        check_bundle_name(model_name)  # it names a catalog folder: one plain folder name, before any work
        settings: dict[str, Any] = {"name": model_name, "folds": int(folds)}
        settings["device"] = device_name(device)
        if epochs is not None:
            settings["epochs"] = int(epochs)
        if network:
            settings["network"] = network
        settings.update(overrides)

        data: list[CaseData] = []
        warnings: list[str] = []
        if isinstance(cases, (str, os.PathLike)):
            settings["dataset"] = str(Path(cases).expanduser().resolve())
            config = config_from_preset(preset).replace(**settings)
        else:
            cases = list(cases)
            if not cases:
                raise PocketSegError("no training cases: add at least one case per fold")
            validation.check_fold_count(
                len({case.subject or case.case_name for case in cases}), len(cases), int(folds)
            )
            data = cases_module.collect_cases(cases)
            first = data[0].case.segmentation_node.GetSegmentation().GetSegment(data[0].segment_id)
            label = label_from_segment(first)
            settings.setdefault("labels", [label])
            settings.setdefault("task", task_of_label(label))
            settings["dataset"] = str((output_dir / CASES_FOLDER / cases_module.CASES_CSV).resolve())
            config = config_from_preset(preset).replace(**settings)
            warnings = validation.validate_cases(data, config.folds, config.modality)
        return PreparedTraining(data, config, output_dir, bool(resume), bool(register), warnings)

    def start(
        self, prepared: PreparedTraining, on_log: Callable[[str], None] | None = None
    ) -> BackgroundTraining:
        """Export the cases (main thread) and start the cross-validation in a child process;
        poll ``status()``, then call ``finish()`` on the main thread."""
        if prepared.data:
            cases_module.export_cases(prepared.data, prepared.cases_dir)
        job = {
            "kind": "train",
            "config": prepared.config.to_dict(),
            "run_dir": str(Path(prepared.run_dir).resolve()),
            "resume": prepared.resume,
            "register": prepared.register,
        }
        run = WorkerRun(job, name="PocketSegTrain", on_log=on_log)
        training = BackgroundTraining(self, prepared, run)
        run.start()
        training.watch_scene()
        self._runs.append(training)
        return training

    def cancel_all(self) -> None:
        """Cancel every run of this logic (the module calls it when the scene closes)."""
        for training in list(self._runs):
            training.cancel()
        self._runs = []

    def apply(self, prepared: PreparedTraining, cv_result: dict[str, Any]) -> TrainingResult:
        """Bring a finished run (the worker's result: summary, per_case, model_path, model_name)
        into the scene (main thread). The worker has registered the model already."""
        network = prepared.config.network
        run_name = prepared.config.name
        # read every prediction before touching the scene (a missing file leaves it as it was)
        masks = [
            results.prediction_on_case_grid(results.read_prediction(prepared.run_dir, item), item)
            for item in prepared.data
        ]
        scene = self.context.scene
        added: list[Any] = []
        try:
            prediction_nodes: dict[str, Any] = {}
            rows: list[tuple[str, dict[str, float]]] = []
            for item, mask in zip(prepared.data, masks, strict=True):
                node = results.add_prediction_node(self.context, item, mask, network)
                added.append(node)
                prediction_nodes[item.case.case_name] = node
                rows.append((item.case.case_name, results.case_metrics(item, node)))
            if not prepared.data:  # a dataset folder: the run's own per-case numbers
                rows = [(row["case"], row) for row in cv_result.get("per_case", [])]
            table = results.metrics_table(self.context, rows, f"{run_name} cross-validation metrics")
            added.append(table)
            chart, curves_table = curves.learning_curves_chart(
                self.context, prepared.run_dir / "training_log.csv", f"{run_name} learning curves"
            )
            added += [chart, curves_table]
            added += [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
        except BaseException:
            for node in reversed(added):
                if node is not None and scene.IsNodePresent(node):
                    scene.RemoveNode(node)
            raise
        model_path = Path(cv_result["model_path"]) if cv_result.get("model_path") else None
        model_name = cv_result.get("model_name")
        return TrainingResult(
            run_dir=prepared.run_dir,
            model_name=model_name,
            model_path=model_path,
            prediction_nodes=prediction_nodes,
            table_node=table,
            chart_node=chart,
            curves_table_node=curves_table,
            summary=dict(cv_result.get("summary", {})),
            warnings=list(prepared.warnings),
            cross_validation=cv_result,
        )

    # --- one-call use -----------------------------------------------------------------------

    def run(
        self,
        cases: list[TrainingCase] | str | os.PathLike,
        *args: Any,
        progress: ProgressCallback | None = None,
        log: Callable[[str], None] | None = print,
        **kwargs: Any,
    ) -> TrainingResult:
        """Train, cross-validate and bring the results back (blocking; console and scripts).

        ``args``/``kwargs`` are those of :meth:`prepare` (preset, output_dir, folds, epochs,
        device, network, resume, model_name, register and TrainingConfig overrides).
        """
        prepared = self.prepare(cases, *args, **kwargs)
        for warning in prepared.warnings:
            if log is not None:
                log(f"warning: {warning}")
        training = self.start(prepared, on_log=log)
        training.wait(progress)
        return training.finish()


class BackgroundTraining(SceneBoundRun):
    """A training run in a child process, with its epoch log (see :meth:`PocketSegTrainLogic.start`).

    Cancelled when the scene closes; ``finish()`` applies the result on the main thread.
    """

    def __init__(self, logic: PocketSegTrainLogic, prepared: PreparedTraining, run: WorkerRun) -> None:
        self.logic, self.prepared, self.run = logic, prepared, run
        run.on_finish(lambda _run: self._unwatch_scene())

    def missing_node_error(self) -> PocketSegError | None:
        """A clear error when a case's volume or segmentation has left the scene, else None."""
        scene = self.logic.context.scene
        for item in self.prepared.data:
            for node in (item.case.volume_node, item.case.segmentation_node):
                if node is not None and not scene.IsNodePresent(node):
                    return PocketSegError(
                        f"case {item.case.case_name}: '{node.GetName()}' was removed from the scene during the "
                        "training; nothing was added. Add the case again and rerun (tick Resume to continue)"
                    )
        return None

    def take_log(self) -> list[str]:
        """The epoch lines logged since the last call."""
        return self.run.take_log()

    def finish(self) -> TrainingResult:
        """Main thread, once ``status().done``: apply the result, or raise the run's error/``Cancelled``."""
        result = self.run.result()
        error = self.missing_node_error()
        if error is not None:
            raise error
        return self.logic.apply(self.prepared, result)
