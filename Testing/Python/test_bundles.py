"""Model bundles: round trip, checksum and corruption errors, catalog and task aliases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_bundles import make_tiny_bundle, tiny_config

from pocketseg_core import bundles
from pocketseg_core.bundles import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    BundleConfig,
    list_bundles,
    load_bundle,
    register_bundle,
    resolve_bundle,
    save_bundle,
)
from pocketseg_core.errors import BundleError


@pytest.fixture(autouse=True)
def user_catalog(tmp_path, tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own empty user catalog (never the real ~/.pocketseg) and an empty
    shipped catalog (the tests of the shipped models are elsewhere)."""
    folder = tmp_path / "user_models"
    monkeypatch.setenv("POCKETSEG_MODELS_DIR", str(folder))
    shipped = tmp_path_factory.mktemp("shipped") / "catalog.json"
    shipped.write_text(json.dumps({"bundles": []}), encoding="utf-8")
    monkeypatch.setattr(bundles, "SHIPPED_CATALOG", shipped)
    return folder


def ship(bundle: Path, task: str, sha256: str | None = None) -> None:
    """Add ``bundle`` to the (test) shipped catalog, with its weights' sha256 unless given."""
    catalog = json.loads(bundles.SHIPPED_CATALOG.read_text(encoding="utf-8"))
    catalog["bundles"].append(
        {
            "name": f"shipped-{task}",
            "task": task,
            "title": "shipped",
            "modality": "MR",
            "path": str(bundle),
            "weights_sha256": sha256 or bundles.sha256_of(bundle / WEIGHTS_FILE),
        }
    )
    bundles.SHIPPED_CATALOG.write_text(json.dumps(catalog), encoding="utf-8")


@pytest.fixture
def bundle_path(tmp_path) -> Path:
    return make_tiny_bundle(tmp_path / "tiny", fit=False)


def test_round_trip_keeps_config_and_weights(bundle_path):
    bundle = load_bundle(bundle_path)
    config = bundle.config
    assert config.name == "tiny-skullstrip"
    assert config.task == "skullstrip"
    assert config.network == "pocket_unet3d"
    assert config.spacing == (4.0, 4.0, 4.0)
    assert config.window_size_zyx == (32, 32, 32)
    assert config.num_classes == 2
    assert config.labels[0].name == "Brain"
    assert config.labels[0].terminology["type"]["CodeValue"] == "12738006"
    assert config.labels[0].terminology["category"]["CodeValue"] == "123037004"
    assert len(config.weights_sha256) == 64
    # The config survives JSON both ways unchanged.
    assert BundleConfig.from_dict(json.loads(json.dumps(config.to_dict()))).to_dict() == config.to_dict()
    network = bundle.build_network("cpu")
    assert not network.training
    saved = torch.load(bundle_path / WEIGHTS_FILE, weights_only=True)
    for key, value in network.state_dict().items():
        assert torch.equal(value, saved[key]), key
    output = network(torch.zeros(1, 1, 8, 8, 8))
    assert output.shape == (1, 2, 8, 8, 8)


def test_liver_bundle_has_liver_terminology(tmp_path):
    config = load_bundle(make_tiny_bundle(tmp_path / "liver", task="liver", modality="CT", fit=False)).config
    assert config.modality == "CT"
    assert config.preprocessing == {"kind": "ct_window", "window": [-100, 200]}
    assert config.labels[0].name == "Liver"
    assert config.labels[0].terminology["type"]["CodeValue"] == "10200004"


def test_save_replaces_existing_bundle_atomically(bundle_path):
    config = load_bundle(bundle_path).config
    state = {k: torch.zeros_like(v) for k, v in load_bundle(bundle_path).state_dict.items()}
    save_bundle(bundle_path, config, state)
    reloaded = load_bundle(bundle_path)
    assert all(torch.count_nonzero(v) == 0 for v in reloaded.state_dict.values())
    # No temporary folders left beside it, and others can read it (mkdtemp alone gives 0700).
    assert sorted(p.name for p in bundle_path.parent.iterdir()) == ["tiny"]
    assert bundle_path.stat().st_mode & 0o755 == 0o755


