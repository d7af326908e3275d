"""PocketSeg: one-click skull stripping and liver segmentation with PocketNet / LV-Net.

The module file holds only the Module / Widget / Logic / Test classes of Slicer's scripted
module template; all MRML work is in ``PocketSegLib`` (importable and tested without Qt) and
all computing in ``pocketseg_core`` (no Slicer import at all).

Python console::

    logic = slicer.util.getModuleLogic("PocketSeg")
    segmentationNode = logic.segment(volumeNode, "skullstrip")      # or "liver", or a model path
    tableNode = logic.compare(referenceNode, "Brain", segmentationNode, "Brain")

    from PocketSegLib.remote_runner import ServerSettings         # on a PocketSeg server
    options = SegmentOptions(server=ServerSettings("http://gpu-box:8765", token))
    segmentationNode = logic.segment(volumeNode, "skullstrip", options)
"""

import logging
import traceback
from typing import Optional

import qt
import slicer
import vtk
from PocketSegLib.logic import SAMPLE_VOLUMES, TASKS, SegmentOptions
from PocketSegLib.logic import PocketSegLogic as PocketSegMRMLLogic
from PocketSegLib.remote_runner import ServerSettings
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: how often the GUI looks at a running segmentation (ms); the work runs in a child process
POLL_INTERVAL_MS = 200
#: "Run on" lives in the application's settings, not in the parameter node: a scene file must
#: never carry a server's token. The token is stored only when "Remember the token" is ticked.
SETTING_RUN_ON = "PocketSeg/RunOn"  # "computer" | "server"
SETTING_SERVER_URL = "PocketSeg/ServerURL"
SETTING_REMEMBER_TOKEN = "PocketSeg/RememberServerToken"  # "true" | "false"
SETTING_SERVER_TOKEN = "PocketSeg/ServerToken"
RUN_ON_COMPUTER, RUN_ON_SERVER = 0, 1  # the items of runOnComboBox
#: seconds "Test connection" waits for the server's answers (the GUI is blocked meanwhile)
CONNECTION_TEST_TIMEOUT_S = 5.0


#
# PocketSeg
#


