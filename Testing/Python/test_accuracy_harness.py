"""The accuracy harness (benchmarks/accuracy.py) on tiny phantoms: consensus, measures, tables,
the peers' masks mapped back from FSL's standard orientation, the contour picture. No peer runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks.accuracy import (
    Head,
    ToolMask,
    _mask_on_grid,
    below_ml,
    consensus,
    enclosed_holes_ml,
    markdown_tables,
    measure_case,
    save_contours_png,
    volume_ml,
)


def ball(
    centre_zyx: tuple[int, int, int], radius: float, shape=(20, 24, 28), spacing=(1.0, 2.0, 0.5)
) -> sitk.Image:
    """A 0/1 uint8 ball on a grid of ``spacing`` (x, y, z) mm, radius in voxels."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    inside = (z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2 <= radius**2
    image = sitk.GetImageFromArray(inside.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin((3.0, -7.0, 11.0))
    return image


def shipped_skullstrip_entry() -> dict:
    """The shipped model catalog's entry of the default skull strip."""
    import json

    from pocketseg_core.bundles import SHIPPED_CATALOG

    catalog = json.loads(SHIPPED_CATALOG.read_text(encoding="utf-8"))
    return next(e for e in catalog["bundles"] if e["task"] == "skullstrip")


def packaged_skullstrip_recipe() -> dict:
    """The packaged skull-strip recipe, as its JSON reads."""
    import json

    from benchmarks.accuracy import REPOSITORY

    path = REPOSITORY / "pocketseg_core" / "training" / "recipes" / "skullstrip.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_consensus_is_the_voxelwise_majority():
    a = sitk.GetImageFromArray(np.array([[[1, 1, 0, 0, 1]]], dtype=np.uint8))
    b = sitk.GetImageFromArray(np.array([[[1, 0, 1, 0, 0]]], dtype=np.uint8))
    c = sitk.GetImageFromArray(np.array([[[1, 1, 1, 0, 0]]], dtype=np.uint8))
    agreed = sitk.GetArrayFromImage(consensus([a, b, c]))
    assert agreed.tolist() == [[[1, 1, 1, 0, 0]]]
    # two voters: both must agree (a tie is not a majority)
    assert sitk.GetArrayFromImage(consensus([a, b])).tolist() == [[[1, 0, 0, 0, 0]]]


def test_volume_and_enclosed_holes_in_ml():
    solid = ball((10, 12, 14), 6.0)
    voxels = int(sitk.GetArrayViewFromImage(solid).sum())
    assert volume_ml(solid) == pytest.approx(voxels * 1.0 * 2.0 * 0.5 / 1000.0)
    assert enclosed_holes_ml(solid) == 0.0
    hollow = sitk.GetArrayFromImage(solid)
    hollow[9:12, 11:14, 13:16] = 0  # a 27-voxel cavity inside (a "ventricle")
    hollow_image = sitk.GetImageFromArray(hollow)
    hollow_image.CopyInformation(solid)
    assert enclosed_holes_ml(hollow_image) == pytest.approx(27 * 1.0 * 2.0 * 0.5 / 1000.0)


def test_measure_case_against_reference_and_consensus_and_the_tables():
    reference = ball((10, 12, 14), 6.0)
    masks = {
        "pocketseg": ToolMask("pocketseg", ball((10, 12, 14), 6.0), 1.5),  # = reference
        "deepbet": ToolMask("deepbet", ball((10, 12, 15), 6.0), 4.0),
        "hdbet": ToolMask("hdbet", ball((10, 12, 14), 5.0), 60.0),
        "robex": ToolMask("robex", ball((10, 12, 14), 6.0), 90.0),
    }
    result, agreed = measure_case(Head("phantom", "x", "y", "manual"), masks, reference)
    # pocketseg is the reference: perfect
    assert result.against_reference["pocketseg"] == {"dice": 1.0, "hd95": 0.0, "assd": 0.0}
    # the consensus of (shifted, smaller, equal) balls is the reference ball but for the shifted side
    expected = consensus([m.mask for k, m in masks.items() if k != "pocketseg"])
    assert agreed is not None
    assert np.array_equal(sitk.GetArrayViewFromImage(agreed), sitk.GetArrayViewFromImage(expected))
    assert result.against_consensus["robex"]["dice"] == pytest.approx(
        result.against_reference["consensus"]["dice"], abs=1e-4
    )
    assert 0.8 < result.against_reference["deepbet"]["dice"] < 1.0
    # shifted by one 0.5 mm voxel: surface distances within a voxel of the coarsest axis (2 mm)
    assert 0.0 < result.against_reference["deepbet"]["hd95"] <= 2.0
    assert result.volumes_ml["reference"] == pytest.approx(volume_ml(reference), abs=0.01)
    assert result.seconds == {"pocketseg": 1.5, "deepbet": 4.0, "hdbet": 60.0, "robex": 90.0}
    names = {"pocketseg": "PocketSeg", "deepbet": "deepbet", "hdbet": "HD-BET fast", "robex": "ROBEX"}
    table = markdown_tables([result], list(names), names)
    row = next(line for line in table.splitlines() if line.startswith("| phantom (manual)"))
    assert "**1.000 / 0.0**" in row  # the best tool is bold
    consensus_row = next(line for line in table.splitlines() if line.startswith("| phantom | "))
    assert f"| {result.consensus_volume_ml:.0f} |" in consensus_row


def test_measure_case_without_reference_reports_only_the_consensus():
    masks = {key: ToolMask(key, ball((10, 12, 14), 6.0), None) for key in ("pocketseg", "deepbet", "hdbet")}
    result, agreed = measure_case(Head("unlabelled", "x"), masks, None)
    assert result.against_reference == {}
    assert agreed is not None and result.against_consensus["pocketseg"]["dice"] == 1.0
    assert result.seconds["pocketseg"] is None
    table = markdown_tables([result], ["pocketseg", "deepbet", "hdbet", "robex"], {})
    assert "| unlabelled |" in table and "Dice / HD95 (mm) against the reference" in table


@pytest.mark.parametrize("direction", [(0, 0, 1, 1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0, 0, 0, -1)])
def test_a_peer_mask_written_in_standard_orientation_maps_back_voxel_exactly(tmp_path, direction):
    head = ball((6, 12, 17), 5.0)
    head.SetDirection(direction)
    standard = sitk.DICOMOrient(head, "LAS")
    # the peer writes its mask on the standard input's voxels, with a rounded header of its own
    written = sitk.Cast(standard, sitk.sitkFloat32)
    written.SetOrigin(tuple(o + 1e-4 for o in standard.GetOrigin()))
    path = tmp_path / "mask.nii.gz"
    sitk.WriteImage(written, str(path))
    back = _mask_on_grid(path, standard, head)
    assert back.GetSize() == head.GetSize() and back.GetDirection() == head.GetDirection()
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(head))


