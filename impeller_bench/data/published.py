"""The published splits (``annotations/<split>.json``): which is the main one, which are deprecated and why.

Every published number comes from a split whose shortcut audit passes
(``annotations/audits/<split>.json``, made by
``scripts/make_published_splits.py``). The impeller-v1 splits mix the two
public sources between their good and defect test images, so a detector can
pass them by recognising the source; they stay buildable, for
reproducibility, and their results are shown apart, marked deprecated. A
deprecated split keeps the entries made before (``frozen_entries``) and
takes no other.
"""
from __future__ import annotations

import json
from pathlib import Path

MAIN, CURRENT, DEPRECATED = "main", "current", "deprecated"

# The entries made before a split was deprecated: they stay on the board, marked; no other entry is accepted.
V1_ENTRIES = ("ast-quick", "efficientad-quick", "ours-quick", "padim-quick", "patchcore-quick", "patchsvdd-quick",
              "spade-quick")

SPLITS = {
    "impeller-v2-native": {"status": MAIN, "about": "the annotated 512x512 photos alone, at 256x256"},
    "impeller-v2-localization": {
        "status": CURRENT, "references": None,  # no published figure counts false positives like this track
        "about": "a pixel-level track: every usable defect photo of the annotated source with a mask tests, every good "
                 "photo group of that source trains (no good test images: image metrics are not defined), at 256x256",
    },
    "mtd": {
        "status": CURRENT, "references": "differnet",
        "about": "Magnetic Tile Defects, a second domain: DifferNet's protocol (a random 20% of the defect-free "
                 "images test) drawn by tile, the test defects matched to the test goods on defect-blind measures, "
                 "each image at its own size",
    },
    "impeller-v1": {
        "status": DEPRECATED, "about": "both sources mixed (400 / 100 / 100)", "frozen_entries": V1_ENTRIES,
        "reason": "its good test images come partly from the Kaggle 300x300 set, its defect test images all from the "
                  "annotated 512x512 photos, and pretrained features tell the two sources apart perfectly; 135 of its "
                  "training images are also variants of 6 of its good test photos",
    },
    "impeller-v1-kaggle-test": {
        "status": DEPRECATED, "about": "impeller-v1's training images, Kaggle's own test folder (image level)",
        "frozen_entries": (),
        "reason": "it trains on impeller-v1's images, and 246 of its 262 good test images share a photo group "
                  "(variants of one photo) with them",
    },
}
ORDER = {MAIN: 0, CURRENT: 1, DEPRECATED: 2}


def status(split: str) -> str:
    """MAIN, CURRENT or DEPRECATED; a split this module does not list counts as current."""
    return SPLITS.get(split, {}).get("status", CURRENT)


def deprecation_reason(split: str) -> str | None:
    return SPLITS.get(split, {}).get("reason")


def frozen_entries(split: str) -> tuple[str, ...]:
    """The entries a deprecated split keeps (made before it was deprecated)."""
    return tuple(SPLITS.get(split, {}).get("frozen_entries", ()))


def split_order(split: str) -> tuple[int, str]:
    """Sort key: the main split first, then current ones, then deprecated ones; by name within each."""
    return ORDER[status(split)], split


def load_audit(annotations: str | Path, split: str) -> dict | None:
    """The committed shortcut audit of a published split, if there is one."""
    path = Path(annotations) / "audits" / f"{split}.json"
    return json.loads(path.read_text()) if path.is_file() else None
