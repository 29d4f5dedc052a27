"""The benchmark built from the real shared sources (../shared/data): fails, not skips, in CI."""
import base64
import io
import json
import shutil
import zlib
from collections import Counter

import numpy as np
from click.testing import CliRunner
from conftest import KAGGLE, MAGNETIC_TILE, REPO, SUPERVISELY, needs_shared_data
from PIL import Image

from impeller_bench.cli import main
from impeller_bench.common.files import sha256_file
from impeller_bench.common.imageio import read_mask
from impeller_bench.data import build, scanning, selection

pytestmark = needs_shared_data
PUBLISHED = REPO / "annotations" / "impeller-v1.json"
PUBLISHED_IMAGE_LEVEL = REPO / "annotations" / "impeller-v1-kaggle-test.json"
V2_NATIVE = REPO / "annotations" / "impeller-v2-native.json"
V2_LOCALIZATION = REPO / "annotations" / "impeller-v2-localization.json"
MTD = REPO / "annotations" / "mtd.json"


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def union_of_defect_bitmaps(ann_path):
    """Straight from the Supervisely JSON: base64 -> zlib -> PNG, alpha > 0, pasted at origin [x, y]."""
    ann = json.loads(ann_path.read_text())
    mask = np.zeros((ann["size"]["height"], ann["size"]["width"]), bool)
    for obj in ann["objects"]:
        if obj["classTitle"] in ("holes", "chipping", "deburring"):
            png = Image.open(io.BytesIO(zlib.decompress(base64.b64decode(obj["bitmap"]["data"]))))
            alpha = np.asarray(png.convert("RGBA"))[..., 3] > 0
            x, y = obj["bitmap"]["origin"]
            mask[y : y + alpha.shape[0], x : x + alpha.shape[1]] |= alpha
    return mask


def test_native_build_masks_are_the_union_of_the_annotated_bitmaps(shared_data, tmp_path):
    out = tmp_path / "D"
    result = run("build-split", "--supervisely", SUPERVISELY, "--out", out, "--train-good", 40, "--test-good", 25,
                 "--test-defect", 100, "--seed", 0, "--size", "native", "--no-registration", "--no-balance", "--no-audit")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    counts = Counter((e["split"], e["label"]) for e in manifest["entries"])
    assert counts == {("train", "good"): 40, ("test", "good"): 25, ("test", "defect"): 100}
    for folder in ("train/good", "test/good", "test/defect", "ground_truth/defect", "foreground"):
        assert (out / folder).is_dir()
    for entry in manifest["entries"]:
        assert sha256_file(out / entry["file"]) == entry["source_sha256"]  # native: the original bytes
        if entry["label"] == "defect":
            expected = union_of_defect_bitmaps(SUPERVISELY / "ann" / (entry["source_path"].split("/")[-1] + ".json"))
            np.testing.assert_array_equal(read_mask(out / entry["mask"]), expected, err_msg=entry["id"])
    assert "photo groups" in result.output and "left out: 7 image(s)" in result.output


def test_default_counts_from_the_annotated_source_alone_stop_and_write_nothing(shared_data, tmp_path):
    out = tmp_path / "D"
    result = CliRunner().invoke(main, ["build-split", "--supervisely", str(SUPERVISELY), "--out", str(out),
                                       "--no-registration"])
    assert result.exit_code == 2
    assert "asked for 400 train good" in result.output and "73 good images" in result.output
    assert "140 defect images with masks" in result.output
    assert not out.exists()


def test_default_split_from_both_sources_keeps_groups_whole_and_follows_the_seed(both_scanned):
    records, findings, scans, groups = both_scanned
    usable = selection.eligible(records, scans, findings)
    plans = {seed: selection.plan_split(records, scans, groups, usable, scanning.Counts(), seed) for seed in (0, 0, 1)}
    plan = selection.plan_split(records, scans, groups, usable, scanning.Counts(), 0)
    chosen = lambda p: [(records[s.record].source, records[s.record].relpath, s.split) for s in p.selected]
    assert chosen(plan) == chosen(plans[0])
    assert set(chosen(plan)) != set(chosen(plans[1]))
    for p in (plan, plans[1]):
        side_of = {}
        for s in p.selected:
            assert side_of.setdefault(s.group, s.split) == s.split
        # Also against every non-selected member: no test group may have any image in train.
        train_groups = {s.group for s in p.selected if s.split == "train"}
        test_groups = {s.group for s in p.selected if s.split == "test"}
        assert not train_groups & test_groups
        counts = Counter((s.split, s.label) for s in p.selected)
        assert counts == {("train", "good"): 400, ("test", "good"): 100, ("test", "defect"): 100}
        assert all(records[s.record].has_mask for s in p.selected if s.label == "defect")
    # The published split is exactly what seed 0 selects today.
    published = json.loads(PUBLISHED.read_text())
    assert sorted((e["source"], e["source_path"], e["split"]) for e in published["entries"]) == sorted(chosen(plan))
    report = build.build_report(records, findings, groups, usable, plan)
    assert report["grouping"]["exact_duplicate_pairs"] == 64
    assert report["grouping"]["groups"] < len(records)


