"""The PocketSeg Web page (trame + trame-slicer): a thin layer over :mod:`pocketseg_web.workspace`.

Left: trame-slicer's segment editor (paint, erase, scissors, threshold, islands, smoothing, undo).
Middle: Slicer's slice views and a 3D view (the segment's surface; no volume rendering, which
costs seconds a frame on a CPU), rendered on the server and shown as images. Right: PocketSeg:
open an image, Skull strip / Segment liver with progress and Cancel, downloads, comparison.

The page never waits on a run: a click starts the child process and an asyncio task polls it
every 0.2 s (the handler itself returns at once), so views, editing and Cancel stay live.
One ``pocketseg web`` process holds one scene: every browser that opens its address sees and
edits the same one (start one process per user, on its own port).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from trame.app import TrameApp, asynchronous
from trame.app.file_upload import ClientFile
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import LayoutButtonLogic, SegmentEditorLogic
from trame_slicer.app.ui import (
    LayoutButton,
    SegmentEditorToolbarUI,
    SegmentEditorUI,
    SegmentEditorUndoRedoUI,
    ViewerLayout,
)
from trame_slicer.core import SlicerApp
from trame_slicer.rca_view import register_rca_factories

from pocketseg_core.errors import Cancelled, InputImageError, PocketSegError
from pocketseg_web.workspace import DEFAULT_MAX_UPLOAD_MB, Workspace, metric_rows

#: how often the page reads a run's progress (s)
POLL_INTERVAL_S = 0.2
#: the name of the cookie that carries the token once the page was opened with ?token=...
TOKEN_COOKIE = "pocketseg_web_token"
#: the slice + 3D layout the page opens with (trame-slicer's layouts stay in the layout menu)
DEFAULT_LAYOUT = "Quad View"

log = logging.getLogger("pocketseg.web")


def token_middleware(token: str) -> Any:
    """An aiohttp middleware letting through only requests that carry ``token`` (in ``?token=``
    once, then in a same-site cookie; the page's websocket carries the cookie)."""
    from aiohttp import web

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        given = request.query.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.Response(
                status=403,
                text="PocketSeg Web: this page needs its token: open the address pocketseg web printed "
                "(http://HOST:PORT/?token=...)\n",
            )
        response = await handler(request)
        if request.query.get("token") and not request.cookies.get(TOKEN_COOKIE):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response

    return check


class UploadCollector:
    """Collects the chunks trame-slicer's ``load_files_by_chunks`` sends, then hands them over.

    Holds at most ``max_bytes``: past that, what came is dropped and the rest of the upload is
    ignored (the page checks the size first; this guards against a client that does not).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.files: list[tuple[str, bytes]] = []
        self.size = 0
        self.refused = False

    def add(self, files: list[dict]) -> list[tuple[str, bytes]] | None:
        """Add one chunk; an empty chunk ends the upload and returns everything received
        (:class:`InputImageError` when it was over the limit)."""
        if files:
            for file in files:
                client_file = ClientFile(file)
                content = client_file.content or b""
                self.size += len(content)
                if self.size > self.max_bytes:
                    self.files, self.refused = [], True
                if not self.refused:
                    self.files.append((client_file.name, content))
            return None
        received, size, refused = self.files, self.size, self.refused
        self.files, self.size, self.refused = [], 0, False
        if refused:
            raise InputImageError(
                f"the upload has over {size / 1e6:.0f} MB, over the {self.max_bytes / 1e6:.0f} MB limit "
                "(pocketseg web --max-upload-mb)"
            )
        return received


def upload_script(trigger: str, busy: str, max_mb: float, error: str) -> str:
    """The JS of a file input's ``change``: refuse oversize files at once, else send them in chunks."""
    return (
        "const files = $event.target.files;"
        "let size = 0; for (const f of files) { size += f.size; }"
        f"if (size > {max_mb * 1e6}) {{ {error} = 'The file has ' + Math.round(size / 1e6) + "
        f"' MB, over the {max_mb:g} MB limit (pocketseg web --max-upload-mb).'; return; }}"
        f"{busy} = true;"
        f"window.load_files_by_chunks(files, {{ trigger_name: '{trigger}' }})"
        f".finally(() => {{ {busy} = false; $event.target.value = ''; }});"
    )


class PocketSegWebApp(TrameApp):
    """One page, one scene (see the module's doc)."""

    def __init__(self, server: Any = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> None:
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.max_upload_mb = float(max_upload_mb)
        self.slicer_app = SlicerApp()
        self.workspace = Workspace(
            self.slicer_app.scene, self.slicer_app.segmentations_logic, self.slicer_app.volumes_logic
        )
        register_rca_factories(self.slicer_app.view_manager, self.server)
        # the views first: the segment editor's effects attach their pipelines to existing views
        self.layout_logic = LayoutButtonLogic(self.server, self.slicer_app)
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self.layout_logic.data.current_layout_id = DEFAULT_LAYOUT
        limit = int(self.max_upload_mb * 1e6)
        self.volume_upload, self.reference_upload = UploadCollector(limit), UploadCollector(limit)
        self.watch_task: asyncio.Task | None = None
        self._reset_state()
        self._build_ui()
        self.editor_logic.set_ui(self.editor_ui)
        self.layout_logic.set_ui(self.layout_button)

    # --- state ----------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        state = self.state
        state.trame__title = "PocketSeg"
        state.update(
            {
                "ps_volume": "",  # name of the open volume
                "ps_running": False,
                "ps_task": "",
                "ps_progress": 0.0,  # percent
                "ps_message": "Open a T1 MRI head (skull strip) or an abdominal CT (liver).",
                "ps_error": "",
                "ps_result": "",
                "ps_has_result": False,
                "ps_mask_name": "mask.nii.gz",
                "ps_seg_name": "segmentation.seg.nrrd",
                "ps_fast": False,
                "ps_show_3d": True,
                "ps_metrics": [],
                "ps_uploading": False,
                "ps_ref_uploading": False,
            }
        )

    def _say(self, message: str = "", error: str = "") -> None:
        self.state.ps_message, self.state.ps_error = message, error

    # --- opening a volume -------------------------------------------------------------------------

    def open_path(self, path: str | Path) -> None:
        """Open an image file or DICOM folder of this machine (``pocketseg web --input``)."""
        self._show(self.workspace.open_image(path))

    async def on_volume_chunk(self, files: list[dict]) -> None:
        started = time.perf_counter()
        try:
            received = self.volume_upload.add(files)
            if received is None:
                return
            opened = self.workspace.open_upload(received, self.volume_upload.max_bytes)
        except PocketSegError as error:
            self._say(error=str(error))
            return
        self._show(opened)
        log.info("opened %s in %.2f s", opened.name, time.perf_counter() - started)

    def _show(self, opened: Any) -> None:
        node = opened.node
        manager = self.slicer_app.display_manager
        manager.show_volume_in_slice_background(node)
        manager.show_volume_in_slice_foreground(None)
        manager.set_node_visible_in_group(node)
        manager.reset_views()
        self.state.update(
            {
                "ps_volume": opened.name,
                "ps_has_result": False,
                "ps_result": "",
                "ps_metrics": [],
                "ps_progress": 0.0,
            }
        )
        size = node.GetImageData().GetDimensions()
        self._say(f"{opened.name}: {size[0]} x {size[1]} x {size[2]} voxels. Pick the task.")

    # --- a run ------------------------------------------------------------------------------------

    def run(self, task: str) -> None:
        """Start a run and return at once; :meth:`watch` follows it."""
        if self.state.ps_running:
            return
        try:
            self.workspace.start(task, fast=bool(self.state.ps_fast), show_3d=bool(self.state.ps_show_3d))
        except PocketSegError as error:
            self._say(error=str(error))
            return
        self.state.update({"ps_running": True, "ps_task": task, "ps_progress": 0.0, "ps_error": ""})
        self._say("Starting...")
        self.watch_task = asynchronous.create_task(self.watch())

    def cancel(self) -> None:
        self.workspace.cancel()  # the watching task sees the run end and says so

    async def watch(self) -> None:
        """Follow the run (non-blocking polls), then put its segment into the scene."""
        while True:
            status = self.workspace.poll()
            if status is None:
                return
            with self.state:
                self.state.ps_progress = round(100 * status.fraction, 1)
                if not status.done:
                    self.state.ps_message = f"{status.message} ({status.elapsed_s:.0f} s)"
            if status.done:
                break
            await asyncio.sleep(POLL_INTERVAL_S)
        with self.state:
            try:
                outcome = self.workspace.finish()
            except Cancelled:
                self._say("Cancelled; nothing was changed.")
            except PocketSegError as error:
                self._say(error=str(error))
            else:
                self._show_result(outcome)
            self.state.ps_running = False

    def _show_result(self, outcome: Any) -> None:
        workspace = self.workspace
        node = outcome.segmentation_node
        volume = workspace.volume_node
        # the segment editor edits the computed segmentation (trame-slicer takes the scene's first)
        self.editor_logic.on_volume_changed(volume)
        editor = self.slicer_app.segmentation_editor
        editor.set_active_segment_id(node.GetSegmentation().GetSegmentIdBySegmentName(workspace.segment_name))
        if self.state.ps_show_3d:
            editor.set_surface_representation_enabled(True)
            for view in self.slicer_app.view_manager.get_threed_views():
                view.reset_view()  # the camera onto the surface (nothing was shown in 3D before)
        mask = workspace.mask_image()
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        millilitres = voxels * float(np.prod(mask.GetSpacing())) / 1000.0
        self.state.update(
            {
                "ps_has_result": True,
                "ps_mask_name": f"{volume.GetName()}_{workspace.segment_name.lower()}{workspace.image.extension}",
                "ps_seg_name": f"{volume.GetName()}_{workspace.segment_name.lower()}.seg.nrrd",
                "ps_result": f"{workspace.segment_name}: {voxels} voxels, {millilitres:.0f} ml "
                f"({outcome.seconds:.1f} s on {outcome.device})",
                "ps_progress": 100.0,
            }
        )
        self._say(
            f"Done. Edit the segment on the left; download or compare below. {' '.join(outcome.messages)}"
        )

    # --- results ----------------------------------------------------------------------------------

    def download_mask(self) -> Any:
        return self._download(self.workspace.mask_file)

    def download_segmentation(self) -> Any:
        return self._download(self.workspace.segmentation_file)

    def _download(self, write: Any) -> Any:
        """The bytes of the file ``write(folder)`` makes, for the browser (None, and a message, on error)."""
        with tempfile.TemporaryDirectory() as folder:
            try:
                path = write(Path(folder))
            except PocketSegError as error:
                self._say(error=f"Download: {error}")
                return None
            return self.server.protocol.addAttachment(path.read_bytes())

    async def on_reference_chunk(self, files: list[dict]) -> None:
        try:
            received = self.reference_upload.add(files)
        except PocketSegError as error:
            self._say(error=f"Compare: {error}")
            return
        if received is None:
            return
        if len(received) != 1:
            self._say(error="Compare: pick one mask file (the reference segmentation, on the volume's grid).")
            return
        name, content = received[0]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / Path(name).name
            path.write_bytes(content)
            try:
                metrics = self.workspace.compare(path)
            except PocketSegError as error:
                self._say(error=f"Compare: {error}")
                return
        self.state.ps_metrics = metric_rows(metrics)
        self._say(f"Compared with {Path(name).name}: Dice {metrics['dice']:.4f}.")

    # --- the page ---------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        server = self.server
        volume_trigger = server.trigger_name(self.on_volume_chunk)
        reference_trigger = server.trigger_name(self.on_reference_chunk)
        mask_trigger = server.trigger_name(self.download_mask)
        seg_trigger = server.trigger_name(self.download_segmentation)
        with ViewerLayout(server, title="PocketSeg", is_drawer_visible=True) as self.ui:
            with self.ui.appbar:
                html.Span("{{ ps_volume }}", classes="text-medium-emphasis mx-4", id="ps-volume-name")
            with self.ui.drawer:
                html.Div(
                    "The segment editor opens here once a segment was computed.",
                    v_if=("!ps_has_result",),
                    classes="text-body-2 pa-4 text-medium-emphasis",
                )
                self.editor_ui = SegmentEditorUI(v_if=("ps_has_result",))
            with self.ui.toolbar:
                self.layout_button = LayoutButton(classes="mt-1")
                SegmentEditorToolbarUI(editor_ui=self.editor_ui)
            with self.ui.undo_redo:
                SegmentEditorUndoRedoUI(editor_ui=self.editor_ui)
            with self.ui.content:
                self.layout_logic.layout_manager.initialize_layout_grid(self.ui)
            with (
                v3.VNavigationDrawer(location="right", permanent=True, width=330),
                v3.VContainer(classes="pa-3"),
            ):
                html.Div("PocketSeg", classes="text-h6 mb-2")
                html.Div(
                    "1. Open an image (NIfTI, NRRD, MHA, or a DICOM folder as .zip)", classes="text-caption"
                )
                v3.VFileInput(
                    id="ps-open",
                    label="Open image",
                    prepend_icon="mdi-file-upload",
                    density="compact",
                    hide_details=True,
                    disabled=("ps_running || ps_uploading",),
                    change=upload_script(volume_trigger, "ps_uploading", self.max_upload_mb, "ps_error"),
                )
                v3.VProgressLinear(v_if=("ps_uploading",), indeterminate=True, classes="my-1")
                html.Div("2. Segment", classes="text-caption mt-3")
                with html.Div(classes="d-flex ga-2 my-1"):
                    v3.VBtn(
                        "Skull strip",
                        id="ps-skullstrip",
                        color="primary",
                        disabled=("!ps_volume || ps_running",),
                        click=(self.run, "['skullstrip']"),
                    )
                    v3.VBtn(
                        "Segment liver",
                        id="ps-liver",
                        color="primary",
                        disabled=("!ps_volume || ps_running",),
                        click=(self.run, "['liver']"),
                    )
                with html.Div(classes="d-flex ga-2"):
                    v3.VCheckbox(v_model=("ps_fast",), label="Fast", density="compact", hide_details=True)
                    v3.VCheckbox(
                        v_model=("ps_show_3d",), label="3D surface", density="compact", hide_details=True
                    )
                v3.VProgressLinear(
                    model_value=("ps_progress",), color="primary", height=8, id="ps-progress", classes="my-1"
                )
                html.Div("{{ ps_message }}", classes="text-body-2 my-1", id="ps-message")
                v3.VAlert(
                    "{{ ps_error }}",
                    v_if=("ps_error",),
                    type="error",
                    density="compact",
                    id="ps-error",
                    closable=True,
                    click_close="ps_error = ''",
                )
                v3.VBtn(
                    "Cancel",
                    id="ps-cancel",
                    v_if=("ps_running",),
                    color="warning",
                    variant="tonal",
                    click=self.cancel,
                )
                html.Div(
                    "{{ ps_result }}", v_if=("ps_has_result",), classes="text-body-2 my-1", id="ps-result"
                )
                html.Div("3. Download (edits included)", classes="text-caption mt-3")
                with html.Div(classes="d-flex flex-column ga-1 my-1"):
                    for label, element_id, file_name, trigger_name in (
                        ("Mask", "ps-download-mask", "ps_mask_name", mask_trigger),
                        ("Segmentation", "ps-download-seg", "ps_seg_name", seg_trigger),
                    ):
                        v3.VBtn(
                            label,
                            id=element_id,
                            disabled=("!ps_has_result || ps_running",),
                            prepend_icon="mdi-download",
                            variant="tonal",
                            click=f"utils.download({file_name}, trigger('{trigger_name}'), 'application/octet-stream')",
                        )
                    html.Div(
                        "{{ ps_mask_name }} (on the input's grid), {{ ps_seg_name }}",
                        v_if=("ps_has_result",),
                        classes="text-caption text-medium-emphasis",
                    )
                html.Div("4. Compare with a reference mask", classes="text-caption mt-3")
                v3.VFileInput(
                    id="ps-reference",
                    label="Reference mask",
                    prepend_icon="mdi-compare",
                    density="compact",
                    hide_details=True,
                    disabled=("!ps_has_result || ps_running || ps_ref_uploading",),
                    change=upload_script(
                        reference_trigger, "ps_ref_uploading", self.max_upload_mb, "ps_error"
                    ),
                )
                with v3.VTable(
                    v_if=("ps_metrics.length",), density="compact", id="ps-metrics", classes="mt-2"
                ):
                    with html.Tbody():
                        with html.Tr(v_for="row in ps_metrics", key="row.key"):
                            html.Td("{{ row.metric }}", classes="text-caption")
                            html.Td("{{ row.value }} {{ row.unit }}", classes="text-caption text-right")


def create_app(max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, token: str | None = None) -> PocketSegWebApp:
    """The page on a new trame server; with ``token``, every request must carry it."""
    from trame.app import get_server

    server = get_server("pocketseg-web", client_type="vue3")
    app = PocketSegWebApp(server, max_upload_mb)
    if token:

        @server.controller.add("on_server_bind")
        def _add_token_check(wslink_server: Any) -> None:
            wslink_server.app.middlewares.append(token_middleware(token))

    return app
