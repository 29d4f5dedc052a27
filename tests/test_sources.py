"""Importers on hand-made folders whose right answers are known by construction."""
import base64
import io
import json
import zlib

import numpy as np
import pytest
from PIL import Image

from impeller_bench.common.imageio import encode_png
from impeller_bench.data.sources import detect_kind, kaggle, mvtec, supervisely
from impeller_bench.data.sources.records import DEFECT, GOOD


def bitmap_field(mask: np.ndarray, mode: str = "P") -> str:
    """Encode a mask the way Supervisely does: zlib-compressed PNG, base64; mask in alpha or the single channel."""
    if mode == "P":
        image = Image.fromarray(mask.astype(np.uint8), "L").convert("P")
        image.putpalette([0, 0, 0, 255, 255, 255])
        image.info["transparency"] = 0
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", transparency=0)
    elif mode == "RGBA":
        rgba = np.zeros(mask.shape + (4,), np.uint8)
        rgba[..., :3] = 200  # colour everywhere: only alpha may decide
        rgba[..., 3] = mask * 255
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    else:
        buffer = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(buffer, format="PNG")
    return base64.b64encode(zlib.compress(buffer.getvalue())).decode()


def write_project(root, images):
    """images: name -> (array, tags, [(class, mask, (x, y), mode)])"""
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    for name, (array, tags, objects) in images.items():
        Image.fromarray(array).save(root / "img" / name, format="JPEG", quality=95)
        ann = {
            "size": {"height": array.shape[0], "width": array.shape[1]},
            "tags": [{"name": t} for t in tags],
            "objects": [
                {"classTitle": c, "geometryType": "bitmap", "bitmap": {"data": bitmap_field(m, mode), "origin": list(o)}}
                for c, m, o, mode in objects
            ],
        }
        (root / "ann" / f"{name}.json").write_text(json.dumps(ann))


def blob(h, w, seed):
    return np.random.default_rng(seed).random((h, w)) < 0.5


@pytest.fixture
def project(tmp_path):
    gray = np.full((40, 50), 120, np.uint8)
    hole, chip, burr, disk = blob(5, 6, 1), blob(4, 9, 2), blob(7, 3, 3), np.ones((30, 40), bool)
    images = {
        "cast_def_0_1.jpeg": (gray, ["bad"], [("disk", disk, (5, 4), "P"), ("holes", hole, (10, 12), "P"),
                                               ("chipping", chip, (41, 0), "RGBA"), ("deburring", burr, (0, 33), "L")]),
        "cast_ok_0_2.jpeg": (gray, ["good"], [("disk", disk, (5, 4), "P")]),
        "cast_ok_0_3.jpeg": (gray, ["good"], [("holes", hole, (1, 1), "P")]),  # name and tag say good
        "cast_def_0_4.jpeg": (gray, [], [("holes", hole, (47, 2), "P")]),  # no tag; bitmap past the right edge
        "cast_def_0_5.jpeg": (gray, ["good", "reviewd"], []),  # name says defect, no object
    }
    root = tmp_path / "proj"
    write_project(root, images)
    expected = np.zeros((40, 50), bool)
    expected[12:17, 10:16] |= hole
    expected[0:4, 41:50] |= chip
    expected[33:40, 0:3] |= burr
    foreground = np.zeros((40, 50), bool)
    foreground[4:34, 5:45] = True
    return root, expected, foreground


def codes_for(findings, name):
    return sorted(f.code for f in findings if f.path.endswith(name) and f.severity != "info")


def test_supervisely_union_of_defect_bitmaps_at_their_origins(project):
    root, expected, foreground = project
    records, findings = supervisely.read(root, min_region_area=1)
    by_name = {r.path.name: r for r in records}
    first = by_name["cast_def_0_1.jpeg"]
    assert first.label == DEFECT
    np.testing.assert_array_equal(first.defect_mask, expected)
    np.testing.assert_array_equal(first.foreground_mask, foreground)
    assert first.defect_classes == ("chipping", "deburring", "holes")
    assert by_name["cast_ok_0_2.jpeg"].label == GOOD and not by_name["cast_ok_0_2.jpeg"].defect_mask.any()
    assert codes_for(findings, "cast_def_0_1.jpeg") == []


def test_supervisely_defect_classes_are_configurable(project):
    root, *_ = project
    records, _ = supervisely.read(root, defect_classes=("holes",))
    first = next(r for r in records if r.path.name == "cast_def_0_1.jpeg")
    assert first.defect_classes == ("holes",)
    assert first.defect_mask.sum() == blob(5, 6, 1).sum()


def test_supervisely_quirks_are_reported(project):
    root, *_ = project
    records, findings = supervisely.read(root)
    assert codes_for(findings, "cast_ok_0_3.jpeg") == ["name-contradicts-objects", "tag-contradicts-objects"]
    assert codes_for(findings, "cast_def_0_4.jpeg") == ["bitmap-outside-image", "missing-tag", "tiny-region"]
    assert codes_for(findings, "cast_def_0_5.jpeg") == ["name-contradicts-objects", "tag-contradicts-name"]
    assert "cast_def_0_4.jpeg" not in {r.path.name for r in records}  # a clipped mask is not trusted


def test_supervisely_corrupt_image_is_reported_not_fatal(project):
    root, *_ = project
    (root / "img" / "cast_ok_0_2.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    records, findings = supervisely.read(root)
    bad = [f for f in findings if f.code == "unreadable-image"]
    assert len(bad) == 1 and bad[0].path.endswith("img/cast_ok_0_2.jpeg")
    assert "cast_ok_0_2.jpeg" not in {r.path.name for r in records}


def test_kaggle_labels_duplicates_and_reused_names(tmp_path):
    root = tmp_path / "kaggle"
    a = encode_png(np.full((8, 8), 10, np.uint8))
    b = encode_png(np.full((8, 8), 20, np.uint8))
    for rel, data in {"train/ok_front/x_1.png": a, "train/ok_front/x_2.png": a, "test/ok_front/x_1.png": b,
                      "test/def_front/y_1.png": b}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    records, findings = kaggle.read(root)
    assert {r.relpath: r.label for r in records} == {
        "test/def_front/y_1.png": DEFECT, "test/ok_front/x_1.png": GOOD,
        "train/ok_front/x_1.png": GOOD, "train/ok_front/x_2.png": GOOD,
    }
    assert sorted(f.code for f in findings) == ["exact-duplicate", "exact-duplicate", "name-reused"]
    assert detect_kind(root) == "kaggle"


def test_mvtec_layout_reads_masks_and_classes(synthetic_dataset):
    records, findings = mvtec.read(synthetic_dataset)
    assert findings == []
    defects = [r for r in records if r.label == DEFECT]
    assert len(defects) == 8 and all(r.defect_mask is not None and r.defect_mask.any() for r in defects)
    assert {r.defect_classes for r in defects} == {("defect",)}
    assert sum(r.label == GOOD for r in records) == 12 + 6
    assert detect_kind(synthetic_dataset) == "mvtec"
