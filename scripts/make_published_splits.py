"""Make the published split files in annotations/ from the two shared sources, and their shortcut audits.

    python scripts/make_published_splits.py ../shared/data/casting-supervisely ../shared/data/casting-kaggle-300
    python scripts/make_published_splits.py --audits-only data     # audit the splits built under data/

Writes, each the manifest of the dataset it describes (``impeller-bench
build-split --split FILE ...`` rebuilds it byte for byte):

- ``impeller-v2-native.json``: the annotated 512x512 photos alone, as many as
  the photo groups allow: the good photos split between train and test by
  photo group, and the defect photos matched to the test goods on
  defect-blind measures (``build.balance_test_defects``); 256x256.
- ``impeller-v1.json`` and ``impeller-v1-kaggle-test.json``: the deprecated
  splits (both sources mixed: a source shortcut), made as they always were
  (fingerprint grouping only), for reproducibility.

And ``annotations/audits/<split>.json``: the shortcut audit of each split with
pixel masks. About a quarter of an hour on two cores.

The Kaggle-only split (``build-split --kaggle ... --mask-source ...``, 400 /
100 / 100) is not published: it fails the audit (dataset_card.md).
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from impeller_bench import build
from impeller_bench.audit import audit_dataset
from impeller_bench.cli import _progress
from impeller_bench.data import load_dataset
from impeller_bench.sources.supervisely import DEFAULT_DEFECT_CLASSES

ANNOTATIONS = Path(__file__).resolve().parent.parent / "annotations"
V2_NATIVE_TEST_GOOD = 30  # of the annotated source's 73 usable good photos (in 31 photo groups)
# What build-split records by default for a new selection: registration joins, no source mix, bootstrap over
# photo groups, test defects matched to the test goods.
V2_OPTIONS = {"registration": True, "allow_source_mix": False, "bootstrap_unit": "group", "matched_test_defects": True}
AUDITED = ("impeller-v2-native", "impeller-v1")


def write_audit(name: str, folder: Path) -> None:
    result = audit_dataset(load_dataset(folder), progress=_progress)
    (ANNOTATIONS / "audits").mkdir(exist_ok=True)
    (ANNOTATIONS / "audits" / f"{name}.json").write_text(json.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n")
    print("\n".join([f"{name}:"] + result.lines()))


def write(name: str, records, plan, tmp: Path, **options) -> None:
    out = tmp / name
    build.write_dataset(out, records, plan, name=name, size=256, defect_classes=DEFAULT_DEFECT_CLASSES,
                        progress=_progress, **options)
    shutil.copyfile(out / "manifest.json", ANNOTATIONS / f"{name}.json")
    print(f"wrote annotations/{name}.json")
    if name in AUDITED:
        write_audit(name, out)


def main(supervisely: str, kaggle: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # impeller-v2-native: the annotated photos alone.
        records, findings = build.read_sources([supervisely])
        scans, more = build.scan(records, _progress)
        usable = build.eligible(records, scans, findings + more)
        groups = build.group_photos(records, scans, progress=_progress)
        plan = build.plan_split(records, scans, groups, usable, build.Counts(None, V2_NATIVE_TEST_GOOD, None), seed=0)
        plan = build.balance_test_defects(records, plan, 256, None, _progress)
        print("matching:", plan.notes["matching"])
        write("impeller-v2-native", records, plan, tmp, options=V2_OPTIONS)

        # impeller-v1 (deprecated), exactly as it was made.
        records, findings = build.read_sources([supervisely], [kaggle])
        scans, more = build.scan(records, _progress)
        usable = build.eligible(records, scans, findings + more)
        groups = build.group_photos(records, scans, register=False, progress=_progress)
        plan = build.plan_split(records, scans, groups, usable, build.Counts(400, 100, 100), seed=0)
        image_plan = build.plan_image_level(records, groups, usable, plan, Path(kaggle).name, "test/")
        print(f"Kaggle test images sharing a photo group with the training images: "
              f"{image_plan.notes['test_images_sharing_a_group_with_train']} of "
              f"{sum(s.split == 'test' for s in image_plan.selected)}")
        write("impeller-v1", records, plan, tmp)
        write("impeller-v1-kaggle-test", records, image_plan, tmp)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--audits-only"]:
        for split in AUDITED:
            write_audit(split, Path(sys.argv[2]) / split)
    else:
        main(*sys.argv[1:3])