class PocketSeg(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PocketSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["PocketSeg developers"]
        self.parent.helpText = _(
            "One click segments the brain in a T1 head MRI (skull stripping) or the liver in an abdominal CT, "
            "with small, fast networks (PocketNet, LV-Net). The result is a segmentation you can edit in "
            "Segment Editor. For research use, not a medical device."
        )
        self.parent.acknowledgementText = _(
            "PocketNet: Celaya et al., IEEE Trans Med Imaging 2023 (PocketNet: A Smaller Neural Network for "
            "Medical Image Analysis). LV-Net: Lei et al. (lightweight V-Net for liver segmentation)."
        )


#
# PocketSegParameterNode
#


@parameterNodeWrapper
class PocketSegParameterNode:
    """What the GUI sets; bound to the .ui widgets by their SlicerParameterName."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    fastMode: bool = False
    flipTTA: bool = False
    createMaskedVolume: bool = False
    show3D: bool = False


#
# PocketSegWidget
#


class PocketSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: picks inputs, starts a run in a child process, polls it with a timer, shows results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = None  # PocketSegLib.logic.BackgroundSegmentation while a run is on
        self._timer = None
        self._serverModels = []  # what the server of _serverModelsUrl offered at "Test connection"
        self._serverModelsUrl = ""

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PocketSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PocketSegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.skullStripButton.connect("clicked()", lambda: self.onSegment("skullstrip"))
        self.ui.segmentLiverButton.connect("clicked()", lambda: self.onSegment("liver"))
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self.addSampleButtons()
        self.setupRunOn()
        self.populateModels()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is not None:
            self.logic.cancel_all()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.populateModels()
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        # the logic cancels its runs on this event too; the widget also resets its controls
        if self._running is not None:
            self._running.cancel()
            self.ui.statusLabel.text = _("Cancelled: the scene was closed.")
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[PocketSegParameterNode]) -> None:  # noqa: UP045 (template style; Python 3.9 in older Slicer)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    def updateButtons(self, caller=None, event=None) -> None:
        idle = self._running is None
        hasVolume = bool(self._parameterNode and self._parameterNode.inputVolume)
        for button in (self.ui.skullStripButton, self.ui.segmentLiverButton):
            button.enabled = idle and hasVolume

    def addSampleButtons(self) -> None:
        """A first try without data of one's own: Slicer's sample volumes for the two buttons."""
        row = qt.QHBoxLayout()
        row.addWidget(qt.QLabel(_("First try:")))
        for task, sample in SAMPLE_VOLUMES.items():
            button = qt.QPushButton(_("Load {sample}").format(sample=sample))
            button.toolTip = _(
                "Load Slicer's sample volume {sample} (downloaded once) to try '{task}'"
            ).format(sample=sample, task=TASKS[task])
            button.connect("clicked()", lambda sample=sample: self.onLoadSample(sample))
            row.addWidget(button)
        row.addStretch(1)
        self.layout.insertLayout(0, row)

    def onLoadSample(self, sample: str) -> None:
        import SampleData

        with slicer.util.tryWithErrorDisplay(
            _("Could not load the sample volume {sample}.").format(sample=sample)
        ):
            with slicer.util.WaitCursor():
                node = SampleData.downloadSample(sample)
            if node is not None and self._parameterNode is not None:
                self._parameterNode.inputVolume = node

    def populateModels(self) -> None:
        """Model choices: the task's default, then every shipped or user-trained bundle; on a
        server, the models it offered at the last "Test connection" (by name)."""
        combo = self.ui.modelComboBox
        current = combo.currentData
        combo.clear()
        combo.addItem(_("Default for the button's task"), "")
        server = self.serverSettings()
        if server is not None:
            offered = self._serverModels if server.url == self._serverModelsUrl else []
            for model in offered:
                combo.addItem(f"{model['title']} [{model['modality']}]", model["name"])
        else:
            try:
                models = self.logic.available_models()
            except Exception as error:  # a broken catalog must not break the module
                logging.warning(f"PocketSeg: cannot list models: {error}")
                models = []
            for model in models:
                suffix = _(" (yours)") if model["source"] == "user" else ""
                combo.addItem(f"{model['title']} [{model['modality']}]{suffix}", model["path"])
        index = combo.findData(current) if current else 0
        combo.setCurrentIndex(max(index, 0))

    # --- run on: this computer or a PocketSeg server -------------------------------------------

    def setupRunOn(self) -> None:
        """Restore "Run on" from the application settings and connect its widgets."""
        settings = qt.QSettings()
        self.ui.serverUrlLineEdit.text = str(settings.value(SETTING_SERVER_URL, "") or "")
        remember = str(settings.value(SETTING_REMEMBER_TOKEN, "false")).lower() == "true"
        self.ui.rememberTokenCheckBox.checked = remember
        if remember:
            self.ui.serverTokenLineEdit.text = str(settings.value(SETTING_SERVER_TOKEN, "") or "")
        onServer = str(settings.value(SETTING_RUN_ON, "computer")) == "server"
        self.ui.runOnComboBox.currentIndex = RUN_ON_SERVER if onServer else RUN_ON_COMPUTER
        self.ui.runOnComboBox.connect("currentIndexChanged(int)", self.onRunOnChanged)
        self.ui.serverUrlLineEdit.connect("editingFinished()", self.onServerEdited)
        self.ui.serverTokenLineEdit.connect("editingFinished()", self.saveRunOn)
        self.ui.rememberTokenCheckBox.connect("toggled(bool)", self.saveRunOn)
        self.ui.testConnectionButton.connect("clicked()", self.onTestConnection)
        self.updateRunOn()

    def serverSettings(self) -> Optional[ServerSettings]:  # noqa: UP045 (template style)
        """The chosen server, or None when running on this computer."""
        if self.ui.runOnComboBox.currentIndex != RUN_ON_SERVER:
            return None
        return ServerSettings(
            self.ui.serverUrlLineEdit.text.strip(), self.ui.serverTokenLineEdit.text.strip()
        )

    def updateRunOn(self) -> None:
        """On a server the device is the server's: Device is disabled, the server fields shown."""
        onServer = self.serverSettings() is not None
        self.ui.serverWidget.setVisible(onServer)
        self.ui.deviceComboBox.enabled = not onServer

    def onRunOnChanged(self, index=None) -> None:
        self.saveRunOn()
        self.updateRunOn()
        self.populateModels()

    def onServerEdited(self) -> None:
        self.saveRunOn()
        self.populateModels()  # another server: its models are listed after "Test connection"

    def saveRunOn(self, *unused) -> None:
        """Store "Run on" and the URL; the token only while "Remember the token" is ticked."""
        settings = qt.QSettings()
        onServer = self.ui.runOnComboBox.currentIndex == RUN_ON_SERVER
        settings.setValue(SETTING_RUN_ON, "server" if onServer else "computer")
        settings.setValue(SETTING_SERVER_URL, self.ui.serverUrlLineEdit.text.strip())
        if self.ui.rememberTokenCheckBox.checked:
            settings.setValue(SETTING_REMEMBER_TOKEN, "true")
            settings.setValue(SETTING_SERVER_TOKEN, self.ui.serverTokenLineEdit.text.strip())
        else:
            settings.setValue(SETTING_REMEMBER_TOKEN, "false")
            settings.remove(SETTING_SERVER_TOKEN)  # unticking forgets a token stored before

    def onTestConnection(self) -> None:
        """Ask the server for its health (checks the URL and the token) and list its models."""
        from pocketseg_core.errors import PocketSegError

        server = self.serverSettings()
        if server is None:
            return
        self.saveRunOn()
        try:
            with slicer.util.WaitCursor():
                client = server.client(timeout=CONNECTION_TEST_TIMEOUT_S)
                health = client.health()
                models = client.models()
        except PocketSegError as error:
            self._serverModels, self._serverModelsUrl = [], ""
            self.ui.serverStatusLabel.text = _("Not connected: {error}").format(error=error)
        else:
            self._serverModels, self._serverModelsUrl = models, server.url
            self.ui.serverStatusLabel.text = _(
                "Connected: PocketSeg {version}, {workers} worker(s), {queued} job(s) waiting, {count} model(s)."
            ).format(
                version=health.get("pocketseg", "?"),
                workers=health.get("workers", "?"),
                queued=health.get("queued", "?"),
                count=len(models),
            )
        self.populateModels()

    # --- running ----------------------------------------------------------------------------

    def ensureRuntime(self, model: str, device: str) -> bool:
        """True when the worker can run ``model`` on ``device``: ONNX Runtime where the model runs
        on it, else PyTorch; asks before installing either (pip / PyTorchUtils)."""
        from PocketSegLib.dependencies import ensure_runtime, slicer_ask

        check = ensure_runtime(model, device, slicer_ask)  # asks first; the installers show progress
        if check.message:
            self.ui.statusLabel.text = check.message
            if not check.ok or check.restart_needed:
                slicer.util.warningDisplay(check.message, windowTitle=_("PocketSeg"))
        return check.ok and not check.restart_needed

    def onSegment(self, task: str) -> None:
        from pocketseg_core.devices import device_name
        from pocketseg_core.errors import PocketSegError

        server = self.serverSettings()
        model = self.ui.modelComboBox.currentData or task
        device = device_name(self.ui.deviceComboBox.currentText)
        if server is None and not self.ensureRuntime(model, device):  # a server run needs nothing here
            return
        if server is not None and not server.url:
            slicer.util.errorDisplay(
                _("Enter the PocketSeg server's URL under Options, or choose to run on this computer."),
                windowTitle=_("PocketSeg"),
            )
            return
        parameters = self._parameterNode
        options = SegmentOptions(
            device=self.ui.deviceComboBox.currentText,  # Auto / CPU / GPU: see pocketseg_core.devices
            fast=parameters.fastMode,
            tta=parameters.flipTTA,
            create_masked_volume=parameters.createMaskedVolume,
            show_3d=parameters.show3D,
            server=server,
        )
        outputNode = parameters.outputSegmentation
        try:
            with slicer.util.WaitCursor():  # on a server: asks it for the model's config
                prepared = self.logic.prepare(parameters.inputVolume, model, server)
        except PocketSegError as error:
            slicer.util.errorDisplay(str(error), windowTitle=_("PocketSeg"))
            return
        except Exception as error:
            self.showUnexpectedError(_("Could not prepare the segmentation"), error)
            return
        for warning in prepared.warnings:
            if not slicer.util.confirmOkCancelDisplay(
                warning + "\n\n" + _("Segment anyway?"), windowTitle=_("PocketSeg: unexpected image")
            ):
                return
        replace = self.logic.segments_to_replace(prepared, outputNode)
        if replace and not slicer.util.confirmOkCancelDisplay(
            _(
                "Segmentation '{name}' already has segment(s) {segments}. Replace them? Its other segments are kept."
            ).format(name=outputNode.GetName(), segments=", ".join(replace)),
            windowTitle=_("PocketSeg: replace segments"),
        ):
            return
        try:
            # writes the volume to a temporary file, starts the process (or uploads it to the server)
            with slicer.util.WaitCursor():
                self._running = self.logic.start(
                    prepared, options, outputNode, replace_segments=bool(replace)
                )
        except PocketSegError as error:
            slicer.util.errorDisplay(str(error), windowTitle=_("PocketSeg"))
            return
        except Exception as error:
            self.showUnexpectedError(_("Could not start the segmentation"), error)
            return
        self.ui.statusLabel.text = _("{task}: starting").format(task=TASKS.get(task, task))
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.cancelButton.show()
        self.ui.cancelButton.enabled = True
        self.updateButtons()
        self._timer.start()

    def onCancel(self) -> None:
        if self._running is not None:
            self._running.cancel()
            self.ui.cancelButton.enabled = False

    def onPoll(self) -> None:
        """Timer slot: show progress; once the run is done, apply its result on this (main) thread."""
        from pocketseg_core.errors import Cancelled, PocketSegError

        if self._running is None:
            self._timer.stop()
            return
        status = self._running.status()
        self.ui.progressBar.value = int(round(100 * status.fraction))
        self.ui.statusLabel.text = f"{status.message} ({status.elapsed_s:.0f} s)"
        if not status.done:
            return
        self._timer.stop()
        running, self._running = self._running, None
        try:
            outcome = running.finish()
        except Cancelled:
            self.ui.statusLabel.text = _("Cancelled. Nothing was changed.")
        except PocketSegError as error:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(str(error), windowTitle=_("PocketSeg"))
        except Exception as error:
            self.ui.statusLabel.text = _("Failed.")
            details = status.error_details or traceback.format_exc()
            self.showUnexpectedError(_("Segmentation failed"), error, details)
        else:
            self.showOutcome(running.prepared.volume_node, outcome, status.elapsed_s)
        finally:
            self.ui.progressBar.hide()
            self.ui.cancelButton.hide()
            self.updateButtons()

    def showOutcome(self, volumeNode, outcome, elapsed: float) -> None:
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=False)
        lines = [
            _("Done in {seconds:.1f} s on {device}: {name}").format(
                seconds=elapsed, device=outcome.device, name=outcome.segmentation_node.GetName()
            )
        ]
        lines += outcome.messages  # e.g. "GPU out of memory: finished on the CPU"
        for message in outcome.messages:
            logging.info(f"PocketSeg: {message}")
        self.ui.statusLabel.text = "\n".join(lines)
        self.ui.computedSegmentSelector.setCurrentNode(outcome.segmentation_node)

    def showUnexpectedError(self, what: str, error: Exception, details: str = "") -> None:
        details = details or traceback.format_exc()
        logging.error(f"PocketSeg: {what}:\n{details}")
        slicer.util.errorDisplay(
            _("{what}: {error}\n\nThe details are in the application log.").format(what=what, error=error),
            windowTitle=_("PocketSeg"),
            detailedText=details,
        )

    # --- comparing ----------------------------------------------------------------------------

    def onCompare(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Comparison failed."), waitCursor=True):
            table = self.logic.compare(
                self.ui.referenceSegmentSelector.currentNode(),
                self.ui.referenceSegmentSelector.currentSegmentID(),
                self.ui.computedSegmentSelector.currentNode(),
                self.ui.computedSegmentSelector.currentSegmentID(),
            )
            self.ui.resultTableView.setMRMLTableNode(table)


#
# PocketSegLogic
#


class PocketSegLogic(ScriptedLoadableModuleLogic, PocketSegMRMLLogic):
    """The module's logic: Slicer's parameter node plus :class:`PocketSegLib.logic.PocketSegLogic`.

    ``segment(volumeNode, "skullstrip" | "liver" | model, options)`` -> segmentation node;
    ``compare(referenceNode, segment, computedNode, segment)`` -> table node.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        PocketSegMRMLLogic.__init__(self)  # context: Slicer's scene and module logics

    def getParameterNode(self):
        return PocketSegParameterNode(super().getParameterNode())


#
# PocketSegTest
#


class PocketSegTest(ScriptedLoadableModuleTest):
    """Slicer's ctest: the scenario pytest runs headless (PocketSegLib.selftest), inside real Slicer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PocketSeg_scenario()

    def test_PocketSeg_scenario(self):
        from PocketSegLib.dependencies import TORCH_REQUIREMENT, installed_torch_version, torch_meets_floor

        # installs nothing and changes no setting: without torch the test says so and stops
        version = installed_torch_version()
        if not torch_meets_floor(version):
            self.delayDisplay(
                f"Skipped: PyTorch {TORCH_REQUIREMENT} is not installed (found {version or 'none'}); "
                "install it from the PyTorch Utils module to run this test"
            )
            return
        from PocketSegLib.selftest import run_scenario

        from pocketseg_core.errors import BundleError

        logic = PocketSegLogic()
        try:
            logic.load_model("skullstrip")
        except BundleError as error:
            self.delayDisplay(f"Skipped: no skull-strip model is installed ({error})")
            return
        self.delayDisplay("Running the PocketSeg scenario on the CPU")
        measured = run_scenario(logic, "skullstrip", log=self.delayDisplay)
        self.delayDisplay(
            f"Test passed: {measured['voxels']} brain voxels, Dice {measured['metrics']['dice']:.3f} "
            "against the synthetic head's mask"
        )