def test_contour_picture_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    image = sitk.Cast(ball((10, 12, 14), 8.0), sitk.sitkFloat32) * 100.0
    masks = {"pocketseg": ball((10, 12, 14), 6.0), "deepbet": ball((10, 12, 15), 6.0)}
    path = save_contours_png(image, masks, tmp_path / "case.png", "phantom", {"pocketseg": "PocketSeg"})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flip", [False, True])
def test_below_ml_counts_the_mask_under_the_floor_masks_lowest_section(flip):
    floor = np.zeros((10, 6, 6), dtype=np.uint8)
    floor[4:9, 1:5, 1:5] = 1  # lowest section at z = 4 (index 0 at the feet)
    mask = floor.copy()
    mask[1:4, 2:4, 2:4] = 1  # 3 x 2 x 2 voxels below it: a leak
    images = []
    for array in (mask, floor):
        image = sitk.GetImageFromArray(array[::-1].copy() if flip else array)
        image.SetSpacing((1.0, 2.0, 3.0))
        if flip:
            image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
        images.append(image)
    assert below_ml(images[0], images[1]) == pytest.approx(12 * 6.0 / 1000.0)
    assert below_ml(images[1], images[1]) == 0.0


def test_consensus_labels_are_the_peers_majority_on_the_heads_grid(tmp_path):
    from benchmarks.consensus_labels import label_path, write_consensus_labels

    data, cache, output = tmp_path / "brain", tmp_path / "cache", tmp_path / "labels"
    data.mkdir()
    head = sitk.Cast(ball((10, 12, 14), 8.0), sitk.sitkFloat32) * 100.0
    head.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))  # permuted axes, as the Siemens head
    sitk.WriteImage(head, str(data / "unlabelled_chris_t1.nii.gz"))
    # the peers' cached masks, on the standard-oriented input's voxels (as peer_driver writes them)
    peers = {
        "deepbet": ball((10, 12, 15), 6.0),
        "hdbet": ball((10, 12, 14), 5.0),
        "robex": ball((9, 12, 14), 6.0),
    }
    folder = cache / "chris"
    folder.mkdir(parents=True)
    on_grid = []
    for tool, mask in peers.items():
        mask.CopyInformation(head)
        on_grid.append(mask)
        sitk.WriteImage(sitk.DICOMOrient(mask, "LAS"), str(folder / f"{tool}_mask.nii.gz"))
        (folder / f"{tool}_seconds.json").write_text('{"seconds": 1.0}', encoding="utf-8")
    manifest = write_consensus_labels(data, cache, output, heads=["chris"], link_data=True)
    label = sitk.ReadImage(str(label_path(output, "chris")))
    expected = consensus(on_grid)
    assert label.GetDirection() == head.GetDirection() and label.GetOrigin() == head.GetOrigin()
    assert np.array_equal(sitk.GetArrayViewFromImage(label), sitk.GetArrayViewFromImage(expected))
    assert 0 < manifest["heads"]["chris"]["volume_ml"] == pytest.approx(volume_ml(expected), abs=0.01)
    assert manifest["tools"] == ["deepbet", "hdbet", "robex"]
    assert (output / "brain").resolve() == data.resolve()  # <output> is a recipe data root
    assert (output / "brain" / "unlabelled_chris_t1.nii.gz").is_file()


