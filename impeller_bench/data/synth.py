"""Synthetic impellers: the built-in default data and the fixture for tests.

A deterministic generator of top-view grey photos of a cast impeller: a
brushed metal flange with a dark groove and a bright lip, the dark eye with
curved blades seen through it, a bright hub ring around the bore, on a
textured table, under varying lighting (direction, strength, overall gain)
and pose (centre shift, size, slight tilt, rotation). Defect images carry one
or two defects, each with its exact mask (the pixels the defect changed):

- ``holes``: small dark pits on the flange;
- ``chipping``: a bite out of the rim, showing the table;
- ``deburring``: burrs, bright metal sticking out past the rim;
- ``spots``: bright or dark stains on the flange.

Image ``k`` depends only on (seed, its split, k), so adding images never
changes the existing ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..common.files import sha256_bytes, staged_directory
from ..common.imageio import encode_png
from ..common.progress import no_progress
from .dataset import FORMAT_VERSION, MANIFEST_NAME, manifest_bytes
from .writing import RenderedImage, write_rendered

DEFECT_KINDS = ("holes", "chipping", "deburring", "spots")
GENERATOR_VERSION = 2  # 2: defects about the size of the real ones (median region ~350 px at 256 x 256)
_SPLIT_KEYS = {("train", "good"): 0, ("test", "good"): 1, ("test", "defect"): 2}


def impeller(rng: np.random.Generator, size: int = 256, defects: tuple[str, ...] = ()):
    """One synthetic photo; returns (uint8 image, bool defect mask, bool foreground mask, {class: mask})."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = size / 2 + rng.normal(0, 0.025 * size, 2)
    radius = size * rng.uniform(0.38, 0.44)
    tilt, tilt_angle = rng.uniform(0.0, 0.05), rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    # A slight tilt squeezes the part along one direction.
    along = dx * np.cos(tilt_angle) + dy * np.sin(tilt_angle)
    across = -dx * np.sin(tilt_angle) + dy * np.cos(tilt_angle)
    rho = np.hypot(along / (1 - tilt), across) / radius
    theta = np.arctan2(dy, dx) + rng.uniform(0, 2 * np.pi)

    table = rng.uniform(0.45, 0.65) + 0.05 * _smooth_noise(rng, size, size / 24) + 0.015 * _smooth_noise(rng, size, 1.0)
    light_dir, light = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.2)

    brushed = 0.03 * np.sin(rho * rng.uniform(140, 180) + rng.uniform(0, 6.3)) + 0.02 * _smooth_noise(rng, size, 1.2)
    flange = 0.72 + 0.12 * np.cos(theta - light_dir) * rho + brushed
    blades = rng.integers(6, 9)
    swirl = np.cos(blades * (theta + 2.2 * rho))
    eye = 0.1 + 0.08 * (swirl > 0.6) + 0.02 * _smooth_noise(rng, size, 1.0)
    image = np.select(
        [rho <= 0.18, rho <= 0.3, rho <= 0.55, rho <= 0.58, rho <= 0.62, rho <= 0.985, rho <= 1.0, rho <= 1.05],
        [0.32 + 0.02 * _smooth_noise(rng, size, 1.0), 0.85 + 0.05 * np.cos(theta - light_dir), eye, 0.9, 0.15,
         flange, 0.25, table - 0.12 * (1.05 - rho) / 0.05],
        default=table,
    )
    foreground = rho <= 1.0
    defect = np.zeros((size, size), bool)
    class_masks: dict[str, np.ndarray] = {}
    for kind in defects:
        changed = np.zeros_like(defect)
        while not changed.any():  # a defect drawn too small for the pixel grid is drawn again
            image, changed = _add_defect(kind, rng, image, rho, theta, radius, yy, xx, cy, cx, table)
        defect |= changed
        class_masks[kind] = class_masks.get(kind, np.zeros_like(defect)) | changed
        if kind == "chipping":
            foreground &= ~changed
        elif kind == "deburring":
            foreground |= changed
    gain = rng.uniform(0.8, 1.15)
    image = image * gain * (1 + light * np.cos(np.arctan2(dy, dx) - light_dir) * 0.5)
    image = image + rng.normal(0, 0.01, image.shape)
    return np.clip(image * 255, 0, 255).astype(np.uint8), defect, foreground, class_masks


def _smooth_noise(rng, size, sigma):
    noise = ndi.gaussian_filter(rng.normal(size=(size, size)), sigma)
    return noise / (noise.std() + 1e-12)