def test_checksum_mismatch_is_a_bundle_error(bundle_path):
    data = json.loads((bundle_path / CONFIG_FILE).read_text(encoding="utf-8"))
    data["weights_sha256"] = "0" * 64
    (bundle_path / CONFIG_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(BundleError, match=r"weights\.pt fails its checksum.*re-install or re-train"):
        load_bundle(bundle_path)


def test_corrupt_weights_are_caught_by_the_checksum(bundle_path):
    weights = bundle_path / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="fails its checksum"):
        load_bundle(bundle_path)


def test_truncated_weights_with_matching_checksum_are_a_bundle_error(bundle_path):
    # Someone "fixed" the checksum of a truncated file: torch must not crash the caller.
    import hashlib

    weights = bundle_path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    data = json.loads((bundle_path / CONFIG_FILE).read_text(encoding="utf-8"))
    data["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (bundle_path / CONFIG_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(BundleError, match=r"cannot be read as PyTorch weights.*re-export"):
        load_bundle(bundle_path)


def test_missing_files_are_bundle_errors(bundle_path, tmp_path):
    (bundle_path / WEIGHTS_FILE).unlink()
    with pytest.raises(BundleError, match=r"weights\.pt is missing"):
        load_bundle(bundle_path)
    (bundle_path / CONFIG_FILE).unlink()
    with pytest.raises(BundleError, match=r"bundle\.json is missing"):
        load_bundle(bundle_path)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere" / "model")


def test_weights_of_another_network_are_a_bundle_error(bundle_path):
    data = json.loads((bundle_path / CONFIG_FILE).read_text(encoding="utf-8"))
    data["network_args"]["init_filters"] = 8
    (bundle_path / CONFIG_FILE).write_text(json.dumps(data), encoding="utf-8")
    bundle = load_bundle(bundle_path)  # the checksum is of the weights, still fine
    with pytest.raises(BundleError, match="do not fit network 'pocket_unet3d'"):
        bundle.build_network()


def test_members_need_one_set_of_weights_per_member(bundle_path):
    data = json.loads((bundle_path / CONFIG_FILE).read_text(encoding="utf-8"))
    data["members"] = 2  # the weights hold one network
    (bundle_path / CONFIG_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(
        BundleError, match="do not fit network 'pocket_unet3d' with arguments .*, 2 members .*members.0"
    ):
        load_bundle(bundle_path).build_network()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"modality": "PET"}, "modality must be one of"),
        ({"window_mode": "cube"}, "window_mode must be one of"),
        ({"spacing": [1, 0, 1]}, "spacing must be three positive numbers"),
        ({"labels": []}, "at least one label"),
        ({"preprocessing": {"kind": "ct_window", "window": [200, -100]}}, "low < high"),
        ({"colour": 1}, r"unknown keys \['colour'\]"),
        ({"postprocessing": {"cut_bridges_mm": -2}}, "cut_bridges_mm must be a positive number"),
        ({"postprocessing": {"opening": 2}}, r"unknown postprocessing keys \['opening'\]"),
        ({"postprocessing": {"fill_holes": "2d"}}, "fill_holes must be one of"),
        ({"postprocessing": {"cut_below_waist": "yes"}}, "cut_below_waist must be true or false"),
        ({"context_slices": -1}, "context_slices must be an integer >= 0"),
        ({"members": 0}, "members must be a whole number from 1 to 16"),
        ({"members": "3"}, "members must be a whole number from 1 to 16"),
        ({"context_slices": 2}, "context_slices is for 2D networks"),  # tiny_config is patch3d
        (
            {"context_slices": 2, "window_mode": "slice2d", "network": "pocket_unet2d"},
            r"takes 1 input channel\(s\) but context_slices 2 gives 5",
        ),
    ],
)
def test_invalid_config_names_the_field(change, message):
    data = tiny_config().to_dict()
    data.update(change)
    with pytest.raises(BundleError, match=message):
        BundleConfig.from_dict(data)


