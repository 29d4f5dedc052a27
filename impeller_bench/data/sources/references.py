"""Where the public sources come from: the references written into every split file.

Each source's files, as published, are listed with their sha256 in
``annotations/sources/<name>.sha256``; ``impeller-bench download`` checks
them before unpacking anything.
"""
from __future__ import annotations

KNOWN_SOURCES = {
    "casting-supervisely": {
        "kind": "supervisely",
        "description": "220 photos of the Kaggle casting set at 512x512 with pixel-level defect annotations (Supervisely JSON)",
        "repository": "https://github.com/MassimilianoBiancucci/Mask-RCNN-training-with-docker-containers-on-Sagemaker",
        "commit": "9b0dce34b3f774ffc7b4b39e6e424e121383f174",
        "folder": "datasets/cast_dataset_polish/training",
        "archive": "https://github.com/MassimilianoBiancucci/Mask-RCNN-training-with-docker-containers-on-Sagemaker/archive/9b0dce34b3f774ffc7b4b39e6e424e121383f174.zip",
        "license": "images: CC BY-NC-ND 4.0 (Kaggle, ravirajsinh45); annotations: GPL-3.0 (repository licence)",
    },
    "casting-kaggle-300": {
        "kind": "kaggle",
        "description": "Kaggle 'casting product image data for quality inspection', 300x300 augmented set: train/ and test/ with ok_front/ and def_front/",
        "kaggle_dataset": "ravirajsinh45/real-life-industrial-dataset-of-casting-product",
        "repository": "https://github.com/maomao7784/Casting-Product-Quality-Inspection",
        "commit": "38ce5fee0df4bdca1d99a4e45a26fdb847683e53",
        "folder": "data/casting_data",
        "license": "CC BY-NC-ND 4.0 (Kaggle, ravirajsinh45)",
    },
    "magnetic-tile": {
        "kind": "mtd",
        "description": "Magnetic Tile Defects (Huang, Qiu and Yuan, The Visual Computer 2020): 1,344 greyscale photos of "
                       "ferrite tiles, MT_Free (952 defect-free) and five defect classes, a grey pixel mask beside each",
        "repository": "https://github.com/abin24/Magnetic-tile-defect-datasets.",
        "commit": "cc4eb530b57b9cb7225bf76023873043ffd50655",
        "folder": "",
        "archive": "https://github.com/abin24/Magnetic-tile-defect-datasets./archive/cc4eb530b57b9cb7225bf76023873043ffd50655.zip",
        "license": "no licence file; the repository's README welcomes use and asks for a citation of the paper",
    },
}


def reference_for(name: str, kind: str) -> dict:
    """The known reference of a source, or a minimal one for a folder we do not know."""
    known = KNOWN_SOURCES.get(name)
    if known is not None and known["kind"] == kind:
        return dict(known)
    return {"kind": kind}
