"""Static checks of the parts that need the Slicer application (Qt), which cannot run here.

Every Python file of the Slicer modules compiles; the Qt Designer file parses and names only
Qt, CTK and Slicer widget classes (anything else would fail to load inside Slicer); the CMake
files carry the macros and fields an extension build and the Extensions Index need; the
Qt-free logic package never imports Qt at module level.
"""

from __future__ import annotations

import ast
import py_compile
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from conftest import REPO_ROOT

MODULE_DIRS = [REPO_ROOT / "PocketSeg", REPO_ROOT / "PocketSegTrain"]
UI_FILE = REPO_ROOT / "Resources" / "UI" / "PocketSeg.ui"
ALLOWED_WIDGET_CLASS = re.compile(r"^(Q[A-Z]\w*|ctk[A-Z]\w*|qMRML\w+|qSlicer\w+)$")
QT_MODULES = {"qt", "ctk", "PythonQt", "slicer.ScriptedLoadableModule"}


def module_python_files() -> list[Path]:
    files = [path for folder in MODULE_DIRS if folder.is_dir() for path in sorted(folder.rglob("*.py"))]
    return [path for path in files if "__pycache__" not in path.parts]


def test_module_files_exist():
    for path in [
        "PocketSeg/PocketSeg.py",
        "PocketSeg/PocketSegLib/__init__.py",
        "Resources/Icons/PocketSeg.png",
    ]:
        assert (REPO_ROOT / path).is_file(), path
    assert (REPO_ROOT / "Resources/Icons/PocketSeg.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("path", module_python_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_python_file_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "compiled.pyc"), doraise=True)


def top_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "path",
    sorted((REPO_ROOT / "PocketSeg" / "PocketSegLib").glob("*.py")),
    ids=lambda p: p.name,
)
def test_logic_package_does_not_import_qt(path):
    assert not (top_level_imports(path) & QT_MODULES), f"{path.name} imports Qt at module level"


