"""Masks carried from annotated originals onto re-processed variants in another source, end to end."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_registration import true_map, variant

from impeller_bench.cli import main
from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.common.files import sha256_file
from impeller_bench.common.imageio import encode_png, read_mask
from impeller_bench.data import build, scanning, synth
from impeller_bench.data.registration import Registration, transfer_mask

SIZE, VARIANT_SIZE = 256, 200
GOOD_PHOTOS, VARIANTS_PER_GOOD = 8, 3
DEFECT_PHOTOS, VARIANTS_PER_DEFECT = 5, 3


def pose(k):
    """The augmentation of variant k: rotation, mirror image, scale and shift differ from one variant to the next."""
    return true_map(37.0 * k + 11.0, k % 2 == 1, SIZE / VARIANT_SIZE * (1.0 + 0.04 * (k % 3)), (2.0 * (k % 3) - 2, 1.5),
                    SIZE, VARIANT_SIZE)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """An annotated MVTec-layout folder (originals with masks) and a Kaggle-layout folder of variants without masks.

    Returns (annotated root, variants root, {variant relpath: (original stem, true map)}).
    """
    root = tmp_path_factory.mktemp("transfer")
    annotated, variants = root / "annotated", root / "variants"
    for folder in ("train/good", "test/chipping", "ground_truth/chipping"):
        (annotated / folder).mkdir(parents=True)
    for folder in ("ok_front", "def_front"):
        (variants / folder).mkdir(parents=True)
    truth = {}
    for p in range(GOOD_PHOTOS):
        image = synth.impeller(np.random.default_rng([21, 0, p]), SIZE)[0]
        (annotated / "train" / "good" / f"good_{p}.png").write_bytes(encode_png(image))
        for k in range(VARIANTS_PER_GOOD):
            Image.fromarray(variant(image, pose(p + k), VARIANT_SIZE, quality=95)).save(variants / "ok_front" / f"ok_{p}_{k}.png")
    for p in range(DEFECT_PHOTOS + 2):
        image, mask, _, _ = synth.impeller(np.random.default_rng([21, 1, p]), SIZE, ("chipping", "holes"))
        if p < DEFECT_PHOTOS:  # the last two defect photos have no annotated original
            (annotated / "test" / "chipping" / f"def_{p}.png").write_bytes(encode_png(image))
            (annotated / "ground_truth" / "chipping" / f"def_{p}_mask.png").write_bytes(encode_png(mask))
        for k in range(VARIANTS_PER_DEFECT):
            affine = pose(p + k + 1)
            name = f"def_front/def_{p}_{k}.png"
            Image.fromarray(variant(image, affine, VARIANT_SIZE, quality=95)).save(variants / name)
            truth[name] = (f"def_{p}", affine)
    return annotated, variants, truth


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    annotated, variants, _ = sources
    out = tmp_path_factory.mktemp("built") / "carried"
    manifest, report = build.build_split(out, kaggle=[variants], mask_sources=[annotated], size=VARIANT_SIZE,
                                         counts=scanning.Counts(12, 6, 8), seed=0, balance=False, audit=False)
    return out, manifest, report


def test_every_test_defect_carries_its_originals_mask(sources, built):
    annotated, _, truth = sources
    out, manifest, report = built
    defects = [e for e in manifest["entries"] if e["label"] == "defect"]
    assert len(defects) == 8 and all(e["source"] == "variants" for e in manifest["entries"])
    for entry in defects:
        origin = entry["mask_source"]
        stem, affine = truth[entry["source_path"]]
        assert origin["source"] == "annotated" and origin["source_path"] == f"test/chipping/{stem}.png"
        assert origin["source_sha256"] == sha256_file(annotated / origin["source_path"])
        original_mask = read_mask(annotated / "ground_truth" / "chipping" / f"{stem}_mask.png")
        expected = transfer_mask(original_mask, Registration(tuple(affine.ravel()), 1, 0, 1, 1, 0, 1, 0),
                                 (VARIANT_SIZE, VARIANT_SIZE))
        got = read_mask(out / entry["mask"])
        assert (got & expected).sum() / (got | expected).sum() > 0.85, entry["id"]
        assert entry["defect_classes"] == ["chipping"] and origin["residual_shift"] <= 0.5
    t = report["mask_transfer"]
    assert t["annotated_defect_photos"] == DEFECT_PHOTOS and t["photos_with_a_variant"] == DEFECT_PHOTOS
    assert t["variants_with_masks"] == DEFECT_PHOTOS * VARIANTS_PER_DEFECT
    assert manifest["sources"]["annotated"]["kind"] == "mvtec" and "mask_transfer" in manifest["build"]


def test_variants_of_one_photo_share_a_group_and_stay_on_one_side(built):
    _, manifest, _ = built
    side_of, photo_groups = {}, {}
    for entry in manifest["entries"]:
        assert side_of.setdefault(entry["group"], entry["split"]) == entry["split"]
        photo = entry["source_path"].rsplit("_", 1)[0]
        photo_groups.setdefault(photo, set()).add(entry["group"])
    assert all(len(groups) == 1 for groups in photo_groups.values())
    defect_groups = [e["group"] for e in manifest["entries"] if e["label"] == "defect"]
    assert len(set(defect_groups)) == DEFECT_PHOTOS  # one round over the photos first, then a second variant


def test_the_split_file_rebuilds_the_carried_masks_byte_for_byte(sources, built, tmp_path):
    annotated, variants, _ = sources
    out, manifest, _ = built
    split_file = tmp_path / "carried.json"
    shutil.copyfile(out / "manifest.json", split_file)
    again, _ = build.build_split(tmp_path / "again", kaggle=[variants], mask_sources=[annotated], split_file=split_file,
                                 audit=False)
    assert (tmp_path / "again" / "manifest.json").read_bytes() == split_file.read_bytes()
    for entry in manifest["entries"]:
        if entry["mask"]:
            assert (tmp_path / "again" / entry["mask"]).read_bytes() == (out / entry["mask"]).read_bytes()
    # A changed original is named, and nothing is written.
    tampered = tmp_path / "tampered" / "annotated"
    shutil.copytree(annotated, tampered)
    victim = manifest["entries"][-1]["mask_source"]["source_path"]
    (tampered / victim).write_bytes((tampered / victim).read_bytes() + b"\0")
    with pytest.raises(ImpellerBenchError) as info:
        build.build_split(tmp_path / "bad", kaggle=[variants], mask_sources=[tampered], split_file=split_file,
                          audit=False)
    assert victim in str(info.value) and not (tmp_path / "bad").exists()


def test_a_selection_mixing_sources_is_refused_unless_allowed(tmp_path):
    defects_only, goods_only = tmp_path / "camera-a", tmp_path / "camera-b"
    for folder in (defects_only / "train/good", defects_only / "test/chipping", defects_only / "ground_truth/chipping",
                   goods_only / "train/good", goods_only / "test/good"):
        folder.mkdir(parents=True)
    for p in range(4):
        image, mask, _, _ = synth.impeller(np.random.default_rng([22, 1, p]), 96, ("chipping",))
        (defects_only / "test/chipping" / f"d{p}.png").write_bytes(encode_png(image))
        (defects_only / "ground_truth/chipping" / f"d{p}_mask.png").write_bytes(encode_png(mask))
    for p in range(10):
        image = synth.impeller(np.random.default_rng([22, 0, p]), 96)[0]
        (goods_only / "train/good" / f"g{p}.png").write_bytes(encode_png(image))
    kwargs = dict(mvtec=[defects_only, goods_only], size=64, counts=scanning.Counts(6, 4, 4), seed=0, balance=False,
                  audit=False, register=False)
    with pytest.raises(ImpellerBenchError) as info:
        build.build_split(tmp_path / "mixed", **kwargs)
    message = str(info.value)
    assert "different source mixes" in message and "Nothing was written" in message and "camera-a" in message
    assert not (tmp_path / "mixed").exists()
    manifest, report = build.build_split(tmp_path / "allowed", allow_source_mix=True, **kwargs)
    assert manifest["build"]["allow_source_mix"] is True and "FAIL" in report["source_mix"]
    assert json.loads((tmp_path / "allowed" / "manifest.json").read_text())["build"]["allow_source_mix"] is True
    # From the command line: written, but its audit fails, and the exit code says so.
    result = CliRunner().invoke(main, ["build-split", "--mvtec", str(defects_only), "--mvtec", str(goods_only),
                                       "--out", str(tmp_path / "cli"), "--size", "64", "--train-good", "6",
                                       "--test-good", "4", "--test-defect", "4", "--allow-source-mix",
                                       "--no-registration", "--no-balance"])
    assert result.exit_code == 1, result.output
    assert "shortcut audit: FAIL" in result.output and "publish no number on it" in result.output
    assert (tmp_path / "cli" / "manifest.json").is_file()
