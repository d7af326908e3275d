"""PyTorch inside Slicer: check without importing it, install only after asking.

Slicer's Python has numpy and SimpleITK but not torch. PocketSeg's own process never imports
torch (the work runs in a child process, see ``runner``), so the check reads the installed
package's version from its metadata. When torch is missing or older than :data:`TORCH_FLOOR`
(pyproject's requirement), the user is asked, and the PyTorch extension's ``PyTorchUtils``
installs the build that fits the machine (light-the-torch picks CPU or the CUDA driver's build).
There is no plain ``pip install torch`` fallback: on Linux it pulls a multi-GB CUDA build without
saying so; without the PyTorch extension the user is told to install it.

A model that ONNX Runtime can run on this computer (a whole-grid 3D model with an ONNX network,
on the CPU: :func:`pocketseg_core.inference.onnx_backend.choose_backend`) needs no torch at all:
:func:`ensure_runtime` then asks for ONNX Runtime instead (~30 MB, ``pip install onnxruntime``), and
falls back to PyTorch only when that is declined or fails.

Nothing is installed in testing mode or by the self-tests: they skip with a message.
Nothing here imports Qt: dialogs go through ``slicer.util`` only when running inside Slicer.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: the lowest torch PocketSeg runs on (pyproject.toml: ``torch>=2.2``; a test keeps them equal)
TORCH_FLOOR = "2.2"
TORCH_REQUIREMENT = f">={TORCH_FLOOR}"


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)`` (the numeric release part only)."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", version or "")
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def installed_torch_version() -> str | None:
    """The installed torch's version from its package metadata (torch is not imported)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_meets_floor(version: str | None) -> bool:
    if not version:
        return False
    have, floor = version_tuple(version), version_tuple(TORCH_FLOOR)
    return have[: len(floor)] >= floor


@dataclass(frozen=True)
class TorchCheck:
    """The outcome of :func:`ensure_torch`: usable or not, and what to tell the user."""

    ok: bool
    version: str | None
    message: str = ""
    restart_needed: bool = False


def torch_question(version: str | None) -> str:
    what = (
        f"PocketSeg needs PyTorch {TORCH_REQUIREMENT}, which is not installed in Slicer yet."
        if version is None
        else f"PocketSeg needs PyTorch {TORCH_REQUIREMENT}; this Slicer has PyTorch {version}."
    )
    return (
        f"{what}\n\nInstall it now through the PyTorch extension? It downloads the build that fits this "
        "computer (several hundred MB for CPU, a few GB with GPU support) and may take minutes."
    )


def ensure_torch(
    ask: Callable[[str], bool],
    installer: Callable[[str], Any] | None = None,
    version: Callable[[], str | None] = installed_torch_version,
) -> TorchCheck:
    """Make torch usable by the worker, asking before any install.

    Args:
        ask: shows the question, returns True for OK.
        installer: ``installer(requirement)`` installs torch (default: the PyTorch extension's
            ``PyTorchUtilsLogic().installTorch``); absent extension -> a message, no install.
        version: reads the installed version (default: package metadata).
    """
    found = version()
    if torch_meets_floor(found):
        return TorchCheck(True, found)
    if not ask(torch_question(found)):
        return TorchCheck(False, found, "PyTorch is needed to segment or train; it was not installed.")
    if installer is None:
        installer = pytorch_utils_installer()
        if installer is None:
            return TorchCheck(
                False,
                found,
                "The PyTorch extension is not installed: install 'PyTorch' from the Extensions Manager, "
                "restart Slicer, then try again.",
            )
    already_imported = "torch" in sys.modules  # an old torch loaded here stays loaded until restart
    try:
        installer(TORCH_REQUIREMENT)
    except Exception as error:  # a failed download or pip error: shown, never a traceback dialog
        return TorchCheck(
            False,
            version(),
            f"PyTorch could not be installed ({type(error).__name__}: {error}). Check the network connection "
            "and the disk space, or install PyTorch from the PyTorch Utils module, then try again.",
        )
    now = version()
    if not torch_meets_floor(now):
        return TorchCheck(
            False,
            now,
            f"PyTorch {TORCH_REQUIREMENT} is still missing after the installation (found {now or 'none'}); "
            "install it from the PyTorch Utils module and restart Slicer.",
        )
    if already_imported:
        return TorchCheck(
            True, now, f"PyTorch {now} was installed; restart Slicer before using it.", restart_needed=True
        )
    return TorchCheck(True, now, f"PyTorch {now} was installed.")


