"""Register two photos pixel to pixel: is one a re-processed variant of the other, and where does each pixel go?

The Kaggle 300x300 set holds rotated, flipped, scaled, shifted and re-lit
variants of photos, some of which are also among the annotated 512x512
originals. Registration answers two questions the photo fingerprint
(:mod:`.grouping`) cannot answer alone:

- *Same photo or look-alike part?* Good parts look so much alike that a
  similarity of content proves little. Registered pixel to pixel, a variant
  of the same photo leaves a residual at the level of JPEG noise everywhere;
  another part leaves its own scratches, grain and vane pattern behind. The
  rule (:func:`is_same_photo`) asks for both a near-perfect correlation and
  a near-perfect correlation of the fine detail.
- *Where do the original's defect pixels lie in the variant?* The fitted map
  carries a mask from an annotated original onto its variant
  (:func:`transfer_mask`).

The model: ``target(x) = gain * source(A x) + offset``, with ``A`` an affine
map from the target's pixel centres (row, col) to the source's, found by a
coarse search over rotations, mirror images and scales around the part's ring
centre (from the fingerprint), then Gauss-Newton refinement from coarse to
fine. Both images are first area-averaged to the same pixel count, so the
search assumes the two show the part at a similar fraction of their frame
(true of the Kaggle set, which was resized from the 512x512 photos).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..common.imageio import area_average
from . import grouping

COARSE_SIZE = 40
COARSE_ROTATIONS = 120  # every 3 degrees
COARSE_SCALE_STEPS = (0.93, 1.0, 1.075)  # around the fingerprint's ring scale
COARSE_HYPOTHESES_REFINED = 3
COARSE_ITERATIONS = 15
# Pairs that do not look alike after the coarse search are not refined further.
COARSE_MIN_CORRELATION = 0.95
LEVELS = ((75, 25), (150, 10))  # (pixels, Gauss-Newton iterations); then the target's own size
FINAL_ITERATIONS = 5
# The last level is the target's own size, at most this: finer adds time, not certainty.
FINAL_SIZE_LIMIT = 300
# Only pairs that already look like one photo at 150 px are refined at full size.
FULL_SIZE_MIN_CORRELATION = 0.99
BORDER_MARGIN = 6  # pixels of the overlap's edge left out of the measures (interpolation and fill)

# The acceptance rule. On the shared sources (``benchmarks/registration_rule.py``: 20 annotated photos
# against their 12 best Kaggle candidates, 240 registrations) the pairs fall into two modes: 91 at
# correlation 0.9981-0.9991 with fine detail 0.975-0.990 (residual 3.2 grey levels, JPEG noise), 149 at
# 0.57-0.977 with fine detail up to 0.93 (residual 26 grey levels); none between 0.99 and 0.997.
SAME_PHOTO_MIN_CORRELATION = 0.997
SAME_PHOTO_MIN_DETAIL = 0.95
SAME_PHOTO_MIN_OVERLAP = 0.6


@dataclass(frozen=True)
class Registration:
    """A fitted map from the target's pixels to the source's, and how well it explains the target."""

    matrix: tuple[float, ...]  # (a, b, c, d, e, f): source row = a*r + b*c_ + c, source col = d*r + e*c_ + f
    gain: float
    offset: float
    correlation: float  # normalised correlation of target and warped source over the overlap
    detail_correlation: float  # the same for their fine detail (difference of Gaussians, 0.7 and 1.5 px)
    residual_rms: float  # grey levels, after gain and offset
    overlap: float  # fraction of the target's pixels the source covers
    size: int  # pixels per side at which the measures were taken

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.matrix, dtype=np.float64).reshape(2, 3)

    @property
    def scale(self) -> float:
        """Source pixels per target pixel (geometric mean of the two axes)."""
        return float(np.sqrt(abs(np.linalg.det(self.affine[:, :2]))))

    def to_dict(self) -> dict:
        return asdict(self) | {"matrix": list(self.matrix)}


def is_same_photo(registration: Registration) -> bool:
    """The acceptance rule: one photo, re-processed, not another photo of a look-alike part."""
    return (
        registration.correlation >= SAME_PHOTO_MIN_CORRELATION
        and registration.detail_correlation >= SAME_PHOTO_MIN_DETAIL
        and registration.overlap >= SAME_PHOTO_MIN_OVERLAP
    )


class Prepared:
    """A photo ready to register many times: its fingerprint and its area-averaged levels, made once."""

    def __init__(self, image: np.ndarray, fingerprint: grouping.Fingerprint | None = None):
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError("registration needs a 2-D grey image")
        self.fingerprint = fingerprint or grouping.fingerprint(image)
        self.image = image.astype(np.float64)
        self.shape = self.image.shape
        self._levels: dict[int, np.ndarray] = {}

    def level(self, size: int) -> np.ndarray:
        if size not in self._levels:
            self._levels[size] = self.image if self.shape == (size, size) else area_average(self.image, size)
        return self._levels[size]


def prepared_loader(paths: Sequence, fingerprints: Sequence, cache: int = 256) -> Callable[[int], Prepared]:
    """load(k): image ``paths[k]`` prepared with ``fingerprints[k]``, the ``cache`` most recent kept (about 1 MB each)."""
    from functools import lru_cache

    from ..common.imageio import read_gray

    @lru_cache(maxsize=cache)
    def load(k: int) -> Prepared:
        return Prepared(read_gray(paths[k]), fingerprints[k])

    return load


def register(source, target) -> Registration:
    """Fit ``target(x) ~ gain * source(A x) + offset``; each a 2-D uint8 photo (any size) or a :class:`Prepared` one."""
    source = source if isinstance(source, Prepared) else Prepared(source)
    target = target if isinstance(target, Prepared) else Prepared(target)
    fit, size = _coarse_search(source, target)
    final = min(max(target.shape), FINAL_SIZE_LIMIT)
    if fit.correlation >= COARSE_MIN_CORRELATION:
        for level, iterations in [(n, i) for n, i in LEVELS if n < final] + [(final, FINAL_ITERATIONS)]:
            affine = _rescale(fit.affine, size, level)
            size = level
            fit = _refine(source.level(size), target.level(size), affine, iterations)
            if size < final and size >= LEVELS[-1][0] and fit.correlation < FULL_SIZE_MIN_CORRELATION:
                break
    full = _to_full_resolution(fit.affine, size, source.shape, target.shape)
    return Registration(tuple(float(v) for v in full.ravel()), fit.gain, fit.offset, fit.correlation,
                        fit.detail_correlation, fit.residual_rms, fit.overlap, size)


def transfer_mask(mask: np.ndarray, registration: Registration, target_shape: tuple[int, int],
                  subsamples: int = 4) -> np.ndarray:
    """The source's boolean mask carried onto the target: a pixel is set when at least half of it was.

    Each target pixel is sampled at ``subsamples`` x ``subsamples`` points;
    each point takes the source pixel it falls in (outside the source: unset).
    """
    h, w = target_shape
    offsets = (np.arange(subsamples) + 0.5) / subsamples - 0.5
    rows = (np.arange(h)[:, None] + offsets[None, :]).ravel()
    cols = (np.arange(w)[:, None] + offsets[None, :]).ravel()
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    a = registration.affine
    u = np.floor(a[0, 0] * rr + a[0, 1] * cc + a[0, 2] + 0.5).astype(np.int64)
    v = np.floor(a[1, 0] * rr + a[1, 1] * cc + a[1, 2] + 0.5).astype(np.int64)
    inside = (u >= 0) & (u < mask.shape[0]) & (v >= 0) & (v < mask.shape[1])
    hits = np.zeros(u.shape, bool)
    hits[inside] = mask[u[inside], v[inside]]
    covered = hits.reshape(h, subsamples, w, subsamples).sum(axis=(1, 3))
    return covered * 2 >= subsamples * subsamples


def residual_shift(source: np.ndarray, target: np.ndarray, registration: Registration, mask: np.ndarray,
                   window: int = 24) -> float:
    """Largest leftover misalignment, in target pixels, in windows around the regions of ``mask`` (target frame).

    In each window centred on a region, a translation is fitted (Gauss-Newton on
    the registered images); a perfect map leaves 0. Measures how far a carried
    mask can be off where it matters.
    """
    source = np.asarray(source, np.float64)
    if registration.scale > 1:  # sample a finer source through a matching blur, as area averaging would
        source = ndi.gaussian_filter(source, 0.5 * registration.scale)
    warped = _warp(source, registration.affine, target.shape)[0]
    labels, count = ndi.label(mask, structure=np.ones((3, 3), bool))
    worst = 0.0
    target = np.asarray(target, np.float64)
    for region in ndi.find_objects(labels):
        cy = (region[0].start + region[0].stop - 1) / 2
        cx = (region[1].start + region[1].stop - 1) / 2
        r0, c0 = int(max(cy - window, 0)), int(max(cx - window, 0))
        r1, c1 = int(min(cy + window + 1, target.shape[0])), int(min(cx + window + 1, target.shape[1]))
        if r1 - r0 < 8 or c1 - c0 < 8:
            continue
        worst = max(worst, _translation(warped[r0:r1, c0:c1], target[r0:r1, c0:c1]))
    return worst


# --------------------------------------------------------------------------- internals


@dataclass(frozen=True)
class _Fit:
    affine: np.ndarray
    gain: float
    offset: float
    correlation: float
    detail_correlation: float
    residual_rms: float
    overlap: float


def _resampled(image: np.ndarray, size: int) -> np.ndarray:
    return image if image.shape == (size, size) else area_average(image, size)


def _level_matrix(row_scale: float, col_scale: float | None = None) -> np.ndarray:
    """Homogeneous map of pixel centres from a grid to one ``scale`` times as fine (area resampling)."""
    col_scale = row_scale if col_scale is None else col_scale
    return np.array([[row_scale, 0.0, 0.5 * row_scale - 0.5], [0.0, col_scale, 0.5 * col_scale - 0.5], [0.0, 0.0, 1.0]])


def _rescale(affine: np.ndarray, size: int, new_size: int) -> np.ndarray:
    """The same geometric map with both images at ``new_size`` instead of ``size`` pixels."""
    level = _level_matrix(new_size / size)
    return (level @ np.vstack([affine, [0.0, 0.0, 1.0]]) @ np.linalg.inv(level))[:2]


def _to_full_resolution(affine: np.ndarray, size: int, source_shape, target_shape) -> np.ndarray:
    to_source = np.linalg.inv(_level_matrix(size / source_shape[0], size / source_shape[1]))
    from_target = _level_matrix(size / target_shape[0], size / target_shape[1])
    return (to_source @ np.vstack([affine, [0.0, 0.0, 1.0]]) @ from_target)[:2]


def _similarities(target_centre, source_centre, scales: np.ndarray, angles: np.ndarray,
                  mirrored: np.ndarray) -> np.ndarray:
    """(k, 2, 3) affines from target to source coordinates: rotation by ``angles``, scaling by ``scales`` and,
    where ``mirrored``, a flip of the column axis, about the two centres."""
    c, s = np.cos(angles), np.sin(angles)
    flip = np.where(mirrored, -1.0, 1.0)
    linear = scales[:, None, None] * np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], 1)
    linear[:, :, 1] *= flip[:, None]
    shift = np.asarray(source_centre, dtype=np.float64) - linear @ np.asarray(target_centre, dtype=np.float64)
    return np.concatenate([linear, shift[:, :, None]], axis=2)


def _coarse_search(source: Prepared, target: Prepared) -> tuple[_Fit, int]:
    """Every rotation, mirror image and scale around the ring centres at COARSE_SIZE; the best few refined."""
    n = COARSE_SIZE
    small_source, small_target = source.level(n), target.level(n)
    to_level = n / grouping.WORK_SIZE
    target_centre = (np.asarray(target.fingerprint.center) + 0.5) * to_level - 0.5
    source_centre = (np.asarray(source.fingerprint.center) + 0.5) * to_level - 0.5
    ring_scale = float(np.exp(grouping._scale_lag(target.fingerprint, source.fingerprint) * grouping.RADIAL_LOG_STEP))
    angles = np.arange(COARSE_ROTATIONS) * (2 * np.pi / COARSE_ROTATIONS)
    mirrored, steps, angles = (a.ravel() for a in np.meshgrid([False, True], COARSE_SCALE_STEPS, angles,
                                                              indexing="ij"))
    stack = _similarities(target_centre, source_centre, ring_scale * steps, angles, mirrored)  # (hypotheses, 2, 3)
    rr, cc = np.mgrid[0:n, 0:n].astype(np.float64)
    u = stack[:, 0, 0, None, None] * rr + stack[:, 0, 1, None, None] * cc + stack[:, 0, 2, None, None]
    v = stack[:, 1, 0, None, None] * rr + stack[:, 1, 1, None, None] * cc + stack[:, 1, 2, None, None]
    valid = ((u >= 0) & (u <= n - 1) & (v >= 0) & (v <= n - 1)).reshape(len(stack), -1)
    warped = ndi.map_coordinates(small_source, [u.ravel(), v.ravel()], order=1, mode="nearest").reshape(len(stack), -1)
    scores = _masked_ncc_rows(warped, small_target.ravel(), valid)
    best = np.argsort(-scores, kind="stable")[:COARSE_HYPOTHESES_REFINED]
    fits = [_refine(small_source, small_target, stack[k], COARSE_ITERATIONS) for k in best]
    return max(fits, key=lambda f: f.correlation), n


def _masked_ncc_rows(rows: np.ndarray, reference: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Normalised correlation of each row with ``reference``, over that row's valid entries."""
    w = valid.astype(np.float64)
    count = np.maximum(w.sum(axis=1), 1.0)
    mx = (rows * w).sum(axis=1) / count
    my = (reference * w).sum(axis=1) / count
    sxy = (rows * reference * w).sum(axis=1) / count - mx * my
    sxx = (rows * rows * w).sum(axis=1) / count - mx * mx
    syy = (reference * reference * w).sum(axis=1) / count - my * my
    score = sxy / np.sqrt(np.maximum(sxx * syy, 1e-12))
    return np.where(w.sum(axis=1) >= 16, score, -1.0)