def test_module_file_has_the_template_classes():
    tree = ast.parse((REPO_ROOT / "PocketSeg" / "PocketSeg.py").read_text(encoding="utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    bases = {name: {ast.unparse(base) for base in node.bases} for name, node in classes.items()}
    assert "ScriptedLoadableModule" in bases["PocketSeg"]
    assert "ScriptedLoadableModuleWidget" in bases["PocketSegWidget"]
    assert "ScriptedLoadableModuleLogic" in bases["PocketSegLogic"]
    assert "ScriptedLoadableModuleTest" in bases["PocketSegTest"]
    decorators = {ast.unparse(d) for d in classes["PocketSegParameterNode"].decorator_list}
    assert "parameterNodeWrapper" in decorators


def test_ui_file_parses_and_uses_only_qt_ctk_slicer_widgets():
    root = ElementTree.parse(UI_FILE).getroot()
    assert root.tag == "ui"
    classes = {widget.get("class") for widget in root.iter("widget")}
    classes |= {layout.get("class") for layout in root.iter("layout")}
    not_allowed = sorted(c for c in classes if not ALLOWED_WIDGET_CLASS.match(c or ""))
    assert not not_allowed, f"widget classes Slicer cannot load: {not_allowed}"
    declared = {custom.findtext("class") for custom in root.iter("customwidget")}
    custom_used = {c for c in classes if not c.startswith("Q")}
    assert custom_used <= declared, f"custom widgets used but not declared: {sorted(custom_used - declared)}"


def test_ui_names_the_widgets_the_module_uses():
    root = ElementTree.parse(UI_FILE).getroot()
    names = {widget.get("name") for widget in root.iter("widget")}
    module_source = (REPO_ROOT / "PocketSeg" / "PocketSeg.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", module_source))
    assert used <= names, f"PocketSeg.py uses widgets missing from the .ui: {sorted(used - names)}"
    texts = {string.text for string in root.iter("string")}
    assert {
        "Skull strip",
        "Segment liver",
        "Cancel",
        "Compare",
        "Options",
        "Compare with a reference",
        "Run on:",
        "This computer",
        "A PocketSeg server",
        "Test connection",
    } <= texts


def module_function(name: str) -> ast.FunctionDef:
    """A method of the module's widget class, by name."""
    tree = ast.parse((REPO_ROOT / "PocketSeg" / "PocketSeg.py").read_text(encoding="utf-8"))
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PocketSegWidget")
    return next(n for n in widget.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_ui_server_token_is_a_password_field_kept_out_of_the_scene():
    """The token is typed into a password field and is no parameter of the scene's parameter node
    (a saved scene would carry it): Run on, URL and token live in the application settings."""
    root = ElementTree.parse(UI_FILE).getroot()
    widgets = {widget.get("name"): widget for widget in root.iter("widget")}
    token = widgets["serverTokenLineEdit"]
    echo = {prop.get("name"): prop.findtext("enum") for prop in token.findall("property")}
    assert echo.get("echoMode") == "QLineEdit::Password"
    for name in ["runOnComboBox", "serverUrlLineEdit", "serverTokenLineEdit", "rememberTokenCheckBox"]:
        bound = [p for p in widgets[name].findall("property") if p.get("name") == "SlicerParameterName"]
        assert not bound, f"{name} is bound to the parameter node, which is saved with the scene"
    items = [item.findtext("property/string") for item in widgets["runOnComboBox"].findall("item")]
    assert items == ["This computer", "A PocketSeg server"]  # RUN_ON_COMPUTER, RUN_ON_SERVER


def test_module_stores_the_token_only_when_remember_is_ticked():
    """Every write of the token to the settings sits under ``if rememberTokenCheckBox.checked``, whose
    ``else`` removes a token stored before; the token is read back only when remember is set."""
    source = (REPO_ROOT / "PocketSeg" / "PocketSeg.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def guarded_by_remember(node: ast.AST) -> bool:
        while node in parents:
            parent = parents[node]
            if isinstance(parent, ast.If) and node in parent.body and "remember" in ast.unparse(parent.test):
                return True
            node = parent
        return False

    token_calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.args
        and ast.unparse(node.args[0]) == "SETTING_SERVER_TOKEN"
    ]
    writes = [c for c in token_calls if c.func.attr == "setValue"]
    reads = [c for c in token_calls if c.func.attr == "value"]
    removes = [c for c in token_calls if c.func.attr == "remove"]
    assert writes and reads and removes
    assert all(guarded_by_remember(call) for call in writes + reads)
    assert not any(guarded_by_remember(call) for call in removes)  # in the else branch
    assert re.search(r'SETTING_SERVER_TOKEN = "PocketSeg/\w+"', source)


def test_module_server_choice_disables_device_and_asks_the_server():
    """ "Test connection" calls the client's health() and lists the server's models(); a server
    choice disables Device and sends the server in SegmentOptions to prepare and start."""
    called = {
        node.func.attr
        for node in ast.walk(module_function("onTestConnection"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert {"health", "models", "populateModels"} <= called
    update = ast.unparse(module_function("updateRunOn"))
    assert "self.ui.deviceComboBox.enabled = not onServer" in update
    segment = ast.unparse(module_function("onSegment"))
    assert (
        "server=server" in segment and "self.logic.prepare(parameters.inputVolume, model, server)" in segment
    )
    setup = ast.unparse(module_function("setupRunOn"))
    for widget, handler in [
        ("runOnComboBox", "onRunOnChanged"),
        ("testConnectionButton", "onTestConnection"),
        ("rememberTokenCheckBox", "saveRunOn"),
    ]:
        assert re.search(rf"self\.ui\.{widget}\.connect\('[^']+', self\.{handler}\)", setup), widget


def test_ui_parameter_bindings_match_the_parameter_node():
    root = ElementTree.parse(UI_FILE).getroot()
    bound = {
        prop.findtext("string") for prop in root.iter("property") if prop.get("name") == "SlicerParameterName"
    }
    tree = ast.parse((REPO_ROOT / "PocketSeg" / "PocketSeg.py").read_text(encoding="utf-8"))
    parameter_class = next(
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PocketSegParameterNode"
    )
    fields = {node.target.id for node in parameter_class.body if isinstance(node, ast.AnnAssign)}
    assert bound == fields


def test_extension_cmake_has_the_required_fields_and_macros():
    top = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for field in [
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
    ]:
        assert re.search(rf"set\({field} \"[^\"]+\"\)", top), field
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in top
    assert re.search(r'set\(EXTENSION_DEPENDS "[^"]*\bPyTorch\b', top)
    assert "find_package(Slicer REQUIRED)" in top and "include(${Slicer_USE_FILE})" in top
    assert "add_subdirectory(PocketSeg)" in top
    assert "PocketSegTrain/CMakeLists.txt" in top  # guarded add_subdirectory(PocketSegTrain)
    assert "pocketseg_core/*.py" in top and "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR" in top
    assert "Slicer_EXTENSION_CPACK" in top
    module = (REPO_ROOT / "PocketSeg" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in module
    assert (
        "${MODULE_NAME}.py" in module
        and "${MODULE_NAME}Lib/*.py" in module
        and "set(MODULE_NAME PocketSeg)" in module
    )
    assert "UI/${MODULE_NAME}.ui" in module and "Icons/${MODULE_NAME}.png" in module
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module


def test_extension_description_file():
    fields = {}
    for line in (REPO_ROOT / "PocketSeg.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    for key in [
        "scm",
        "scmurl",
        "scmrevision",
        "depends",
        "build_subdirectory",
        "homepage",
        "category",
        "iconurl",
        "description",
    ]:
        assert fields.get(key), key
    assert fields["category"] == "Segmentation"
    assert "PyTorch" in fields["depends"].split()


def test_module_logic_loads_without_torch():
    """Both modules must load in a Slicer without torch, to offer installing it: their logic
    packages may import torch only when a run starts."""
    import subprocess
    import sys

    code = (
        "import sys; sys.path[:0] = ['PocketSeg', 'PocketSegTrain'];"
        "import PocketSegLib.logic, PocketSegLib.comparison, PocketSegTrainLib.logic;"
        "print('torch' in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "False"


def test_extension_installs_every_package_data_file_of_pocketseg_core():
    """The Slicer extension installs pocketseg_core's data files by CMake globs of its own; each
    file that pyproject.toml ships as package data (weights, network.onnx, catalog, recipes) must
    match one of them, or a model runs from pip but fails in Slicer ("network.onnx is missing")."""
    import fnmatch
    import tomllib

    top = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    block = top[top.index("file(GLOB_RECURSE POCKETSEG_CORE_RESOURCES") :]
    block = block[: block.index(")")]
    globs = re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)", block)
    assert "pocketseg_core/models/*.onnx" in globs

    def installed(relative: str) -> bool:  # GLOB_RECURSE: dir/*.ext matches at any depth below dir
        for pattern in globs:
            folder, _, name = pattern.rpartition("/")
            if relative.startswith(folder + "/") and fnmatch.fnmatch(relative.rpartition("/")[2], name):
                return True
        return False

    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["pocketseg_core"]
    files = sorted(
        str(path.relative_to(REPO_ROOT)).replace("\\", "/")
        for pattern in patterns
        for path in (REPO_ROOT / "pocketseg_core").glob(pattern)
        if path.is_file()
    )
    assert any(f.endswith("network.onnx") for f in files) and any("recipes" in f for f in files)
    assert [f for f in files if not installed(f)] == []