ONNXRUNTIME_REQUIREMENT = "onnxruntime>=1.18"


def onnxruntime_question() -> str:
    return (
        "This model runs on ONNX Runtime, which is not installed in Slicer yet.\n\nInstall it now "
        f"(pip install {ONNXRUNTIME_REQUIREMENT}, about 30 MB)? Without it, PocketSeg needs PyTorch "
        "(several hundred MB or more) for this model."
    )


def model_runs_on_onnxruntime(model: str, device: str) -> bool:
    """Whether ``model`` (a catalog name, task or bundle folder) runs on ONNX Runtime with
    ``device`` ("auto", "cpu", "cuda"...) on this computer, onnxruntime installed or not (the
    bundle's config is read, no weights, no torch)."""
    from pocketseg_core.bundles import read_config, resolve_bundle
    from pocketseg_core.errors import PocketSegError
    from pocketseg_core.inference.onnx_backend import onnx_unsupported, uses_gpu_by_default
    from pocketseg_core.inference.options import InferenceOptions

    try:
        config = read_config(resolve_bundle(model))
    except PocketSegError:
        return False  # the run itself will say what is wrong with the model
    options = InferenceOptions(device=device)
    return not onnx_unsupported(config, options) and not (device == "auto" and uses_gpu_by_default())


def ensure_runtime(
    model: str,
    device: str,
    ask: Callable[[str], bool],
    onnx_installer: Callable[[str], Any] | None = None,
    torch_check: Callable[[], TorchCheck] | None = None,
    onnx_installed: Callable[[], bool] | None = None,
) -> TorchCheck:
    """Make the worker able to run ``model`` on ``device``: ONNX Runtime where the model runs on
    it (asking before a ``pip install``), else PyTorch (:func:`ensure_torch` via ``torch_check``).

    Args:
        onnx_installer: ``installer(requirement)`` (default: ``slicer.util.pip_install``).
        torch_check: the PyTorch check (default: :func:`ensure_torch` with ``ask``).
        onnx_installed: whether onnxruntime is importable (default: found on the path).
    """
    from pocketseg_core.inference.onnx_backend import onnxruntime_installed

    torch_check = torch_check or (lambda: ensure_torch(ask))
    onnx_installed = onnx_installed or onnxruntime_installed
    if not model_runs_on_onnxruntime(model, device):
        return torch_check()
    if onnx_installed():
        return TorchCheck(True, installed_torch_version())
    if not ask(onnxruntime_question()):
        return torch_check()
    installer = onnx_installer or _slicer_pip_install
    try:
        installer(ONNXRUNTIME_REQUIREMENT)
    except Exception as error:  # a failed download or pip error: PyTorch is the way left
        check = torch_check()
        note = f"ONNX Runtime could not be installed ({type(error).__name__}: {error})."
        return TorchCheck(check.ok, check.version, f"{note} {check.message}".strip(), check.restart_needed)
    importlib.invalidate_caches()
    if not onnx_installed():
        return torch_check()
    return TorchCheck(True, installed_torch_version(), "ONNX Runtime was installed.")


def _slicer_pip_install(requirement: str) -> None:
    import slicer

    slicer.util.pip_install(requirement)


def pytorch_utils_installer() -> Callable[[str], Any] | None:
    """``installer(requirement)`` through the PyTorch extension, or None when it is absent."""
    try:
        import PyTorchUtils  # the PyTorch extension (SlicerPyTorch)
    except ImportError:
        return None

    def install(requirement: str) -> Any:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=requirement
        )
        if torch is None:
            raise RuntimeError("PyTorchUtils did not install torch")
        return torch

    return install


def slicer_ask(question: str) -> bool:
    """Ask in a Slicer dialog; never in testing mode (nobody is there to answer: no install)."""
    import slicer

    if slicer.app.testingEnabled():
        return False
    title = "PocketSeg needs ONNX Runtime" if "ONNX Runtime" in question else "PocketSeg needs PyTorch"
    return bool(slicer.util.confirmOkCancelDisplay(question, windowTitle=title))