def test_user_catalog_registration_and_task_alias(bundle_path, user_catalog):
    with pytest.raises(
        BundleError, match="no model for task liver is installed; train one with pocketseg train"
    ):
        load_bundle("liver")
    registered = register_bundle(bundle_path)
    assert registered == user_catalog / "tiny-skullstrip"
    entries = list_bundles()
    assert [(e.name, e.task, e.source) for e in entries] == [("tiny-skullstrip", "skullstrip", "user")]
    assert resolve_bundle("skullstrip") == registered
    assert (
        load_bundle("tiny-skullstrip").config.weights_sha256 == load_bundle(bundle_path).config.weights_sha256
    )
    with pytest.raises(BundleError, match="unknown model 'nothing'.*available: tiny-skullstrip"):
        load_bundle("nothing")


def test_registering_again_replaces_and_a_failed_move_keeps_the_old_one(
    bundle_path, user_catalog, monkeypatch
):
    registered = register_bundle(bundle_path)
    first = (registered / WEIGHTS_FILE).read_bytes()
    config = load_bundle(bundle_path).config
    save_bundle(
        bundle_path, config, {k: torch.zeros_like(v) for k, v in load_bundle(bundle_path).state_dict.items()}
    )
    real_replace = bundles.os.replace

    def fail_into_target(source, destination):
        if Path(destination) == registered and ".old." not in str(source):
            raise OSError(28, "No space left on device")
        return real_replace(source, destination)

    monkeypatch.setattr(bundles.os, "replace", fail_into_target)
    with pytest.raises(OSError, match="No space left"):
        register_bundle(bundle_path)
    monkeypatch.setattr(bundles.os, "replace", real_replace)
    assert (registered / WEIGHTS_FILE).read_bytes() == first  # the old registration is back, whole
    assert sorted(p.name for p in user_catalog.iterdir()) == ["tiny-skullstrip"]  # nothing left over
    register_bundle(bundle_path)
    assert all(torch.count_nonzero(v) == 0 for v in load_bundle("tiny-skullstrip").state_dict.values())
    assert registered.stat().st_mode & 0o755 == 0o755


def test_register_refuses_a_corrupt_bundle(bundle_path, user_catalog):
    (bundle_path / WEIGHTS_FILE).write_bytes(b"not torch")
    with pytest.raises(BundleError, match="fails its checksum"):
        register_bundle(bundle_path)
    assert not (user_catalog / "tiny-skullstrip").exists()


def test_shipped_bundle_is_checked_against_the_catalog_sha256(tmp_path):
    shipped = make_tiny_bundle(tmp_path / "shipped_model", fit=False)
    ship(shipped, "skullstrip")
    assert load_bundle("skullstrip").path == shipped
    # A bundle whose weights and bundle.json were both replaced still fails: the catalog knows.
    replacement = tiny_config()
    torch.manual_seed(7)
    from pocketseg_core.networks import create_network

    network = create_network(replacement.network, **replacement.network_args)
    save_bundle(shipped, replacement, network.state_dict())  # consistent bundle.json + weights
    with pytest.raises(BundleError, match="not the file the model catalog ships"):
        load_bundle("skullstrip")


def test_task_alias_prefers_the_shipped_model_over_a_users(tmp_path, bundle_path):
    shipped = make_tiny_bundle(tmp_path / "shipped_model", fit=False)
    ship(shipped, "skullstrip")
    registered = register_bundle(bundle_path)  # a user's model of the same task
    assert resolve_bundle("skullstrip") == shipped  # the button keeps its shipped model
    assert resolve_bundle("tiny-skullstrip") == registered  # the user's is chosen by name


def test_reading_bundles_imports_neither_numpy_nor_simpleitk():
    """The catalog and bundle configs are read at every start of the CLI and the Slicer panels:
    the anchor's keys live in bundles.py so that this stays free of the imaging libraries."""
    import subprocess
    import sys

    code = (
        "import sys; from pocketseg_core.bundles import SHIPPED_CATALOG, list_bundles, read_config; "
        "list_bundles(); read_config(SHIPPED_CATALOG.parent / 'skullstrip'); "
        "print(sorted({'numpy', 'SimpleITK', 'torch'} & set(sys.modules)))"
    )
    repo = Path(__file__).resolve().parents[2]
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "[]"
