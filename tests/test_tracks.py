"""The benchmark's tracks beyond the main split: a localization track without good test images, and the
Magnetic Tile Defects importer (grey masks thresholded, empty masks left out, capture series kept whole)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_metrics import brute_auroc, brute_f1_max, brute_pro

from impeller_bench.cli import main
from impeller_bench.common.imageio import read_mask
from impeller_bench.data import build
from impeller_bench.data.audit import TEST_DEFECT, TRAIN_GOOD, audit_images
from impeller_bench.data.audit_measures import AuditImage
from impeller_bench.data.dataset import load_dataset
from impeller_bench.data.sources import mtd
from impeller_bench.data.synth import write_synthetic
from impeller_bench.evaluation.evaluate import (
    IMAGE_METRICS_UNDEFINED,
    compare,
    evaluate,
)
from impeller_bench.evaluation.predictions import load_predictions, write_predictions

# --------------------------------------------------------------------------- a track without good test images


@pytest.fixture(scope="module")
def localization(tmp_path_factory):
    """Tiny synthetic impellers with no good test image (5 defect images of 32 x 32), grouped in pairs."""
    root = tmp_path_factory.mktemp("localization") / "dataset"
    write_synthetic(root, train_good=3, test_good=0, test_defect=5, size=32, seed=4)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["build"]["bootstrap_unit"] = "group"
    for k, entry in enumerate(e for e in manifest["entries"] if e["split"] == "test"):
        entry["group"] = 100 + k // 2
    (root / "manifest.json").write_text(json.dumps(manifest))
    return load_dataset(root)


def quantised_predictions(dataset, out, seed):
    """Maps = mask + noise on 4 levels (ties everywhere); image score = map maximum."""
    rng = np.random.default_rng(seed)
    maps = {s.id: (s.load_mask() + rng.integers(0, 4, (32, 32)) / 3).astype(np.float32) for s in dataset.test}
    scores = {i: float(m.max()) for i, m in maps.items()}
    return write_predictions(out, scores, maps, {"method": f"quantised-{seed}",
                                                 "manifest_sha256": dataset.manifest_sha256})


def test_a_split_without_good_test_images_gets_the_pixel_metrics_by_definition(localization, tmp_path):
    assert all(s.is_defect for s in localization.test)
    predictions = load_predictions(quantised_predictions(localization, tmp_path / "p", 0))
    result = evaluate(localization, predictions, bootstrap_samples=50)
    masks = [s.load_mask() for s in localization.test]
    maps = [predictions.load_map(s.id) for s in localization.test]
    labels, scores = np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps])
    # False positives are the normal pixels of the defect images themselves.
    assert result["metrics"]["pixel_auroc"] == pytest.approx(brute_auroc(labels, scores), abs=1e-12)
    assert result["metrics"]["pixel_f1_max"] == pytest.approx(brute_f1_max(labels, scores)[0], abs=1e-12)
    assert result["metrics"]["pixel_pro_30"] == pytest.approx(brute_pro(masks, maps, 0.3), abs=1e-12)
    assert set(result["metrics"]) == {"pixel_auroc", "pixel_pro_30", "pixel_f1_max"}
    assert set(result["ci95"]) == set(result["metrics"]) and result["bootstrap"]["unit"] == "photo group"
    assert result["image_level"] is False and IMAGE_METRICS_UNDEFINED in format_table_of(result)


def format_table_of(result):
    from impeller_bench.evaluation.evaluate import format_table

    return format_table(result)


def test_evaluate_and_compare_commands_accept_a_localization_track(localization, tmp_path):
    a, b = quantised_predictions(localization, tmp_path / "a", 1), quantised_predictions(localization, tmp_path / "b", 2)
    shown = CliRunner().invoke(main, ["evaluate", str(a), "--dataset", str(localization.root), "--bootstrap", "20"])
    assert shown.exit_code == 0, shown.output
    assert "image metrics: not defined (no good test images)" in shown.output and "pixel_pro_30" in shown.output
    assert "image_auroc" not in json.loads((a / "metrics.json").read_text())["metrics"]
    difference = compare(localization, load_predictions(a), load_predictions(b), bootstrap_samples=20)
    assert set(difference["difference"]) == {"pixel_auroc", "pixel_pro_30", "pixel_f1_max"}
    compared = CliRunner().invoke(main, ["compare", str(a), str(b), "--dataset", str(localization.root),
                                         "--bootstrap", "20"])
    assert compared.exit_code == 0, compared.output
    assert f"B minus A: B = quantised-2 ({b}), A = quantised-1 ({a})" in compared.output
    assert "image metrics: not defined (no good test images)" in compared.output


def test_good_test_images_without_a_defect_image_stay_an_error(synthetic_dataset, tmp_path):
    root = tmp_path / "goods-only"
    write_synthetic(root, train_good=3, test_good=4, test_defect=0, size=32, seed=4)
    dataset = load_dataset(root)
    predictions = load_predictions(quantised_predictions(dataset, tmp_path / "p", 0))
    with pytest.raises(Exception, match="no defect"):
        evaluate(dataset, predictions)


def test_the_image_level_cue_check_fails_a_track_whose_darker_photos_hold_the_larger_defects():
    """(d): with no good test images, a whole-image cue helps only through the defect share. Defect photos that
    are all darker than the training photos (separable, yet no help) pass; defect photos whose darkness grows
    with their defect's size hand a brightness-reading detector the pixel ranking, and fail."""
    rng = np.random.default_rng(0)

    def photo(level, side=0):
        image = np.clip(rng.normal(level, 6, (48, 48)), 0, 255).astype(np.uint8)
        mask = np.zeros((48, 48), bool)
        mask[4:4 + side, 4:4 + side] = True
        return image, mask

    train = [AuditImage(photo(150)[0], TRAIN_GOOD, "s", k) for k in range(24)]

    def defects(darker_when_larger):
        images = []
        for k in range(30):
            side = 2 + k % 10
            image, mask = photo(150 - 4 * side if darker_when_larger else 120, side)
            images.append(AuditImage(image, TEST_DEFECT, "s", 100 + k, mask))
        return images

    honest = audit_images(train + defects(False), seed=0, features=False)
    planted = audit_images(train + defects(True), seed=0, features=False)
    cue = lambda result: next(s for s in result.separability if s.check == "(d)")
    apart = lambda result: next(s for s in result.separability if s.informational)
    # taken apart (its own verdict: separable), reported for information only: the audit passes
    assert apart(honest).auroc > 0.95 and not apart(honest).passed and apart(honest).informational
    assert honest.passed and cue(honest).auroc < 0.55
    assert not planted.passed and cue(planted).auroc >= 0.6
    assert apart(planted).compare == "train good vs test defect"
    assert any("no good test images" in why for why in planted.not_applicable)
    assert "for information" in "\n".join(planted.lines()) and "(d) acquisition statistics and brightness" in \
        "\n".join(planted.lines())