def _add_defect(kind, rng, image, rho, theta, radius, yy, xx, cy, cx, table):
    """Paint one defect; returns (image, mask of the pixels it changed)."""
    angle = rng.uniform(0, 2 * np.pi)
    image = image.copy()
    if kind == "holes":
        r = rng.uniform(0.68, 0.93) * radius
        py, px = cy + r * np.sin(angle), cx + r * np.cos(angle)
        ry, rx = np.maximum(rng.uniform(3, 7, 2) * radius / 100, 1.0)
        mask = ((yy - py) / ry) ** 2 + ((xx - px) / rx) ** 2 <= 1
        image[mask] = 0.08 + 0.05 * rng.random(mask.sum())
    elif kind == "chipping":
        py, px = cy + radius * np.sin(angle), cx + radius * np.cos(angle)
        r = rng.uniform(7, 14) * radius / 100
        mask = (np.hypot(yy - py, xx - px) <= r) & (rho <= 1.0)
        image[mask] = table[mask]
    elif kind == "deburring":
        span = rng.uniform(0.08, 0.25)
        length = rng.uniform(0.05, 0.1)
        wiggle = length * (0.5 + 0.5 * np.sin(theta * rng.integers(20, 40) + rng.uniform(0, 6.3)))
        near = np.abs(np.angle(np.exp(1j * (np.arctan2(yy - cy, xx - cx) - angle)))) <= span
        mask = near & (rho > 1.0) & (rho <= 1.0 + wiggle)
        image[mask] = 0.8 + 0.08 * rng.random(mask.sum())
    elif kind == "spots":
        r = rng.uniform(0.68, 0.92) * radius
        py, px = cy + r * np.sin(angle), cx + r * np.cos(angle)
        blob = np.hypot(yy - py, xx - px) + 1.5 * _smooth_noise(rng, image.shape[0], 2.0)
        mask = (blob <= rng.uniform(5, 10) * radius / 100) & (rho <= 0.985) & (rho > 0.62)
        image[mask] = image[mask] + rng.choice([-0.3, 0.25])
    else:
        raise ValueError(f"unknown defect kind {kind!r}; known: {', '.join(DEFECT_KINDS)}")
    return image, mask


def generate(split: str, label: str, index: int, seed: int, size: int):
    """The image with this (split, label, index) for ``seed``: (image, mask, foreground, {class: mask})."""
    rng = np.random.default_rng([seed, _SPLIT_KEYS[(split, label)], index])
    defects: tuple[str, ...] = ()
    if label == "defect":
        count = 1 + int(rng.random() < 0.3)
        defects = tuple(DEFECT_KINDS[k] for k in rng.choice(len(DEFECT_KINDS), count, replace=False))
    return impeller(rng, size, defects)


def write_synthetic(
    out: str | Path,
    train_good: int = 60,
    test_good: int = 20,
    test_defect: int = 20,
    size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
    progress=None,
) -> dict:
    """Write a synthetic dataset in the benchmark's layout, with its manifest; returns the manifest."""
    progress = progress or no_progress
    plan = [("train", "good", k) for k in range(train_good)]
    plan += [("test", "good", k) for k in range(test_good)] + [("test", "defect", k) for k in range(test_defect)]

    def rendered():
        for group, (split, label, k) in enumerate(progress(plan, "drawing impellers")):
            image, mask, foreground, class_masks = generate(split, label, k, seed, size)
            data = encode_png(image)
            stem = f"synth_{'ok' if label == 'good' else 'def'}_{k:04d}"
            yield RenderedImage(
                split, label, stem, "synthetic", f"{split}/{label}/{k}", sha256_bytes(data), data, ".png",
                mask if label == "defect" else None, foreground, tuple(sorted(class_masks)), group,
                class_touch=class_masks or None,
            )

    with staged_directory(out, overwrite=overwrite) as stage:
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": "synthetic-impellers",
            "build": {
                "size": size, "seed": seed, "train_good": train_good, "test_good": test_good,
                "test_defect": test_defect, "defect_classes": list(DEFECT_KINDS), "generator_version": GENERATOR_VERSION,
            },
            "sources": {"synthetic": {"kind": "synthetic", "description": "impeller_bench.synth, drawn, not photographed"}},
            "entries": write_rendered(rendered(), stage),
        }
        (stage / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
    return manifest