def assert_rebuilt(out, published):
    assert (out / "manifest.json").read_bytes() == published.read_bytes()
    manifest = json.loads(published.read_text())
    for entry in manifest["entries"]:
        assert sha256_file(out / entry["file"]) == entry["sha256"]
        if entry["mask"]:
            assert sha256_file(out / entry["mask"]) == entry["mask_sha256"]
    return manifest


def test_published_split_rebuilds_byte_for_byte_and_fails_the_shortcut_audit(published_builds):
    out, result = published_builds("impeller-v1")
    # Written byte for byte, but it can be passed by recognising the source: exit code 1 and why.
    assert result.exit_code == 1, result.output
    assert "shortcut audit: FAIL" in result.output and "publish no number on it" in result.output
    assert_rebuilt(out, PUBLISHED)
    audit = json.loads((out / "build_report.json").read_text())["shortcut_audit"]
    assert not audit["source_mix"]["passed"] and audit["source_mix"]["shares"]["test good"] == {
        "casting-kaggle-300": 46, "casting-supervisely": 54}
    failed = {(c["measure"], c["compare"]) for c in audit["separability"] if not c["passed"]}
    assert ("pretrained features", "test good vs test defect") in failed and ("brightness", "test good vs test defect") in failed
    assert run("validate", out, "--no-audit").exit_code == 0  # its files are sound


def test_impeller_v2_native_rebuilds_byte_for_byte_and_passes_the_shortcut_audit(published_builds):
    out, result = published_builds("impeller-v2-native")
    assert result.exit_code == 0, result.output
    assert "shortcut audit: PASS" in result.output
    manifest = assert_rebuilt(out, V2_NATIVE)
    assert {e["source"] for e in manifest["entries"]} == {"casting-supervisely"}
    assert json.loads((REPO / "annotations" / "audits" / "impeller-v2-native.json").read_text())["passed"]
    assert run("validate", out).exit_code == 0


def test_impeller_v2_localization_rebuilds_byte_for_byte_with_its_audit_for_a_track_without_good_images(
        published_builds):
    out, result = published_builds("impeller-v2-localization")
    assert result.exit_code == 0, result.output
    assert "shortcut audit: PASS" in result.output and "not applicable" in result.output
    manifest = assert_rebuilt(out, V2_LOCALIZATION)
    counts = Counter((e["split"], e["label"]) for e in manifest["entries"])
    assert counts == {("train", "good"): 72, ("test", "defect"): 140}
    assert len({e["group"] for e in manifest["entries"] if e["split"] == "test"}) == 101
    train_groups = {e["group"] for e in manifest["entries"] if e["split"] == "train"}
    assert not train_groups & {e["group"] for e in manifest["entries"] if e["split"] == "test"}
    audit = json.loads((REPO / "annotations" / "audits" / "impeller-v2-localization.json").read_text())
    assert audit["passed"] and {s.get("check") for s in audit["separability"]} == {None, "(d)"}


def test_mtd_rebuilds_byte_for_byte_and_passes_the_shortcut_audit(published_builds):
    out, result = published_builds("mtd")
    assert result.exit_code == 0, result.output
    assert "shortcut audit: PASS" in result.output and "capture session" in result.output
    manifest = assert_rebuilt(out, MTD)
    counts = Counter((e["split"], e["label"]) for e in manifest["entries"])
    assert counts == {("train", "good"): 673, ("test", "good"): 172, ("test", "defect"): 222}
    assert manifest["build"]["source_mask_threshold"] == 128 and manifest["build"]["size"] == "native"
    sides = {}
    for e in manifest["entries"]:
        sides.setdefault(e["group"], set()).add(e["split"])
    assert all(len(s) == 1 for s in sides.values())  # no tile (its six lightings) on both sides
    sizes = {Image.open(out / e["file"]).size for e in manifest["entries"]}
    assert len(sizes) > 100 and any(w != h for w, h in sizes)  # each image at its own size
    assert run("validate", out, "--no-audit").exit_code == 0


