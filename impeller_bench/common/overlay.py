"""Heat maps drawn over images, the defect mask outlined: one drawing for ``predict``'s overlays and the web
site's examples."""
from __future__ import annotations

import numpy as np

OUTLINE = (0, 255, 255)  # cyan: apart from every colour of the inferno map


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """A map already scaled to [0, 1] in the inferno colours, as float RGB in [0, 255] (H x W x 3)."""
    from matplotlib import colormaps

    return 255 * colormaps["inferno"](np.clip(heat, 0, 1))[..., :3]


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` on its border (about one pixel per 256 of the shorter side)."""
    from scipy.ndimage import binary_erosion

    mask = np.asarray(mask, dtype=bool)
    return mask & ~binary_erosion(mask, iterations=max(1, round(min(mask.shape) / 256)))


def heat_overlay(image: np.ndarray | None, heat: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``heat`` (scaled to [0, 1], the image's size) over ``image`` (gray or RGB; None: the heat alone), each
    pixel's colour weighted by its heat, with the outline of ``mask`` where given, as uint8 RGB."""
    colours = heat_colours(heat)
    if image is None:
        drawn = colours
    else:
        rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
        alpha = 0.65 * np.clip(heat, 0, 1)[..., None]
        drawn = (1 - alpha) * rgb + alpha * colours
    if mask is not None:
        drawn[mask_outline(mask)] = OUTLINE
    return drawn.round().astype(np.uint8)
