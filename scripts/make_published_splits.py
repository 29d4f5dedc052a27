"""Make the published split files in annotations/ from the two shared sources.

    python scripts/make_published_splits.py ../shared/data/casting-supervisely ../shared/data/casting-kaggle-300

Writes annotations/impeller-v1.json (400 train good, 100 test good, 100 test
defect with masks; seed 0, size 256) and annotations/impeller-v1-kaggle-test.json
(the same training images; Kaggle's own test folder, 715 images, as the test
set, image-level only). Each is the manifest of the dataset it describes:
``impeller-bench build-split --split FILE ...`` rebuilds it byte for byte.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from impeller_bench import build
from impeller_bench.cli import _progress
from impeller_bench.sources.supervisely import DEFAULT_DEFECT_CLASSES

ANNOTATIONS = Path(__file__).resolve().parent.parent / "annotations"


def main(supervisely: str, kaggle: str) -> None:
    records, findings = build.read_sources([supervisely], [kaggle])
    scans, scan_findings = build.scan(records, _progress)
    findings += scan_findings
    groups = build.group_photos(records, scans, progress=_progress)
    usable = build.eligible(records, scans, findings)
    plan = build.plan_split(records, scans, groups, usable, build.Counts(400, 100, 100), seed=0)
    kaggle_name = Path(kaggle).name
    image_plan = build.plan_image_level(records, groups, usable, plan, kaggle_name, "test/")
    print(f"Kaggle test images sharing a photo group with the training images: "
          f"{image_plan.notes['test_images_sharing_a_group_with_train']} of "
          f"{sum(s.split == 'test' for s in image_plan.selected)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, p in (("impeller-v1", plan), ("impeller-v1-kaggle-test", image_plan)):
            out = Path(tmp) / name
            build.write_dataset(out, records, p, name=name, size=256, defect_classes=DEFAULT_DEFECT_CLASSES, progress=_progress)
            shutil.copyfile(out / "manifest.json", ANNOTATIONS / f"{name}.json")
            print(f"wrote annotations/{name}.json")


if __name__ == "__main__":
    main(*sys.argv[1:3])