# Kaggle variants of two annotated defect photos, and look-alike parts, as registration sorted them.
VARIANTS = {"img/cast_def_0_1359.jpeg": ["9125", "6356", "2529", "5491", "1711", "1723"],
            "img/cast_def_0_1087.jpeg": ["2321", "1154", "3299", "8478", "7551", "2758"]}
LOOK_ALIKES = ["1048", "8256", "4484"]  # best-registered at 0.974-0.989: other parts


def test_annotated_masks_are_carried_onto_their_kaggle_variants_only(shared_data):
    from impeller_bench.data.transfer import find_transfers

    originals = [r for r in build.read_sources(supervisely=[SUPERVISELY])[0] if r.relpath in VARIANTS]
    kaggle = {r.relpath: r for r in build.read_sources(kaggle=[KAGGLE])[0]}
    stems = [n for names in VARIANTS.values() for n in names] + LOOK_ALIKES
    candidates = [kaggle[f"train/def_front/cast_def_0_{stem}.jpeg"] for stem in stems]
    pool = originals + candidates
    scans, _ = scanning.scan(pool)
    tried = find_transfers(pool, [s.fingerprint for s in scans], [0, 1], list(range(2, len(pool))),
                           per_original=len(candidates))
    for k, original in enumerate(originals):
        kept = {pool[t.variant].stem.rsplit("_", 1)[-1] for t in tried if t.original == k and t.accepted}
        assert kept == set(VARIANTS[original.relpath]), original.relpath
        for t in (t for t in tried if t.original == k and t.accepted):
            # Measured: correlation 0.9982-0.9989, area ratio 0.99-1.05, residual misalignment under 0.25 px.
            assert t.registration.correlation >= 0.997 and 0.9 <= t.area_ratio <= 1.1 and t.residual_shift <= 0.5
    rejected = {pool[t.variant].stem.rsplit("_", 1)[-1] for t in tried if not t.same_photo}
    assert set(LOOK_ALIKES) <= rejected


def test_seed_0_selects_impeller_v2_native(shared_data):
    """The annotated photos, grouped with registration, planned for seed 0: the published split.

    Train good and test good, and the candidate test defects, are exact. The matched test defects come from
    pretrained features, whose float32 sums differ a little between CPUs; most of them must agree.
    """
    records, findings = build.read_sources(supervisely=[SUPERVISELY])
    scans, more = scanning.scan(records)
    usable = selection.eligible(records, scans, findings + more)
    groups = scanning.group_photos(records, scans)
    published = json.loads(V2_NATIVE.read_text())
    b = published["build"]
    plan = selection.plan_split(records, scans, groups, usable, scanning.Counts(b["train_good"], b["test_good"], None), seed=0)
    chosen = lambda p, label: {(records[s.record].relpath, s.split) for s in p.selected if s.label == label}
    wanted = lambda label: {(e["source_path"], e["split"]) for e in published["entries"] if e["label"] == label}
    assert chosen(plan, "good") == wanted("good")
    assert wanted("defect") <= chosen(plan, "defect")
    matched = selection.balance_test_defects(records, plan, b["size"])
    assert len(chosen(matched, "defect") & wanted("defect")) >= 0.9 * len(wanted("defect"))
    # The localization track from the same photo groups: every good group that holds no defect photo trains,
    # every defect photo with a mask tests (no matching: exact).
    localization = selection.plan_split(records, scans, groups, usable, scanning.Counts(None, 0, None), seed=0)
    published = json.loads(V2_LOCALIZATION.read_text())
    assert {(records[s.record].relpath, s.split, s.label) for s in localization.selected} == {
        (e["source_path"], e["split"], e["label"]) for e in published["entries"]}