def test_consensus_labels_refuse_a_missing_peer_mask_and_the_repository(tmp_path):
    from benchmarks.accuracy import REPOSITORY
    from benchmarks.consensus_labels import write_consensus_labels
    from pocketseg_core.errors import PocketSegError

    data = tmp_path / "brain"
    data.mkdir()
    sitk.WriteImage(ball((10, 12, 14), 8.0), str(data / "unlabelled_chris_t1.nii.gz"))
    with pytest.raises(PocketSegError, match="no cached deepbet mask of chris .* pass --peers-python"):
        write_consensus_labels(data, tmp_path / "cache", tmp_path / "labels", heads=["chris"])
    with pytest.raises(PocketSegError, match="inside the repository or the data folder"):
        write_consensus_labels(data, tmp_path / "cache", REPOSITORY / "labels", heads=["chris"])
    with pytest.raises(PocketSegError, match="unknown heads"):
        write_consensus_labels(data, tmp_path / "cache", tmp_path / "labels", heads=["nobody"])


def test_real_heads_recipe_trains_on_the_consensus_labels_and_holds_every_new_head_out_once():

    from benchmarks.accuracy import REPOSITORY
    from benchmarks.consensus_labels import DEFAULT_HEADS, label_path
    from pocketseg_core.training.recipes import load_recipe

    recipe = load_recipe(REPOSITORY / "benchmarks" / "recipes" / "skullstrip_real_heads.json")
    labels = {s["case"]: s["label"] for s in recipe.sources if s.get("use") == "train"}
    for head in DEFAULT_HEADS:  # the labels consensus-labels writes, relative to its output
        assert labels[head] == str(label_path(Path("."), head))
    assert labels["swiss"] == "brain/swiss_atlas_brainmask.mha"  # a manual mask stays the label
    held_out = [case for run in ("fold_a", "fold_b") for case in recipe.runs[run]]
    assert sorted(held_out) == sorted([*DEFAULT_HEADS, "swiss"]) and recipe.runs["all"] == []
    # it starts from skull strip 1.3.0's weights (the shipped model while 1.3.0 is shipped)
    shipped = shipped_skullstrip_entry()
    if shipped["version"] == "1.3.0":
        assert recipe.init_from["weights_sha256"] == shipped["weights_sha256"]
    assert recipe.init_from["bundle"] == "bundles/pocketnet-skullstrip-1.3.0"


