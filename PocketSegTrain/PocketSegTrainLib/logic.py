"""PocketSegTrainLogic: k-fold cross-validation from segmentation nodes, results back in the scene.

Slicer's Python console (or ``Slicer --no-main-window --python-script``, or ``PythonSlicer``)::

    from PocketSegTrainLib.logic import PocketSegTrainLogic
    from PocketSegTrainLib.cases import TrainingCase
    cases = [TrainingCase(volumeNode, segmentationNode, "Brain"), ...]   # or a dataset folder
    result = PocketSegTrainLogic().run(cases, "pocketnet-nfbs", "/data/runs/brain", folds=5, epochs=50)
    result.table_node, result.chart_node, result.prediction_nodes, result.model_name

Like PocketSeg's logic, a run has three steps so that the GUI can run the middle one in a
background thread: :meth:`PocketSegTrainLogic.prepare` copies the cases out of the scene and
checks them (main thread), :meth:`PocketSegTrainLogic.compute` exports them and runs
``pocketseg_core``'s cross-validation (any thread, no MRML), :meth:`PocketSegTrainLogic.apply`
brings the results into the scene and registers the model (main thread). Nothing is added to the
scene before ``apply``: a cancelled run leaves the scene as it was and its run folder marked
``INCOMPLETE``; ``resume=True`` with the same settings continues it.

Run folder: ``<output_dir>/cases`` (the exported images, labels and ``cases.csv``) and
``<output_dir>/run`` (the cross-validation run, layout in ``pocketseg_core.training.crossval``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PocketSegLib.runner import BackgroundRun, ProgressCallback
from PocketSegLib.scene_context import SlicerContext, default_context

from pocketseg_core.devices import device_name
from pocketseg_core.errors import PocketSegError
from PocketSegTrainLib import cases as cases_module
from PocketSegTrainLib import curves, results, validation
from PocketSegTrainLib.cases import CaseData, TrainingCase
from PocketSegTrainLib.terminology import label_from_segment, task_of_label

CASES_FOLDER, RUN_FOLDER = "cases", "run"


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
    cross_validation: Any  # pocketseg_core.training.crossval.CrossValidationResult

    @property
    def nodes(self) -> list[Any]:
        """Every node this run added to the scene."""
        return [*self.prediction_nodes.values(), self.table_node, self.chart_node, self.curves_table_node]


class _Callbacks:
    """pocketseg_core training callbacks -> a ``progress(fraction, message) -> bool`` and a log."""

    def __init__(self, progress: ProgressCallback | None, log: Callable[[str], None] | None) -> None:
        self.progress, self.log = progress, log

    def on_progress(self, fraction: float, message: str) -> bool | None:
        return None if self.progress is None else self.progress(fraction, message)

    def on_epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        if self.log is not None:
            self.log(
                f"fold {fold} epoch {epoch}: loss {metrics['train_loss']:.4f}, validation loss "
                f"{metrics['val_loss']:.4f}, validation Dice {metrics['val_dice']:.4f} ({metrics['seconds']:.1f} s)"
            )


class PocketSegTrainLogic:
    """The MRML logic of PocketSegTrain; ``context`` defaults to the running Slicer's."""

    def __init__(self, context: SlicerContext | None = None) -> None:
        self._context = context

    @property
    def context(self) -> SlicerContext:
        if self._context is None:
            self._context = default_context()
        return self._context

    @staticmethod
    def preset_names() -> list[str]:
        from pocketseg_core.training import presets

        return presets.preset_names()

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

        output_dir = Path(output_dir or Path.home() / ".pocketseg" / "runs" / time.strftime("%Y%m%d-%H%M%S"))
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

    @staticmethod
    def compute(
        prepared: PreparedTraining,
        progress: ProgressCallback | None = None,
        log: Callable[[str], None] | None = None,
    ) -> Any:
        """Export the cases and run the cross-validation (any thread; never touches MRML).

        Returns ``CrossValidationResult``; raises ``Cancelled`` when ``progress`` returns False
        (the run folder stays, marked ``INCOMPLETE``, resumable).
        """
        from pocketseg_core.training import run_cross_validation

        if prepared.data:
            if progress is not None and progress(0.0, f"exporting {len(prepared.data)} case(s)") is False:
                from pocketseg_core.errors import Cancelled

                raise Cancelled("training cancelled by the user before it started")
            cases_module.export_cases(prepared.data, prepared.cases_dir)
        return run_cross_validation(
            prepared.config, prepared.run_dir, resume=prepared.resume, callbacks=_Callbacks(progress, log)
        )

    def apply(self, prepared: PreparedTraining, cv_result: Any) -> TrainingResult:
        """Bring a finished run into the scene and register its model (main thread)."""
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
                rows = [(row["case"], row) for row in cv_result.per_case]
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
        model_name = model_path = None
        if prepared.register and cv_result.bundle_path is not None:
            from pocketseg_core.bundles import load_bundle, register_bundle

            model_path = register_bundle(cv_result.bundle_path)
            model_name = load_bundle(model_path).config.name
        return TrainingResult(
            run_dir=prepared.run_dir,
            model_name=model_name,
            model_path=model_path,
            prediction_nodes=prediction_nodes,
            table_node=table,
            chart_node=chart,
            curves_table_node=curves_table,
            summary=dict(cv_result.summary),
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
        cv_result = self.compute(prepared, progress, log)
        return self.apply(prepared, cv_result)

    def start(self, prepared: PreparedTraining) -> BackgroundTraining:
        """Run :meth:`compute` in a background thread; poll it, then ``finish()`` on the main thread."""
        return BackgroundTraining(self, prepared)


class BackgroundTraining:
    """A training run in a background thread, with its epoch log (see :meth:`PocketSegTrainLogic.start`)."""

    def __init__(self, logic: PocketSegTrainLogic, prepared: PreparedTraining) -> None:
        self.logic, self.prepared = logic, prepared
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.run = BackgroundRun(
            lambda progress: logic.compute(prepared, progress, self._log), name="PocketSegTrain run"
        ).start()

    def _log(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def take_log(self) -> list[str]:
        """The epoch lines logged since the last call (thread-safe)."""
        with self._lock:
            lines, self._lines = self._lines, []
        return lines

    def status(self):
        return self.run.status()

    def cancel(self) -> None:
        self.run.cancel()

    def finish(self) -> TrainingResult:
        """Main thread, once ``status().done``: apply the result, or raise the run's error/``Cancelled``."""
        return self.logic.apply(self.prepared, self.run.result())
