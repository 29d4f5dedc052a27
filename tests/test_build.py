"""The split builder on synthetic sources: selection, determinism, group integrity, writing, rebuilding."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from impeller_bench.cli import main
from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.common.files import sha256_file
from impeller_bench.common.imageio import encode_png, read_gray, read_mask
from impeller_bench.data import build, scanning, selection, writing
from impeller_bench.data.dataset import load_dataset


@pytest.fixture(scope="module")
def source_with_copies(synthetic_dataset, tmp_path_factory):
    """The synthetic dataset as an MVTec-layout source, plus turned and byte-identical copies of some goods."""
    root = tmp_path_factory.mktemp("src") / "synthetic-source"
    shutil.copytree(synthetic_dataset, root)
    goods = sorted((root / "train" / "good").iterdir())
    for k, path in enumerate(goods[:4]):
        image = read_gray(path)
        (root / "train" / "good" / f"turned_{k}.png").write_bytes(encode_png(np.rot90(image, k + 1).copy()))
        shutil.copyfile(path, root / "test" / "good" / f"copy_{k}.png")
    return root


@pytest.fixture(scope="module")
def grouped(source_with_copies):
    """Records, scans, photo groups (fingerprints and registration) and usable flags of the source."""
    records, findings = build.read_sources(mvtec=[source_with_copies])
    scans, more = scanning.scan(records)
    return records, scans, scanning.group_photos(records, scans), selection.eligible(records, scans, findings + more)


def plan_for(grouped, counts, seed):
    records, scans, groups, usable = grouped
    return records, groups, selection.plan_split(records, scans, groups, usable, counts, seed)


COUNTS = scanning.Counts(train_good=10, test_good=5, test_defect=5)
# Options for builds whose subject is not the photo grouping's registration nor the shortcut audit.
FAST = {"register": False, "audit": False, "balance": False}


def test_variants_and_copies_are_one_group_never_split(grouped):
    records, groups, _ = plan_for(grouped, COUNTS, 0)
    assert groups.n_groups == len(records) - 8  # four turned copies and four byte-identical copies joined
    assert groups.registered_pairs > 0 and not groups.registration_matches  # other synthetic parts are other photos
    for seed in range(6):
        _, groups, plan = plan_for(grouped, COUNTS, seed)
        side = {}
        for s in plan.selected:
            assert side.setdefault(s.group, s.split) == s.split, f"group {s.group} on both sides (seed {seed})"
        assert [sum(s.split == sp and s.label == lb for s in plan.selected) for sp, lb in
                (("train", "good"), ("test", "good"), ("test", "defect"))] == [10, 5, 5]


def test_same_seed_same_manifest_other_seed_other_selection(source_with_copies, tmp_path):
    kwargs = dict(mvtec=[source_with_copies], counts=COUNTS, size=64, **FAST)
    first, _ = build.build_split(tmp_path / "a", seed=1, **kwargs)
    again, _ = build.build_split(tmp_path / "b", seed=1, **kwargs)
    other, _ = build.build_split(tmp_path / "c", seed=2, **kwargs)
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    assert {e["source_path"] for e in first["entries"]} != {e["source_path"] for e in other["entries"]}


def test_written_layout_matches_manifest(source_with_copies, tmp_path):
    manifest, report = build.build_split(tmp_path / "d", mvtec=[source_with_copies], counts=COUNTS, size=64, seed=0)
    root = tmp_path / "d"
    assert manifest["build"]["registration"] is True and manifest["build"]["bootstrap_unit"] == "group"
    assert report["shortcut_audit"]["source_mix"]["passed"] and "passed" in report["shortcut_audit"]
    assert json.loads((root / "build_report.json").read_text())["shortcut_audit"] == report["shortcut_audit"]
    for entry in manifest["entries"]:
        assert sha256_file(root / entry["file"]) == entry["sha256"]
        image = read_gray(root / entry["file"])
        assert image.shape == (64, 64)
        if entry["label"] == "defect":
            mask = read_mask(root / entry["mask"])
            assert mask.shape == image.shape and mask.sum() == entry["defect_area"] > 0
            assert entry["mask"] == f"ground_truth/defect/{entry['id'].split('/')[-1]}_mask.png"
            assert sha256_file(root / entry["mask"]) == entry["mask_sha256"]
        else:
            assert entry["mask"] is None
    dataset = load_dataset(root)
    # Test defects are matched to the test goods: at most two per good image, at most the 5 asked for.
    kept = report["matching"]["kept"]
    assert 1 <= kept <= 5 and report["matching"]["candidate_test_defects"] == 8
    assert (len(dataset.train), len(dataset.test)) == (10, 5 + kept)
    assert report["selected"] == {"train_good": 10, "test_good": 5, "test_defect": kept}
    assert manifest["build"]["test_defect"] == kept and manifest["build"]["matched_test_defects"] is True


def test_native_size_copies_the_source_bytes(source_with_copies, tmp_path):
    manifest, _ = build.build_split(tmp_path / "n", mvtec=[source_with_copies], counts=COUNTS, size="native", seed=0, **FAST)
    for entry in manifest["entries"]:
        assert entry["sha256"] == entry["source_sha256"]


def test_too_few_images_stops_with_the_counts_and_writes_nothing(source_with_copies, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ImpellerBenchError) as info:
        build.build_split(out, mvtec=[source_with_copies], counts=scanning.Counts(400, 100, 100), size=64, **FAST)
    message = str(info.value)
    assert "asked for 400 train good, 100 test good, 100 test defect" in message
    assert "8 defect images with masks" in message and "Nothing was written" in message
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_nothing(source_with_copies, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = writing.render

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(writing, "render", failing)
    with pytest.raises(KeyboardInterrupt):
        build.build_split(tmp_path / "x", mvtec=[source_with_copies], counts=COUNTS, size=64, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_split_file_rebuilds_byte_for_byte_and_names_changed_files(source_with_copies, tmp_path):
    original, _ = build.build_split(tmp_path / "orig", mvtec=[source_with_copies], counts=COUNTS, size=64, seed=4,
                                    name="toy-v1", **FAST)
    split_file = tmp_path / "toy-v1.json"
    shutil.copyfile(tmp_path / "orig" / "manifest.json", split_file)
    build.build_split(tmp_path / "again", mvtec=[source_with_copies], split_file=split_file, audit=False)
    for entry in original["entries"]:
        for key in ("file", "mask", "foreground"):
            if entry[key]:
                assert (tmp_path / "again" / entry[key]).read_bytes() == (tmp_path / "orig" / entry[key]).read_bytes()
    assert (tmp_path / "again" / "manifest.json").read_bytes() == split_file.read_bytes()

    # What the split file decides cannot be given beside it.
    clash = CliRunner().invoke(main, ["build-split", "--mvtec", str(source_with_copies), "--split", str(split_file),
                                      "--out", str(tmp_path / "clash"), "--size", "32", "--seed", "3"])
    assert clash.exit_code == 2 and "--seed, --size: --split takes these from the split file" in clash.output
    assert not (tmp_path / "clash").exists()

    tampered_source = tmp_path / "tampered" / source_with_copies.name
    shutil.copytree(source_with_copies, tampered_source)
    victims = [e["source_path"] for e in original["entries"][:2]]
    for rel in victims:
        (tampered_source / rel).write_bytes((tampered_source / rel).read_bytes() + b"\0")
    with pytest.raises(ImpellerBenchError) as info:
        build.build_split(tmp_path / "bad", mvtec=[tampered_source], split_file=split_file, audit=False)
    assert all(rel in str(info.value) for rel in victims) and "sha256" in str(info.value)
    assert not (tmp_path / "bad").exists()


def test_plan_is_spread_over_brightness(grouped):
    records, _, plan = plan_for(grouped, COUNTS, 0)
    train = [s.record for s in plan.selected if s.split == "train"]
    brightness = [read_gray(records[i].path).mean() for i in train]
    all_good = [read_gray(r.path).mean() for r in records if r.label == "good"]
    # A systematic sample over brightness bands reaches both ends of the range.
    assert min(brightness) <= np.quantile(all_good, 0.3) and max(brightness) >= np.quantile(all_good, 0.7)


def test_region_classes_follow_the_class_masks():
    from impeller_bench.data.writing import region_classes

    mask = np.zeros((8, 8), bool)
    hole, chip = mask.copy(), mask.copy()
    hole[0:2, 0:2] = True  # region 1 (raster order): holes only
    chip[5:7, 5:7] = True  # region 2: chipping, and a hole touching it diagonally joins it
    hole[4, 4] = True
    union = hole | chip
    assert region_classes(union, {"holes": hole, "chipping": chip}, ("chipping", "holes")) == [
        ["holes"], ["chipping", "holes"]]
    assert region_classes(union, None, ("holes", "spots")) == [["holes", "spots"], ["holes", "spots"]]