def test_csf_recipe_starts_from_the_shipped_weights_and_uses_no_consensus_label():

    from benchmarks.accuracy import REPOSITORY
    from pocketseg_core.training.recipes import load_recipe

    recipe = load_recipe(REPOSITORY / "benchmarks" / "recipes" / "skullstrip_csf_half.json")
    # only the heads with their own masks train (the five consensus-scored heads stay unseen)
    labels = [s["label"] for s in recipe.sources if s.get("use") == "train"]
    assert labels and not any("consensus" in label for label in labels)
    assert recipe.runs == {"loo_robex": ["robex"]}
    stage = recipe.stage(0)
    assert stage.synthesis["csf_in_mask"] == 0.5 and stage.synthesis["face_and_neck"] == 2
    shipped = shipped_skullstrip_entry()
    if shipped["version"].startswith("1.4."):  # the 1.4 weights (1.4.1: the same, with the anchor)
        assert recipe.init_from["weights_sha256"] == shipped["weights_sha256"]


@pytest.mark.parametrize(
    ("name", "synthesis", "patch_size_zyx", "spacing"),
    [
        ("skullstrip_scalp_contrast", {"face_and_neck": 2, "scalp_contrast": 0.5}, [112, 128, 128], 2.0),
        ("skullstrip_grid_1p5", {"face_and_neck": 2}, [144, 160, 128], 1.5),
    ],
)
def test_one_stage_variant_is_the_packaged_recipe_with_one_stage_from_the_shipped_weights(
    name, synthesis, patch_size_zyx, spacing
):
    """The measured variants (a wide scalp contrast; a 1.5 mm working grid): the packaged
    skull-strip recipe (same heads, synthesis, augmentation, clean-up) whose only stage continues
    the shipped 1.4 weights on whole heads, with a Swiss fold from the default recipe's run loo_swiss."""
    import json

    from benchmarks.accuracy import REPOSITORY
    from pocketseg_core.training.recipes import load_recipe

    path = REPOSITORY / "benchmarks" / "recipes" / f"{name}.json"
    load_recipe(path)  # a valid recipe
    variant = json.loads(path.read_text(encoding="utf-8"))
    packaged = packaged_skullstrip_recipe()
    (stage,) = variant.pop("stages")
    assert stage["synthesis"] == synthesis
    assert stage["patch_size_zyx"] == patch_size_zyx and stage["optimizer"] == {"lr": 0.0003}
    assert variant.pop("spacing") == [spacing] * 3 and packaged.pop("spacing") == [2.0] * 3
    shipped = shipped_skullstrip_entry()
    init_from = variant.pop("init_from")
    assert init_from["bundle"] == "bundles/skullstrip-1.4.0"
    if shipped["version"].startswith("1.4."):  # while the 1.4 weights are shipped
        assert init_from["weights_sha256"] == shipped["weights_sha256"]
    assert variant.pop("runs") == {"loo_robex": ["robex"]}
    # its Swiss fold: the same stage from the default recipe's run loo_swiss (never saw the Swiss head)
    swiss = json.loads(path.with_name(f"{name}_loo_swiss.json").read_text(encoding="utf-8"))
    assert swiss.pop("stages") == [stage] and swiss.pop("spacing") == [spacing] * 3
    assert swiss.pop("init_from")["bundle"] == "bundles/skullstrip-1.4.0-loo_swiss"
    assert swiss.pop("runs") == {"loo_swiss": ["swiss"]} and swiss.pop("shipped_run") == "loo_swiss"
    for recipe in (variant, packaged, swiss):
        for key in ("stages", "runs", "version", "description", "shipped_run"):
            recipe.pop(key, None)
    assert variant == packaged == swiss


