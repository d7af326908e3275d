"""PocketSegTrain: k-fold cross-validation of PocketNet / LV-Net from segmentations in the scene.

The module file holds only the Module / Widget / Logic / Test classes of Slicer's scripted module
template; all MRML work is in ``PocketSegTrainLib`` (importable and tested without Qt) and all
computing in ``pocketseg_core``.

Python console::

    from PocketSegTrainLib.cases import TrainingCase
    logic = slicer.util.getModuleLogic("PocketSegTrain")
    cases = [TrainingCase(getNode("head1"), getNode("head1 manual"), "Brain"), ...]
    result = logic.run(cases, "pocketnet-nfbs", "/data/runs/brain", folds=5, epochs=50)
"""

import logging
import traceback
from pathlib import Path

import qt
import slicer
from PocketSegTrainLib.cases import TrainingCase
from PocketSegTrainLib.logic import PocketSegTrainLogic as PocketSegTrainMRMLLogic
from PocketSegTrainLib.logic import default_runs_folder, new_run_folder
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

#: how often the GUI looks at a running training (ms); the work runs in a child process
POLL_INTERVAL_MS = 500
PRESET_NETWORK = "(preset's network)"


class PocketSegTrain(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PocketSeg Train")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["PocketSeg developers"]
        self.parent.helpText = _(
            "Train a PocketNet or LV-Net of your own from volumes and manual segmentations: k-fold "
            "cross-validation; each case's out-of-fold prediction comes back as an editable segmentation, "
            "with a table of eight metrics, learning curves, and the model registered for PocketSeg."
        )
        self.parent.acknowledgementText = _(
            "PocketNet: Celaya et al., IEEE Trans Med Imaging 2023. LV-Net: Lei et al., 2021. Research use only."
        )


class PocketSegTrainWidget(ScriptedLoadableModuleWidget):
    """Thin GUI: a list of cases, the settings, Start/Stop, progress and log."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.cases = []
        self.running = None
        self.timer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PocketSegTrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.volumeSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.segmentSelector.setMRMLScene(slicer.mrmlScene)
        self.logic = PocketSegTrainLogic()

        # plain data: the panel fills without torch, so that it can offer to install it
        self.ui.presetComboBox.addItems(self.logic.preset_names())
        from pocketseg_core.devices import DEVICE_LABELS

        self.ui.networkComboBox.addItems([PRESET_NETWORK, *self.logic.network_names()])
        self.ui.deviceComboBox.addItems(list(DEVICE_LABELS))
        self.ui.outputDirectoryButton.directory = str(default_runs_folder())
        self.ui.outputDirectoryButton.toolTip = _(
            "Each new run gets a folder of its own in here. With 'Resume', pick the run's own folder instead."
        )
        self.ui.casesTable.horizontalHeader().setStretchLastSection(True)

        self.ui.addCaseButton.connect("clicked(bool)", self.onAddCase)
        self.ui.removeCaseButton.connect("clicked(bool)", self.onRemoveCase)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onPoll)
        self.sceneCloseObserver = slicer.mrmlScene.AddObserver(
            slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose
        )

    def cleanup(self):
        if self.logic is not None:
            self.logic.cancel_all()
        if self.timer is not None:
            self.timer.stop()
        slicer.mrmlScene.RemoveObserver(self.sceneCloseObserver)

    def onSceneStartClose(self, caller=None, event=None):
        # the logic cancels its runs on this event too; the cases refer to nodes that are going
        if self.running is not None:
            self.running.cancel()
            self.log(_("Cancelled: the scene was closed."))
        self.cases = []
        self.ui.casesTable.setRowCount(0)

    # --- cases ----------------------------------------------------------------------------

    def onAddCase(self):
        volume = self.ui.volumeSelector.currentNode()
        segmentation = self.ui.segmentSelector.currentNode()
        segment_id = self.ui.segmentSelector.currentSegmentID()
        if volume is None or segmentation is None or not segment_id:
            slicer.util.warningDisplay(_("Pick a volume, a segmentation and the segment to learn."))
            return
        segment_name = segmentation.GetSegmentation().GetSegment(segment_id).GetName()
        self.cases.append(TrainingCase(volume, segmentation, segment_id))
        row = self.ui.casesTable.rowCount
        self.ui.casesTable.insertRow(row)
        for column, text in enumerate((volume.GetName(), segmentation.GetName(), segment_name)):
            self.ui.casesTable.setItem(row, column, qt.QTableWidgetItem(text))

    def onRemoveCase(self):
        rows = sorted({index.row() for index in self.ui.casesTable.selectedIndexes()}, reverse=True)
        for row in rows:
            self.ui.casesTable.removeRow(row)
            del self.cases[row]

    # --- run --------------------------------------------------------------------------------

    def log(self, text):
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(text)

    def onStart(self):
        from PocketSegLib.dependencies import ensure_torch, slicer_ask

        check = ensure_torch(slicer_ask)
        if check.message:
            self.log(check.message)
        if not check.ok or check.restart_needed:
            slicer.util.warningDisplay(check.message)
            return
        network = self.ui.networkComboBox.currentText
        modelName = self.ui.modelNameLineEdit.text.strip() or None
        resume = self.ui.resumeCheckBox.checked
        folder = self.ui.outputDirectoryButton.directory
        # a new run never reuses a folder: it gets its own inside the chosen one
        runFolder = (
            folder if resume else new_run_folder(folder, modelName or self.ui.presetComboBox.currentText)
        )
        try:
            prepared = self.logic.prepare(
                list(self.cases),
                self.ui.presetComboBox.currentText,
                runFolder,
                folds=self.ui.foldsSpinBox.value,
                epochs=self.ui.epochsSpinBox.value,
                device=self.ui.deviceComboBox.currentText,  # Auto / CPU / GPU: see pocketseg_core.devices
                network=None if network == PRESET_NETWORK else network,
                resume=resume,
                model_name=modelName,
            )
        except Exception as error:
            slicer.util.errorDisplay(str(error))
            return
        for warning in prepared.warnings:
            self.log(_("Warning: ") + warning)
        self.log(_("Training in {folder}").format(folder=str(prepared.output_dir)))
        try:
            with slicer.util.WaitCursor():  # exports the cases, starts the process
                self.running = self.logic.start(prepared)
        except Exception as error:
            slicer.util.errorDisplay(str(error))
            return
        self.ui.startButton.enabled, self.ui.stopButton.enabled = False, True
        self.timer.start()

    def onStop(self):
        if self.running is not None:
            self.running.cancel()
            self.ui.statusLabel.text = _("Stopped.")

    def onPoll(self):
        if self.running is None:
            return
        for line in self.running.take_log():
            self.log(line)
        status = self.running.status()
        self.ui.progressBar.value = int(100 * status.fraction)
        self.ui.statusLabel.text = status.message
        if not status.done:
            return
        self.timer.stop()
        running, self.running = self.running, None
        self.ui.startButton.enabled, self.ui.stopButton.enabled = True, False
        try:
            with slicer.util.WaitCursor():
                result = running.finish()
        except Exception as error:
            if status.state == "cancelled":
                self.log(_("Cancelled: the scene is unchanged; tick 'Resume' and Start to continue the run."))
            else:
                self.log(status.error_details or traceback.format_exc())
                slicer.util.errorDisplay(str(error))
            return
        dice = result.summary.get("dice", {})
        self.log(
            _(
                "Done: out-of-fold Dice {mean:.3f} ± {std:.3f}; model '{name}' is now offered by PocketSeg."
            ).format(
                mean=dice.get("mean", float("nan")), std=dice.get("std", float("nan")), name=result.model_name
            )
        )
        slicer.modules.plots.logic().ShowChartInLayout(result.chart_node)


class PocketSegTrainLogic(ScriptedLoadableModuleLogic, PocketSegTrainMRMLLogic):
    """The module logic Slicer creates; all work is in ``PocketSegTrainLib.logic``."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        PocketSegTrainMRMLLogic.__init__(self)


class PocketSegTrainTest(ScriptedLoadableModuleTest):
    """Two-fold training on four small phantom heads, CPU, seconds (the pytest's scenario, smaller)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_train_two_folds()

    def test_train_two_folds(self):
        import tempfile

        import numpy as np
        import SimpleITK as sitk
        from PocketSegLib.dependencies import TORCH_REQUIREMENT, installed_torch_version, torch_meets_floor
        from PocketSegLib.scene_context import SlicerContext
        from PocketSegLib.segmentation import BRAIN, write_mask_to_segmentation
        from PocketSegLib.volume_io import volume_node_from_image

        from pocketseg_core.errors import DatasetError

        # installs nothing and changes no setting: without torch the test says so and stops
        version = installed_torch_version()
        if not torch_meets_floor(version):
            self.delayDisplay(
                f"Skipped: PyTorch {TORCH_REQUIREMENT} is not installed (found {version or 'none'}); "
                "install it from the PyTorch Utils module to run this test"
            )
            return
        self.delayDisplay("Building four phantom heads")
        cases = []
        grid = np.mgrid[0:32, 0:32, 0:32].astype(np.float32)
        for index in range(4):
            radius = 8 + index
            inside = ((grid - 16) ** 2).sum(axis=0) < radius**2
            array = np.where(inside, 100.0, 10.0).astype(np.float32)
            array += np.random.default_rng(index).normal(0, 3, array.shape).astype(np.float32)
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((2.0, 2.0, 2.0))
            volume = volume_node_from_image(slicer.mrmlScene, image, f"phantom{index}")
            mask = sitk.GetImageFromArray(inside.astype(np.uint8))
            mask.CopyInformation(image)
            segmentation = write_mask_to_segmentation(SlicerContext.from_slicer(), volume, mask, BRAIN)
            cases.append(TrainingCase(volume, segmentation, BRAIN.name))
        logic = PocketSegTrainLogic()
        with self.assertRaises(DatasetError):
            logic.prepare(cases[:1], "pocketnet-nfbs", tempfile.mkdtemp(), folds=2)

        self.delayDisplay("Training 2 folds x 1 epoch on CPU")
        with tempfile.TemporaryDirectory() as folder:
            result = logic.run(
                cases, "pocketnet-nfbs", folder, folds=2, epochs=1, device="cpu",
                model_name="selftest-phantom", register=False, spacing=(4.0, 4.0, 4.0), window_mode="patch3d",
                window_size_zyx=(16, 16, 16), patch_size_zyx=(16, 16, 16),
                network_args={"init_filters": 4, "depth": 2, "pool_size": 2},
                steps_per_epoch=4, batch_size=2, augmentation=[], amp=False, show_progress=False,
            )  # fmt: skip
            self.assertEqual(len(result.prediction_nodes), 4)
            self.assertEqual(result.prediction_nodes["phantom0"].GetName(), "phantom0 pocket_unet3d CV")
            self.assertEqual(result.table_node.GetNumberOfRows(), 6)  # 4 cases + mean + std
            self.assertEqual(result.chart_node.GetNumberOfPlotSeriesNodes(), 4)  # 2 folds x 2 quantities
            self.assertIsNone(result.model_path)  # register=False: the user's model catalog is untouched
            self.assertTrue((Path(result.cross_validation["bundle_path"]) / "bundle.json").is_file())
        self.delayDisplay("Test passed")
