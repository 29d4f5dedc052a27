"""Make the published split files in annotations/ from the shared sources, and their shortcut audits.

    python scripts/make_published_splits.py ../shared/data/casting-supervisely ../shared/data/casting-kaggle-300 \
        ../shared/data/magnetic-tile [--only impeller-v2-localization --only mtd]
    python scripts/make_published_splits.py --audits-only data     # audit the splits built under data/

Writes, each the manifest of the dataset it describes (``impeller-bench
build-split --split FILE ...`` rebuilds it byte for byte):

- ``impeller-v2-native.json``: the annotated 512x512 photos alone, as many as
  the photo groups allow: the good photos split between train and test by
  photo group, and the defect photos matched to the test goods on
  defect-blind measures (``build.balance_test_defects``); 256x256.
- ``impeller-v2-localization.json``: a pixel-level track on the annotated
  photos: every good photo group trains, every usable defect photo with a
  mask tests (no good test images, no matching); 256x256.
- ``mtd.json``: Magnetic Tile Defects, DifferNet's protocol by photo group
  (a tile's lightings together): 20% of the good images test with every
  defect image; each image at its own size.
- ``impeller-v1.json`` and ``impeller-v1-kaggle-test.json``: the deprecated
  splits (both sources mixed: a source shortcut), made as they always were
  (fingerprint grouping only), for reproducibility.

And ``annotations/audits/<split>.json``: the shortcut audit of each split with
pixel masks. About a quarter of an hour on two cores.

The Kaggle-only split (``build-split --kaggle ... --mask-source ...``, 400 /
100 / 100) is not published: it fails the audit (dataset_card.md).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from impeller_bench.cli.options import progress_bar
from impeller_bench.data import build, scanning, selection, writing
from impeller_bench.data.audit import audit_dataset
from impeller_bench.data.dataset import load_dataset
from impeller_bench.data.sources.supervisely import DEFAULT_DEFECT_CLASSES

ANNOTATIONS = Path(__file__).resolve().parent.parent / "annotations"
V2_NATIVE_TEST_GOOD = 30  # of the annotated source's 73 usable good photos (in 31 photo groups)
# What build-split records by default for a new selection: registration joins, no source mix, bootstrap over
# photo groups, test defects matched to the test goods.
V2_OPTIONS = {"registration": True, "allow_source_mix": False, "bootstrap_unit": "group", "matched_test_defects": True}
AUDITED = ("impeller-v2-native", "impeller-v1", "impeller-v2-localization", "mtd")
MTD_TEST_GOOD_SHARE = 0.2  # DifferNet's: 80% of the defect-free images train
# Where DifferNet's own MTD training list is (image by image), to measure how many of its test tiles it also trains on.
DIFFERNET_TRAIN_LIST = ("https://github.com/marco-rudolph/differnet/blob/13529c8a79508a930df3618cf6718358a87b8719/"
                        "mtd_train_filenames.txt")
DIFFERNET_TRAIN_LIST_SHA256 = "ddf6ddb1b4a123d9506a4d25e870ad32e2b845386c55201fca8307fdc7e62652"


def save_audit(name: str, result: dict) -> None:
    from impeller_bench.data.audit import audit_lines

    (ANNOTATIONS / "audits").mkdir(exist_ok=True)
    (ANNOTATIONS / "audits" / f"{name}.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print("\n".join([f"{name}:"] + audit_lines(result)))


def write_audit(name: str, folder: Path) -> None:
    save_audit(name, audit_dataset(load_dataset(folder), progress=progress_bar).to_dict())


def publish_built(name: str, tmp: Path, **build_options) -> None:
    """A split made by build-split itself (``build.build_split``: the options a user's rebuild records), and
    its audit from the build."""
    manifest, report = build.build_split(tmp / name, name=name, progress=progress_bar, **build_options)
    shutil.copyfile(tmp / name / "manifest.json", ANNOTATIONS / f"{name}.json")
    print(f"wrote annotations/{name}.json: {report['selected']}")
    save_audit(name, report["shortcut_audit"])


def differnet_overlap(magnetic_tile: str, train_list: Path) -> None:
    """How many of DifferNet's own MTD test goods (its list, by image) share a photo group with its training images."""
    from impeller_bench.common.files import sha256_file

    if sha256_file(train_list) != DIFFERNET_TRAIN_LIST_SHA256:
        raise SystemExit(f"{train_list} is not DifferNet's list ({DIFFERNET_TRAIN_LIST})")
    names = set(train_list.read_text().split())
    records, findings = build.read_sources(mtd=[magnetic_tile])
    scans, more = scanning.scan(records, progress_bar)
    groups = scanning.group_photos(records, scans, progress=progress_bar)
    goods = [i for i, r in enumerate(records) if r.label == "good"]
    trained = {int(groups.group_of[i]) for i in goods if records[i].path.name in names}
    tested = [i for i in goods if records[i].path.name not in names]
    shared = sum(int(groups.group_of[i]) in trained for i in tested)
    print(f"DifferNet's split: {len(names)} train, {len(tested)} test good images; {shared} of the test goods share a "
          f"photo group (a tile under another lighting) with its training images")


def write(name: str, records, plan, tmp: Path, **options) -> None:
    out = tmp / name
    writing.write_dataset(out, records, plan, name=name, size=256, defect_classes=DEFAULT_DEFECT_CLASSES,
                        progress=progress_bar, **options)
    shutil.copyfile(out / "manifest.json", ANNOTATIONS / f"{name}.json")
    print(f"wrote annotations/{name}.json")
    if name in AUDITED:
        write_audit(name, out)


def main(supervisely: str, kaggle: str, magnetic_tile: str, only=()) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not only or "impeller-v2-localization" in only:
            publish_built("impeller-v2-localization", tmp, supervisely=[supervisely],
                          counts=scanning.Counts(None, 0, None), balance=False, size=256)
        if not only or "mtd" in only:
            publish_built("mtd", tmp, mtd=[magnetic_tile], test_good_share=MTD_TEST_GOOD_SHARE, size="native")
        if only and not {"impeller-v2-native", "impeller-v1"} & set(only):
            return
        # impeller-v2-native: the annotated photos alone.
        records, findings = build.read_sources([supervisely])
        scans, more = scanning.scan(records, progress_bar)
        usable = selection.eligible(records, scans, findings + more)
        groups = scanning.group_photos(records, scans, progress=progress_bar)
        plan = selection.plan_split(records, scans, groups, usable, scanning.Counts(None, V2_NATIVE_TEST_GOOD, None), seed=0)
        plan = selection.balance_test_defects(records, plan, 256, None, progress_bar)
        print("matching:", plan.notes["matching"])
        write("impeller-v2-native", records, plan, tmp, options=V2_OPTIONS)

        # impeller-v1 (deprecated), exactly as it was made.
        records, findings = build.read_sources([supervisely], [kaggle])
        scans, more = scanning.scan(records, progress_bar)
        usable = selection.eligible(records, scans, findings + more)
        groups = scanning.group_photos(records, scans, register=False, progress=progress_bar)
        plan = selection.plan_split(records, scans, groups, usable, scanning.Counts(400, 100, 100), seed=0)
        image_plan = selection.plan_image_level(records, groups, usable, plan, Path(kaggle).name, "test/")
        print(f"Kaggle test images sharing a photo group with the training images: "
              f"{image_plan.notes['test_images_sharing_a_group_with_train']} of "
              f"{sum(s.split == 'test' for s in image_plan.selected)}")
        write("impeller-v1", records, plan, tmp)
        write("impeller-v1-kaggle-test", records, image_plan, tmp)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", help="casting-supervisely, casting-kaggle-300, magnetic-tile folders")
    parser.add_argument("--audits-only", type=Path, help="audit the published splits built under this folder")
    parser.add_argument("--only", action="append", default=[], help="make only this split (repeatable)")
    parser.add_argument("--differnet-train-list", type=Path,
                        help=f"DifferNet's mtd_train_filenames.txt ({DIFFERNET_TRAIN_LIST}): report its tile overlap")
    args = parser.parse_args()
    if args.audits_only:
        for split in AUDITED:
            write_audit(split, args.audits_only / split)
    elif args.differnet_train_list:
        differnet_overlap(args.sources[-1], args.differnet_train_list)
    else:
        main(*args.sources, only=args.only)