# --------------------------------------------------------------------------- Magnetic Tile Defects


def write_tile(folder, stem, size, mask_values=None, seed=0):
    """A grey tile photo (JPEG) and its grey mask (PNG): ``mask_values`` (grey levels drawn in a square) or none."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = size
    texture = np.random.default_rng(seed).normal(120, 12, (height, width)).clip(0, 255).astype(np.uint8)
    Image.fromarray(texture).save(folder / f"{stem}.jpg", quality=95)
    mask = np.zeros((height, width), np.uint8)
    if mask_values is not None:
        inner, edge = mask_values  # a core and an anti-aliased rim around it
        mask[8:20, 10:24] = edge
        mask[10:18, 12:22] = inner
    Image.fromarray(mask).save(folder / f"{stem}.png")


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """MTD's layout: 8 defect-free tiles under 3 lightings each (capture numbers 20 apart, 1,000 between
    tiles, each photo its own texture: nothing but the numbers says which are one tile), 4 cracked tiles (one
    whose mask stays under the threshold), the first cracked tile also under a second lighting where it was
    filed as defect-free; sizes not square."""
    root = tmp_path_factory.mktemp("mtd") / "magnetic-tile"
    for tile in range(8):
        for light in range(3):
            write_tile(root / "MT_Free" / "Imgs", f"exp{light + 1}_num_{1000 * tile + 20 * light}", (40, 56),
                       seed=10 * tile + light)
    for tile in range(4):
        values = (100, 60) if tile == 3 else (255, 90)  # the last: grey levels only, none at 128 or above
        write_tile(root / "MT_Crack" / "Imgs", f"exp1_num_{50_000 + 1000 * tile}", (48, 36), values, seed=100 + tile)
    write_tile(root / "MT_Free" / "Imgs", "exp2_num_50020", (48, 36), seed=200)
    return root


def test_mtd_masks_are_thresholded_and_a_mask_under_the_threshold_is_left_out(tiles):
    records, findings = build.read_sources(mtd=[tiles])
    cracks = sorted((r for r in records if r.label == "defect"), key=lambda r: r.relpath)
    assert len(cracks) == 3 and all(r.defect_classes == ("crack",) for r in cracks)
    expected = np.zeros((48, 36), bool)
    expected[10:18, 12:22] = True  # the 255 core; the grey rim (90) is under 128
    for record in cracks:
        np.testing.assert_array_equal(record.defect_mask, expected)
    empty = [f for f in findings if f.code == "empty-mask"]
    assert [f.path for f in empty] == ["magnetic-tile/MT_Crack/Imgs/exp1_num_53000.jpg"]
    assert empty[0].severity == "error" and "threshold 128" in empty[0].message
    grey = next(f for f in findings if f.code == "mask-grey-levels")
    assert "4 of 29 masks hold grey levels between 1 and 254" in grey.message and "thresholded at 128" in grey.message
    assert "not square" in next(f for f in findings if f.code == "image-sizes").message
    assert {r.session for r in records} == {"exp1", "exp2", "exp3"}


def test_a_tiles_lightings_are_one_capture_series():
    stems = ["exp1_num_100", "exp2_num_130", "exp3_num_150", "exp1_num_900", "exp2_num_910", "exp4_num_1101",
             "other_name"]
    series = mtd.capture_series(stems, "mtd")
    assert series[0] == series[1] == series[2] != series[3]
    assert series[3] == series[4] == series[5]  # 191 above the last: within CAPTURE_GAP
    assert series[6] is None


def test_build_split_imports_mtd_by_photo_group_and_records_the_threshold(tiles, tmp_path):
    out = tmp_path / "mtd"
    result = CliRunner().invoke(main, ["build-split", "--mtd", str(tiles), "--out", str(out), "--test-good-share", "0.25",
                                       "--size", "native", "--no-balance", "--no-audit", "--name", "mtd-mini"])
    assert result.exit_code == 0, result.output
    assert "exp1_num_53000.jpg: defect image whose mask keeps no pixel at threshold 128" in result.output
    assert "shortcut audit: not run (--no-audit)" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["build"]["source_mask_threshold"] == 128 and manifest["build"]["defect_classes"] == ["crack"]
    assert manifest["build"]["protocol"]["test_good_share"] == 0.25
    entries = manifest["entries"]
    members: dict[int, set] = {}
    for entry in entries:
        members.setdefault(entry["group"], set()).add((entry["split"], int(entry["source_path"].split("_")[-1][:-4]) // 1000))
        assert entry["session"].startswith("exp")
    # one group per tile (its capture numbers' thousands), each on one side
    assert sorted(len({tile for _, tile in m}) for m in members.values()) == [1] * len(members)
    assert all(len({side for side, _ in m}) == 1 for m in members.values())
    goods = [e for e in entries if e["label"] == "good"]
    assert sum(e["split"] == "test" for e in goods) == 6 and len(goods) == 24  # 2 of 8 tiles, whole
    defect = next(e for e in entries if e["label"] == "defect")
    assert Image.open(out / defect["file"]).size == (36, 48)  # own size, original bytes
    expected = np.zeros((48, 36), bool)
    expected[10:18, 12:22] = True
    np.testing.assert_array_equal(read_mask(out / defect["mask"]), expected)
    report = json.loads((out / "build_report.json").read_text())
    assert list(report["excluded"]) == ["magnetic-tile/MT_Crack/Imgs/exp1_num_53000.jpg"]
    # the cracked tile's defect-free lighting is the same tile: on neither side
    assert list(report["left_out"]) == ["magnetic-tile/MT_Free/Imgs/exp2_num_50020.jpg"]
    assert report["grouping"]["capture_joins"] == 8 * 2 + 1 and report["grouping"]["content_matches"] == 0
    again = tmp_path / "again"
    assert CliRunner().invoke(main, ["build-split", "--mtd", str(tiles), "--out", str(again), "--split",
                                     str(out / "manifest.json"), "--no-audit"]).exit_code == 0
    assert (again / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()


def test_a_matching_that_keeps_no_defect_says_so(tiles, tmp_path):
    result = CliRunner().invoke(main, ["build-split", "--mtd", str(tiles), "--out", str(tmp_path / "x"),
                                       "--test-good-share", "0.25", "--size", "native", "--no-audit"])
    assert result.exit_code == 2 and "the matching kept none of the 3 candidate test defects" in result.output
    assert not (tmp_path / "x").exists()


def test_test_good_share_refuses_the_counts_it_replaces(tiles, tmp_path):
    result = CliRunner().invoke(main, ["build-split", "--mtd", str(tiles), "--out", str(tmp_path / "x"),
                                       "--test-good-share", "0.2", "--test-good", "5"])
    assert result.exit_code == 2 and "--test-good: --test-good-share decides the counts itself" in result.output
    assert result.output.rstrip().endswith("drop it")
    assert not (tmp_path / "x").exists()


def test_images_of_several_sizes_get_maps_at_their_own_size(tiles):
    from impeller_bench import detectors
    from impeller_bench.inspection.runner import score_in_chunks

    records, _ = build.read_sources(mtd=[tiles])
    images = [np.asarray(Image.open(r.path)) for r in records[:2] + records[-2:]]
    detector = detectors.create("padim", device="cpu", image_size=64)
    detector.fit([np.asarray(Image.open(r.path)) for r in records if r.label == "good"][:6])
    scores, maps = score_in_chunks(detector, images)
    assert [m.shape for m in maps] == [i.shape for i in images] and len({i.shape for i in images}) == 2
    alone = detector.score_images(images[-1:])
    np.testing.assert_allclose(maps[-1], alone[1][0], rtol=1e-6)


def test_validate_reports_the_mtd_quirks_and_passes_what_build_split_handles(tiles):
    result = CliRunner().invoke(main, ["validate", str(tiles)])
    assert result.exit_code == 0, result.output
    assert "warning: magnetic-tile/MT_Crack/Imgs/exp1_num_53000.jpg: defect image whose mask keeps no pixel at " \
           "threshold 128" in result.output and "handled by build-split" in result.output
    assert "masks hold grey levels between 1 and 254" in result.output and "not square" in result.output