def test_seed_0_selects_mtd(shared_data):
    """Magnetic Tile Defects grouped into capture series, DifferNet's share drawn by photo group for seed 0: the
    published split. Train and test goods are exact; the matched test defects come from pretrained features
    (float32 sums differ a little between CPUs), so most of them must agree."""
    records, findings = build.read_sources(mtd=[MAGNETIC_TILE])
    scans, more = scanning.scan(records)
    usable = selection.eligible(records, scans, findings + more)
    groups = scanning.group_photos(records, scans)
    published = json.loads(MTD.read_text())
    plan = selection.plan_by_group_share(records, groups, usable, published["build"]["protocol"]["test_good_share"], 0)
    chosen = lambda p, label: {(records[s.record].relpath, s.split) for s in p.selected if s.label == label}
    wanted = lambda label: {(e["source_path"], e["split"]) for e in published["entries"] if e["label"] == label}
    assert chosen(plan, "good") == wanted("good") and wanted("defect") <= chosen(plan, "defect")
    assert len(plan.notes["left_out"]) == 107
    matched = selection.balance_test_defects(records, plan, "native")
    assert len(chosen(matched, "defect") & wanted("defect")) >= 0.9 * len(wanted("defect"))


def test_published_image_level_split_rebuilds(shared_data, tmp_path):
    out = tmp_path / "kaggle-test"
    result = run("build-split", "--supervisely", SUPERVISELY, "--kaggle", KAGGLE, "--out", out,
                 "--split", PUBLISHED_IMAGE_LEVEL, "--no-audit")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    test = [e for e in manifest["entries"] if e["split"] == "test"]
    assert len(test) == 715 and Counter(e["label"] for e in test) == {"good": 262, "defect": 453}
    assert manifest["build"]["pixel_masks"] is False
    train = [e["source_path"] for e in manifest["entries"] if e["split"] == "train"]
    impeller_v1 = json.loads(PUBLISHED.read_text())
    assert train == [e["source_path"] for e in impeller_v1["entries"] if e["split"] == "train"]
    assert run("validate", out, "--no-audit").exit_code == 0


def test_rebuild_names_every_source_file_whose_checksum_differs(shared_data, tmp_path):
    copy = tmp_path / "casting-supervisely"
    shutil.copytree(SUPERVISELY, copy)
    manifest = json.loads(PUBLISHED.read_text())
    victims = [e["source_path"] for e in manifest["entries"] if e["source"] == "casting-supervisely"][:2]
    for rel in victims:
        (copy / rel).chmod(0o644)
        (copy / rel).write_bytes((copy / rel).read_bytes()[:-10])
    out = tmp_path / "never"
    result = CliRunner().invoke(main, ["build-split", "--supervisely", str(copy), "--kaggle", str(KAGGLE),
                                       "--out", str(out), "--split", str(PUBLISHED)])
    assert result.exit_code == 2
    assert all(rel in result.output for rel in victims) and "2 source file(s) do not match" in result.output
    assert not out.exists()


KNOWN_QUIRKS = {
    # cast_def_* without any defect object
    ("name-contradicts-objects", "cast_def_0_2917.jpeg"), ("name-contradicts-objects", "cast_def_0_9995.jpeg"),
    # cast_ok_* carrying defect objects (their "good" tags contradict the objects too)
    *{(code, f"cast_ok_0_{n}.jpeg") for n in (2351, 2720, 3138, 5548, 6418)
      for code in ("name-contradicts-objects", "tag-contradicts-objects")},
    ("tag-contradicts-objects", "cast_def_0_9995.jpeg"),
    ("missing-tag", "cast_def_0_7275.jpeg"),
    ("tag-contradicts-name", "cast_def_0_2917.jpeg"),
}


def test_validate_reports_every_known_quirk_of_the_annotated_source(shared_data):
    result = CliRunner().invoke(main, ["validate", str(SUPERVISELY), "--json"])
    assert result.exit_code == 0  # build-split handles each quirk (tests/test_dataset_checks.py)
    report = json.loads(result.output[result.output.index("{"):])
    found = {(f["code"], f["path"].split("/")[-1]) for f in report["findings"]}
    assert KNOWN_QUIRKS <= found
    assert {c for c, _ in found} <= {c for c, _ in KNOWN_QUIRKS} | {"tiny-region"}


def test_validate_notes_the_kaggle_duplicates_and_reused_names(shared_data):
    result = CliRunner().invoke(main, ["validate", str(KAGGLE), "--json"])
    assert result.exit_code == 0
    report = json.loads(result.output[result.output.index("{"):])
    assert report["counts"]["exact-duplicate"] == 64
    assert report["counts"]["name-reused"] > 0