def test_fit_one_head_diagnostic_fits_the_shipped_weights_to_one_real_head_per_run():
    """The diagnostic of docs/accuracy.md ("Can the network hold one head's mask at all?"): the packaged
    recipe's network, grid, augmentation and clean-up, one stage from the shipped 1.4 weights on
    one real head per run and no synthetic heads."""
    import json

    from benchmarks.accuracy import REPOSITORY
    from pocketseg_core.training.recipes import load_recipe

    path = REPOSITORY / "benchmarks" / "recipes" / "skullstrip_fit_one_head.json"
    recipe = load_recipe(path)
    fit = json.loads(path.read_text(encoding="utf-8"))
    packaged = packaged_skullstrip_recipe()
    labels = {s["case"]: s["label"] for s in fit.pop("sources")}
    assert labels == {
        "robex": "brain/robex_atlas_brainmask.nii.gz",
        "siemens_xa30_2mm": "consensus/siemens_xa30_2mm_consensus.nii.gz",
    }
    # each run holds the other head out, so it trains on exactly one
    assert fit.pop("runs") == {"fit_robex": ["siemens_xa30_2mm"], "fit_siemens": ["robex"]}
    assert not recipe.synthesis and "synthesis" not in fit  # no synthetic heads
    (stage,) = fit.pop("stages")
    assert "synthesis" not in stage and stage["epochs"] == 3 and stage["optimizer"] == {"lr": 0.0003}
    init_from = fit.pop("init_from")
    assert init_from["bundle"] == "bundles/skullstrip-1.4.0"
    shipped = shipped_skullstrip_entry()
    if shipped["version"].startswith("1.4."):  # while the 1.4 weights are shipped
        assert init_from["weights_sha256"] == shipped["weights_sha256"]
    for recipe_dict in (fit, packaged):
        for key in ("sources", "synthesis", "stages", "runs", "version", "description", "shipped_run"):
            recipe_dict.pop(key, None)
    assert fit == packaged


@pytest.mark.parametrize("fold", ["a", "b"])
def test_real_heads_csf_recipes_are_the_whole_head_folds_plus_the_csf(fold):
    """The measured variant differs from the whole-head fold recipe only by its stage's name,
    its description and ``csf_in_mask``: the same heads held out, start weights and seed."""
    import json

    from benchmarks.accuracy import REPOSITORY
    from pocketseg_core.training.recipes import load_recipe

    folder = REPOSITORY / "benchmarks" / "recipes"
    plain = json.loads((folder / f"skullstrip_real_heads_whole_fold_{fold}.json").read_text(encoding="utf-8"))
    csf = json.loads((folder / f"skullstrip_real_heads_csf_fold_{fold}.json").read_text(encoding="utf-8"))
    load_recipe(folder / f"skullstrip_real_heads_csf_fold_{fold}.json")  # a valid recipe
    assert csf["stages"][0].pop("synthesis") == {**plain["stages"][0].pop("synthesis"), "csf_in_mask": 0.5}
    for recipe in (plain, csf):
        recipe["stages"][0].pop("name")
        recipe.pop("description")
    assert csf == plain


def test_twelve_map_real_heads_recipes_are_the_packaged_recipe_wider_plus_the_csf_stage():
    """The measured 12-feature-map candidate is the packaged skull-strip recipe with 12 feature
    maps and, as a seventh stage with its own sources, the real-heads + CSF stage; its fold b
    recipe is that stage started from the candidate's stage-6 model."""
    import json

    from benchmarks.accuracy import REPOSITORY
    from pocketseg_core.training.recipes import load_recipe

    folder = REPOSITORY / "benchmarks" / "recipes"

    def read(path):
        return json.loads(path.read_text(encoding="utf-8"))

    packaged = packaged_skullstrip_recipe()
    wide = read(folder / "skullstrip_12_maps_real_heads_csf.json")
    csf_b = read(folder / "skullstrip_real_heads_csf_fold_b.json")
    fold_b = read(folder / "skullstrip_12_maps_real_heads_csf_fold_b.json")
    load_recipe(folder / "skullstrip_12_maps_real_heads_csf.json")
    load_recipe(folder / "skullstrip_12_maps_real_heads_csf_fold_b.json")

    last = wide["stages"].pop()
    assert last.pop("sources") == csf_b["sources"]
    assert last == csf_b["stages"][0]
    assert wide.pop("network_args") == {**packaged.pop("network_args"), "init_filters": 12}
    assert wide.pop("runs") == {"loo_robex": ["robex"], "fold_c": ["robex", "siemens_xa30_2mm", "chris"]}
    # the intensity anchor (1.4.1) acts at inference only: the measured recipe trained the same
    assert packaged["preprocessing"].pop("anchor")["label"] == 1
    for recipe in (wide, packaged):
        for key in ("runs", "version", "description"):
            recipe.pop(key, None)
    assert wide == packaged

    assert fold_b.pop("network_args") == {**csf_b.pop("network_args"), "init_filters": 12}
    assert fold_b.pop("init_from")["bundle"] == "bundles/skullstrip-12-maps-loo_robex-stage6"
    csf_b.pop("init_from")
    for recipe in (fold_b, csf_b):
        for key in ("version", "description"):
            recipe.pop(key)
    assert fold_b == csf_b