def _warp(image: np.ndarray, affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    u = affine[0, 0] * rr + affine[0, 1] * cc + affine[0, 2]
    v = affine[1, 0] * rr + affine[1, 1] * cc + affine[1, 2]
    valid = (u >= 0) & (u <= image.shape[0] - 1) & (v >= 0) & (v <= image.shape[1] - 1)
    return ndi.map_coordinates(image, [u, v], order=1, mode="nearest"), valid


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    if mask.sum() < 16:
        return -1.0
    x, y = a[mask], b[mask]
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (np.sqrt((x * x).sum() * (y * y).sum()) + 1e-12))


def _fine_detail(image: np.ndarray) -> np.ndarray:
    return ndi.gaussian_filter(image, 0.7) - ndi.gaussian_filter(image, 1.5)


def _refine(source: np.ndarray, target: np.ndarray, affine: np.ndarray, iterations: int) -> _Fit:
    """Gauss-Newton on the six affine parameters plus gain and offset (coordinates centred for conditioning)."""
    grad_r, grad_c = np.gradient(source)
    h, w = target.shape
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    xr, xc = rr - centre[0], cc - centre[1]
    affine = np.array(affine, dtype=np.float64)
    for _ in range(iterations):
        u = affine[0, 0] * rr + affine[0, 1] * cc + affine[0, 2]
        v = affine[1, 0] * rr + affine[1, 1] * cc + affine[1, 2]
        m = (u >= 1) & (u <= source.shape[0] - 2) & (v >= 1) & (v <= source.shape[1] - 2)
        if m.sum() < 64:
            break
        coords = [u[m], v[m]]
        s = ndi.map_coordinates(source, coords, order=1)
        gu = ndi.map_coordinates(grad_r, coords, order=1)
        gv = ndi.map_coordinates(grad_c, coords, order=1)
        t = target[m]
        gain, offset = _linear_fit(s, t)
        residual = gain * s + offset - t
        jacobian = np.stack([gain * gu * xr[m], gain * gu * xc[m], gain * gu,
                             gain * gv * xr[m], gain * gv * xc[m], gain * gv, s, np.ones_like(s)], 1)
        step = _least_squares(jacobian, -residual)
        if step is None:
            break
        affine[0] += [step[0], step[1], step[2] - step[0] * centre[0] - step[1] * centre[1]]
        affine[1] += [step[3], step[4], step[5] - step[3] * centre[0] - step[4] * centre[1]]
        if np.abs(step[[2, 5]]).max() < 1e-3 and np.abs(step[[0, 1, 3, 4]]).max() < 1e-5:
            break
    warped, valid = _warp(source, affine, target.shape)
    inner = ndi.binary_erosion(valid, iterations=BORDER_MARGIN) if min(h, w) > 4 * BORDER_MARGIN else valid
    if inner.sum() < 16:
        return _Fit(affine, 1.0, 0.0, -1.0, -1.0, float("inf"), 0.0)
    s, t = warped[inner], target[inner]
    gain, offset = _linear_fit(s, t)
    rms = float(np.sqrt(np.mean((gain * s + offset - t) ** 2)))
    return _Fit(affine, float(gain), float(offset), _ncc(warped, target, inner),
                _ncc(_fine_detail(warped), _fine_detail(target), inner), rms, float(inner.mean()))


