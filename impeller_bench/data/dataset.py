"""Loading a built dataset: the MVTec AD layout plus ``manifest.json``.

Layout (every path relative to the dataset folder)::

    train/good/<stem>.png            normal training images
    test/good/<stem>.png             normal test images
    test/defect/<stem>.png           defective test images
    ground_truth/defect/<stem>_mask.png   uint8 0/255, same size as its image
    foreground/<id>_mask.png         optional part outline
    manifest.json                    one entry per image (see dataset_card.md)

Folders in the plain MVTec AD layout without a manifest load too: every
``test/<type>`` other than ``good`` is a defect class of that name.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.errors import ImpellerBenchError
from ..common.imageio import is_image_file, read_image, read_mask

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


def manifest_bytes(manifest: dict) -> bytes:
    """The one serialisation of a manifest, so equal manifests are equal bytes."""
    return (json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=True) + "\n").encode()


@dataclass(frozen=True)
class Sample:
    id: str  # e.g. "test/defect/cast_def_0_1087"
    split: str  # "train" or "test"
    label: str  # "good" or "defect"
    image_path: Path
    mask_path: Path | None = None
    defect_classes: tuple[str, ...] = ()
    source: str | None = None  # the public source it was built from, when the manifest says
    group: int | None = None  # its photo group (near-duplicates and variants of one photo), when the manifest says

    @property
    def is_defect(self) -> bool:
        return self.label != "good"

    def load_image(self) -> np.ndarray:
        """uint8 array: H x W for grey images, H x W x 3 for colour ones."""
        return read_image(self.image_path)

    def load_mask(self) -> np.ndarray:
        """Boolean defect mask at image size (all False for a good image)."""
        if self.mask_path is None:
            if self.is_defect:
                raise ImpellerBenchError("defect image has no mask", self.image_path)
            return np.zeros(self.load_image().shape[:2], bool)
        mask = read_mask(self.mask_path)
        return mask


@dataclass
class Dataset:
    root: Path
    train: list[Sample]
    test: list[Sample]
    manifest: dict | None = field(default=None, repr=False)
    manifest_sha256: str | None = None
    validated: bool = field(default=False, repr=False, compare=False)  # set by validate.require_valid

    @property
    def has_pixel_masks(self) -> bool:
        """False for image-level test sets, whose defect images have no masks."""
        return bool(((self.manifest or {}).get("build") or {}).get("pixel_masks", True))

    @property
    def name(self) -> str:
        return (self.manifest or {}).get("name", self.root.name)

    def __repr__(self) -> str:
        defects = sum(s.is_defect for s in self.test)
        return (f"Dataset({self.name!r}, train={len(self.train)}, test_good={len(self.test) - defects}, "
                f"test_defect={defects})")


def load_dataset(path: str | Path) -> Dataset:
    """Read a dataset folder (built by this package, or any MVTec AD category)."""
    root = Path(path)
    if not root.is_dir():
        raise ImpellerBenchError("dataset folder not found", root)
    manifest_path = root / MANIFEST_NAME
    if manifest_path.is_file():
        return _from_manifest(root, manifest_path)
    if (root / "train" / "good").is_dir():
        return _from_mvtec_layout(root)
    raise ImpellerBenchError("not a dataset: no manifest.json and no train/good/ folder", root)


def _from_manifest(root: Path, manifest_path: Path) -> Dataset:
    data = manifest_path.read_bytes()
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ImpellerBenchError(f"manifest is not valid JSON ({exc})", manifest_path) from exc
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ImpellerBenchError(f"manifest format version {version!r} is not {FORMAT_VERSION}", manifest_path)
    train, test = [], []
    for entry in manifest["entries"]:
        sample = Sample(
            id=entry["id"],
            split=entry["split"],
            label=entry["label"],
            image_path=_inside(root, entry["file"], manifest_path),
            mask_path=None if entry.get("mask") is None else _inside(root, entry["mask"], manifest_path),
            defect_classes=tuple(entry.get("defect_classes", ())),
            source=entry.get("source"),
            group=entry.get("group"),
        )
        (train if sample.split == "train" else test).append(sample)
    return Dataset(root, train, test, manifest, hashlib.sha256(data).hexdigest())


def _inside(root: Path, relative: str, manifest_path: Path) -> Path:
    """A manifest path, refused if it could reach outside the dataset folder."""
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise ImpellerBenchError(f"unsafe path {relative!r} in manifest", manifest_path)
    return root / candidate


def _from_mvtec_layout(root: Path) -> Dataset:
    train = [
        Sample(f"train/good/{p.stem}", "train", "good", p)
        for p in sorted((root / "train" / "good").iterdir())
        if is_image_file(p)
    ]
    test = []
    for folder in sorted(p for p in (root / "test").glob("*") if p.is_dir()):
        for p in sorted(q for q in folder.iterdir() if is_image_file(q)):
            if folder.name == "good":
                test.append(Sample(f"test/good/{p.stem}", "test", "good", p))
            else:
                mask = root / "ground_truth" / folder.name / f"{p.stem}_mask.png"
                test.append(
                    Sample(f"test/{folder.name}/{p.stem}", "test", "defect", p, mask if mask.is_file() else None, (folder.name,))
                )
    return Dataset(root, train, test)