def test_skullstrip_ensemble_recipe_averages_the_packaged_recipe_and_the_twelve_map_candidate():
    """The shipped ensemble's member 0 trains exactly as the packaged skull-strip recipe (the
    default model, 1.4.0), its member 1 exactly as the measured 12-feature-map real-heads recipe,
    the same runs held out; so each member's held-out numbers are the ones measured for them."""
    from benchmarks.accuracy import REPOSITORY
    from pocketseg_core.training.recipes import load_recipe

    ensemble = load_recipe("skullstrip-ensemble")
    packaged = load_recipe("skullstrip")
    wide = load_recipe(REPOSITORY / "benchmarks" / "recipes" / "skullstrip_12_maps_real_heads_csf.json")
    assert ensemble.members == 2
    # the default's runs, and two folds that hold out the heads member 1's last stage trains on
    assert {run: ensemble.runs[run] for run in packaged.runs} == packaged.runs
    folds = [ensemble.runs["fold_b"], ensemble.runs["fold_c"]]
    stage_heads = [s["case"] for s in wide.stages[-1]["sources"] if s.get("use", "train") == "train"]
    assert sorted({case for fold in folds for case in fold} - {"robex"}) == sorted(
        set(stage_heads) - {"swiss", "robex", "mni152"}
    )
    assert ensemble.shipped_run == packaged.shipped_run == "loo_robex"
    texts = {"name": "x", "version": "0", "description": "", "title": "", "runs": {}, "shipped_run": ""}
    assert ensemble.member(0).replace(**texts) == packaged.replace(**texts)
    # the intensity anchor (1.0.1) acts at inference only, and is the default's
    assert ensemble.preprocessing == packaged.preprocessing
    plain = {"preprocessing": {"kind": "mr_zscore"}}
    assert ensemble.member(1).replace(**texts, **plain) == wide.replace(**texts, **plain)
    made = ensemble.bundle_config(ensemble.name, {})
    assert [args["init_filters"] for args in made.member_network_args] == [8, 12]


def test_thin_skull_recipe_is_the_twelve_map_candidate_plus_one_stage():
    """The measured thin-skull variant is the 12-feature-map candidate (same stages, heads and
    seeds) with an eighth stage: stage 7's heads, seed 8000, lr 2e-4, csf_in_mask 0.75 and
    thin_skull 0.5; one more run holds the Swiss head out."""
    import json

    from benchmarks.accuracy import REPOSITORY
    from pocketseg_core.training.recipes import load_recipe

    folder = REPOSITORY / "benchmarks" / "recipes"
    base = json.loads((folder / "skullstrip_12_maps_real_heads_csf.json").read_text(encoding="utf-8"))
    thin = json.loads((folder / "skullstrip_12_maps_thin_skull.json").read_text(encoding="utf-8"))
    load_recipe(folder / "skullstrip_12_maps_thin_skull.json")  # a valid recipe
    eighth = thin["stages"].pop()
    seventh = base["stages"][-1]
    assert eighth["synthesis"] == {**seventh["synthesis"], "csf_in_mask": 0.75, "thin_skull": 0.5}
    assert eighth["sources"] == seventh["sources"] and eighth["seed"] == 8000
    assert eighth["optimizer"] == {"lr": 0.0002}
    assert thin["runs"].pop("loo_swiss") == ["swiss"]
    for recipe in (base, thin):
        for key in ("version", "description"):
            recipe.pop(key)
    assert thin == base
