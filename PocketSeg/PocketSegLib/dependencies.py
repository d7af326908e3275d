"""PyTorch (and tqdm) inside Slicer: detect, and install on request.

Slicer's Python has numpy and SimpleITK but not torch. The PyTorch extension's
``PyTorchUtils`` installs the torch build that fits the machine's CUDA driver (light-the-torch);
PocketSeg depends on that extension (``EXTENSION_DEPENDS PyTorch``) and falls back on
``pip install torch`` when it is absent. The user is asked first, except in testing mode
(Slicer's ctest), where nobody is there to answer.

Nothing here imports Qt: dialogs go through ``slicer.util`` only when running inside Slicer.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

#: packages pocketseg_core imports at run time that Slicer's Python may lack (module -> pip name)
EXTRA_PACKAGES: dict[str, str] = {"tqdm": "tqdm"}

TORCH_QUESTION = (
    "PocketSeg needs PyTorch, which is not installed in Slicer yet.\n\n"
    "Install it now? This downloads several hundred MB (more with GPU support) and may take "
    "a few minutes; Slicer may need a restart afterwards."
)


def torch_installed() -> bool:
    """True when ``import torch`` works in this Python."""
    try:
        importlib.import_module("torch")
    except ImportError:
        return False
    return True


def missing_extra_packages() -> list[str]:
    """pip names of the small packages pocketseg_core needs that are missing here."""
    missing = []
    for module, package in EXTRA_PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


def ensure_dependencies(
    ask: Callable[[str], bool] | None = None,
    testing: bool = False,
    pip_install: Callable[[str], None] | None = None,
) -> bool:
    """Make torch (and the extras) importable; returns False when the user declined.

    Args:
        ask: shows a question, returns True for OK (default: ``slicer.util.confirmOkCancelDisplay``).
        testing: Slicer's testing mode: install without asking.
        pip_install: installs a pip requirement (default: ``slicer.util.pip_install``).
    """
    import slicer

    ask = ask or (lambda question: slicer.util.confirmOkCancelDisplay(question, "PocketSeg needs PyTorch"))
    pip_install = pip_install or slicer.util.pip_install
    if not torch_installed():
        if not testing and not ask(TORCH_QUESTION):
            return False
        install_torch(pip_install)
    for package in missing_extra_packages():
        logging.info("PocketSeg: installing %s", package)
        pip_install(package)
    return torch_installed()


def install_torch(pip_install: Callable[[str], None]) -> None:
    """Install torch through the PyTorch extension when present, else with pip (CPU/CUDA as pip chooses)."""
    try:
        import PyTorchUtils  # the PyTorch extension (SlicerPyTorch)
    except ImportError:
        logging.warning(
            "PocketSeg: the PyTorch extension is not installed; installing torch with pip instead"
        )
        pip_install("torch")
        return
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
    if torch is None:
        logging.warning("PocketSeg: PyTorchUtils did not install torch; trying pip")
        pip_install("torch")