def _linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(gain, offset) minimising sum (gain * x + offset - y)^2."""
    xm, ym = x.mean(), y.mean()
    variance = ((x - xm) ** 2).sum()
    gain = ((x - xm) * (y - ym)).sum() / variance if variance > 0 else 1.0
    return float(gain), float(ym - gain * xm)


def _least_squares(jacobian: np.ndarray, rhs: np.ndarray) -> np.ndarray | None:
    """Gauss-Newton step through the normal equations (a few parameters, many pixels); None if singular."""
    try:
        return np.linalg.solve(jacobian.T @ jacobian, jacobian.T @ rhs)
    except np.linalg.LinAlgError:
        return None


def _translation(moving: np.ndarray, fixed: np.ndarray, iterations: int = 20) -> float:
    """Length of the translation (pixels) that best aligns ``moving`` onto ``fixed`` (with gain and offset)."""
    grad_r, grad_c = np.gradient(moving)
    h, w = fixed.shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    shift = np.zeros(2)
    inner = (slice(2, h - 2), slice(2, w - 2))
    for _ in range(iterations):
        coords = [(rr + shift[0])[inner].ravel(), (cc + shift[1])[inner].ravel()]
        s = ndi.map_coordinates(moving, coords, order=1, mode="nearest")
        gu = ndi.map_coordinates(grad_r, coords, order=1, mode="nearest")
        gv = ndi.map_coordinates(grad_c, coords, order=1, mode="nearest")
        t = fixed[inner].ravel()
        gain, offset = _linear_fit(s, t)
        jacobian = np.stack([gain * gu, gain * gv, s, np.ones_like(s)], 1)
        step = _least_squares(jacobian, t - gain * s - offset)
        if step is None:
            break
        shift += step[:2]
        if np.abs(step[:2]).max() < 1e-4 or np.abs(shift).max() > 4:
            break
    return float(np.hypot(*shift))
