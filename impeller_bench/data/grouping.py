"""Find photo groups: the same photograph (or the same part) reached through several files.

The Kaggle casting set at 300x300 holds shifted, scaled, rotated, flipped and
re-lit variants of each original photo, and the annotated 512x512 photos may
reappear there under other names. File names therefore say nothing; groups are
found by content:

1. Each image gets a *fingerprint* (at WORK_SIZE pixels): the common centre of
   the part's concentric rings (gradient-line voting), a log-polar resampling
   around it (rotation becomes a circular shift along the angle axis, a flip a
   reversal of it, scale a shift along log-radius), the ring profile (mean
   intensity per log-radius ring) and a rotation-, flip- and scale-invariant
   descriptor (Fourier magnitudes of the log-polar image along both axes).
2. Candidate pairs are each image's nearest neighbours on that descriptor.
3. Each candidate pair is scored: the relative scale comes from correlating
   the ring profiles, then the band-passed log-polar images, with every ring's
   mean and the lowest angular harmonics removed (the rings every impeller has
   in common, and lighting gradients), are correlated over all rotations, with
   and without a flip. The peak, a mean correlation per ring, is the *match
   score*. Only rings between SCORE_MIN_RADIUS and the rim count: near the
   centre a fraction of a pixel of centring error turns into a large angle,
   and beyond the rim shifts and crops change what is seen.
   On the shared data the best-10 candidate scores are bimodal: one mode at
   0.1-0.3, one at 0.75-0.97, a valley at 0.45-0.6. Synthetic variants of
   real photos (rotation, flip, 10% scale, 12 pixel shift, relighting) score
   0.84 or more; the default threshold, 0.7, errs towards merging: a group
   kept wholly on one side costs a little choice, a split one leaks.
4. Registration (:mod:`.registration`), where the caller can load images:
   candidate pairs scoring at least REGISTRATION_MIN_SCORE but under the
   threshold are registered pixel to pixel, and joined when they are one
   photo. The fingerprint misses variants across the two sources (an
   annotated 512x512 original against its re-processed 300x300 variants
   scores 0.3-0.6), and a variant of a test photo must never train.
5. Matches and byte-identical files are joined into connected components.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..common.progress import no_progress

WORK_SIZE = 128
POLAR_ANGLES = 256
LOWEST_KEPT_HARMONIC = 4
DESCRIPTOR_HARMONICS = slice(LOWEST_KEPT_HARMONIC, 40)
DESCRIPTOR_RADIAL_FREQS = 24
DEFAULT_MATCH_THRESHOLD = 0.7
DEFAULT_CANDIDATES = 10
# Candidate pairs scoring this or more (but under the threshold) are registered when images can be loaded.
REGISTRATION_MIN_SCORE = 0.3
RADIAL_MIN = 3.0
RADIAL_BINS = 96
RADIAL_LOG_STEP = np.log(0.47 * WORK_SIZE / RADIAL_MIN) / (RADIAL_BINS - 1)
_MAX_LOG_SCALE = np.log(1.3)
# Rings closer to the centre than this are left out of the score: there a
# fraction of a pixel of centring error shifts the angle by a lot.
SCORE_MIN_RADIUS = 12.0
SCORE_FIRST_RING = int(np.ceil(np.log(SCORE_MIN_RADIUS / RADIAL_MIN) / RADIAL_LOG_STEP))


@dataclass(frozen=True)
class Fingerprint:
    """Content summary of one image, invariant to the augmentations of the set."""

    center: tuple[float, float]
    polar_spectrum: np.ndarray  # (radii, angles // 2 + 1) complex64
    descriptor: np.ndarray  # unit-norm float32
    radial_profile: np.ndarray  # mean intensity on log-spaced rings, standardised


def _standardise(gray: np.ndarray) -> np.ndarray:
    from PIL import Image

    small = Image.fromarray(gray).resize((WORK_SIZE, WORK_SIZE), Image.BOX)
    a = np.asarray(small, dtype=np.float32)
    return (a - a.mean()) / (a.std() + 1e-6)


def fingerprint(gray: np.ndarray) -> Fingerprint:
    """Fingerprint a 2-D uint8 image (any size; resampled to WORK_SIZE)."""
    a = _standardise(gray)
    smooth = ndi.gaussian_filter(a, 2.0)
    cy, cx = _ring_centre(smooth)
    angles = np.linspace(0, 2 * np.pi, POLAR_ANGLES, endpoint=False)
    ring_radii = RADIAL_MIN * np.exp(np.arange(RADIAL_BINS) * RADIAL_LOG_STEP)
    rr, tt = np.meshgrid(ring_radii, angles, indexing="ij")
    ring_coords = [cy + rr * np.sin(tt), cx + rr * np.cos(tt)]
    profile = ndi.map_coordinates(smooth, ring_coords, order=1, mode="nearest").mean(axis=1)
    profile = ((profile - profile.mean()) / (profile.std() + 1e-6)).astype(np.float32)

    polar = ndi.map_coordinates(ndi.gaussian_filter(a, 1.0) - ndi.gaussian_filter(a, 4.0), ring_coords, order=1, mode="nearest")
    spectrum = np.fft.rfft(polar, axis=1)
    spectrum[:, :LOWEST_KEPT_HARMONIC] = 0
    # Parseval: the ring's energy is twice the sum of |X_k|^2 over k >= 1, over N.
    energy = 2 * (np.abs(spectrum) ** 2).sum(axis=1, keepdims=True) / POLAR_ANGLES
    spectrum = (spectrum / np.sqrt(energy + 1e-12)).astype(np.complex64)
    # |FFT over angle| drops rotation and flip; |FFT over log-radius| of that drops scale.
    angular = np.abs(spectrum[:, DESCRIPTOR_HARMONICS])
    descriptor = np.abs(np.fft.rfft(angular, axis=0))[:DESCRIPTOR_RADIAL_FREQS].ravel().astype(np.float32)
    descriptor -= descriptor.mean()
    descriptor /= np.linalg.norm(descriptor) + 1e-12
    return Fingerprint((cy, cx), spectrum, descriptor, profile)


def _ring_centre(smooth: np.ndarray) -> tuple[float, float]:
    """Common centre of the part's concentric rings (rim, eye, hub).

    Every strong edge pixel votes along its gradient line; the lines of all the
    circular edges cross at the centre whatever the scale or lighting.
    """
    gy, gx = ndi.sobel(smooth, 0), ndi.sobel(smooth, 1)
    magnitude = np.hypot(gy, gx)
    if not magnitude.any():  # a flat image has no rings: its middle
        return (WORK_SIZE - 1) / 2, (WORK_SIZE - 1) / 2
    ys, xs = np.nonzero((magnitude >= np.percentile(magnitude, 90)) & (magnitude > 0))
    uy, ux = gy[ys, xs] / magnitude[ys, xs], gx[ys, xs] / magnitude[ys, xs]
    steps = np.arange(-0.5 * WORK_SIZE, 0.5 * WORK_SIZE + 1)
    vy = np.rint(ys[:, None] + uy[:, None] * steps).astype(np.int64).ravel()
    vx = np.rint(xs[:, None] + ux[:, None] * steps).astype(np.int64).ravel()
    keep = (vy >= 0) & (vy < WORK_SIZE) & (vx >= 0) & (vx < WORK_SIZE)
    votes = np.bincount(vy[keep] * WORK_SIZE + vx[keep], minlength=WORK_SIZE * WORK_SIZE)
    votes = ndi.gaussian_filter(votes.reshape(WORK_SIZE, WORK_SIZE).astype(np.float32), 1.5)
    py, px = np.unravel_index(int(np.argmax(votes)), votes.shape)
    top, bottom, left, right = max(py - 3, 0), min(py + 4, WORK_SIZE), max(px - 3, 0), min(px + 4, WORK_SIZE)
    window = votes[top:bottom, left:right]  # clipped at the border, the grid with it
    wy, wx = np.mgrid[top:bottom, left:right]
    weight = window - window.min()
    total = weight.sum() + 1e-12
    return float((wy * weight).sum() / total), float((wx * weight).sum() / total)


def _scale_lag(a: Fingerprint, b: Fingerprint) -> float:
    """Shift, in log-radius bins, that puts a's rings onto b's (b is exp(lag * step) times larger)."""
    lags = np.arange(-int(_MAX_LOG_SCALE / RADIAL_LOG_STEP), int(_MAX_LOG_SCALE / RADIAL_LOG_STEP) + 1)
    n = RADIAL_BINS
    scores = []
    for lag in lags:
        lo, hi = max(0, -lag), min(n, n - lag)
        x, y = a.radial_profile[lo:hi], b.radial_profile[lo + lag : hi + lag]
        x, y = x - x.mean(), y - y.mean()
        scores.append(float((x * y).sum() / (np.sqrt((x * x).sum() * (y * y).sum()) + 1e-12)))
    scores = np.array(scores)
    i = int(np.argmax(scores))
    offset = 0.0
    if 0 < i < len(scores) - 1:  # parabolic refinement to a fraction of a bin
        left, mid, right = scores[i - 1], scores[i], scores[i + 1]
        curvature = left - 2 * mid + right
        if curvature < 0:
            offset = 0.5 * (left - right) / curvature
    return lags[i] + offset


def match_score(a: Fingerprint, b: Fingerprint) -> float:
    """Peak mean per-ring correlation of a and b over rotations and flips, scales aligned.

    b's rings are interpolated at a's radii (a fractional log-radius shift).
    irfft(A * conj(B))[s] = sum_t a[t + s] b[t]; reversing b's angle axis (a
    mirror image) conjugates its spectrum.
    """
    lag = _scale_lag(a, b)
    whole = int(np.floor(lag))
    frac = lag - whole
    lo, hi = max(SCORE_FIRST_RING, -whole), min(RADIAL_BINS, RADIAL_BINS - whole - 1)
    spec_a = a.polar_spectrum[lo:hi]
    spec_b = (1 - frac) * b.polar_spectrum[lo + whole : hi + whole] + frac * b.polar_spectrum[lo + whole + 1 : hi + whole + 1]
    spec_b = spec_b / np.sqrt(2 * (np.abs(spec_b) ** 2).sum(axis=1, keepdims=True) / POLAR_ANGLES + 1e-12)
    best = -1.0
    for cross in (spec_a * np.conj(spec_b), spec_a * spec_b):
        corr = np.fft.irfft(cross.sum(axis=0), n=POLAR_ANGLES)
        best = max(best, float(corr.max()) / (hi - lo))
    return best


@dataclass
class PhotoGroups:
    """Result of grouping: group index per image and what joined them."""

    group_of: np.ndarray
    exact_duplicate_pairs: int
    content_matches: list[tuple[int, int, float]] = field(default_factory=list)
    registered_pairs: int = 0  # candidate pairs registered pixel to pixel
    registration_matches: list[tuple[int, int, float]] = field(default_factory=list)  # (a, b, correlation)
    capture_joins: int = 0  # images joined because their source names them captures of one object

    @property
    def n_groups(self) -> int:
        return int(self.group_of.max()) + 1 if len(self.group_of) else 0

    @property
    def n_merged_images(self) -> int:
        """Images that share their group with at least one other image."""
        counts = np.bincount(self.group_of)
        return int(counts[counts > 1].sum())

    def summary(self) -> dict:
        return {
            "images": int(len(self.group_of)),
            "groups": self.n_groups,
            "groups_with_several_images": int((np.bincount(self.group_of) > 1).sum()),
            "largest_group": int(np.bincount(self.group_of).max()) if len(self.group_of) else 0,
            "images_in_shared_groups": self.n_merged_images,
            "exact_duplicate_pairs": self.exact_duplicate_pairs,
            "content_matches": len(self.content_matches),
            "registered_pairs": self.registered_pairs,
            "registration_matches": len(self.registration_matches),
            "capture_joins": self.capture_joins,
        }


def find_photo_groups(
    sha256s: Sequence[str],
    fingerprints: Sequence[Fingerprint],
    *,
    threshold: float = DEFAULT_MATCH_THRESHOLD,
    candidates: int = DEFAULT_CANDIDATES,
    progress: Callable[[Iterable, str], Iterable] | None = None,
    register: Callable[[int, int], tuple[bool, float]] | None = None,
    registration_min_score: float = REGISTRATION_MIN_SCORE,
    captures: Sequence[str | None] | None = None,
    fingerprint_joins: Sequence[bool] | None = None,
) -> PhotoGroups:
    """Group images that show the same photograph: ``sha256s[i]`` and ``fingerprints[i]`` describe image i.

    ``register(i, j)``, when given, registers images i and j and returns
    (one photo?, correlation); it is asked about candidate pairs scoring from
    ``registration_min_score`` up to the threshold that are not yet joined.
    ``captures[i]``, where not None, names the capture series image i belongs
    to by its source's own account (one object photographed under several
    lightings, :func:`.sources.mtd.capture_series`): images of one series are
    one group whatever their content says. ``fingerprint_joins[i]`` False
    marks an image whose fingerprint score alone says little (not an
    impeller: on the magnetic tiles the score chains unrelated tiles into
    groups of over a hundred): no pair with such an image is joined on its
    score; from ``registration_min_score`` up it is registered instead (and
    without ``register``, not joined).
    """
    progress = progress or no_progress
    n = len(sha256s)
    joined = _UnionFind(n)
    first_of: dict[str, int] = {}
    unique: list[int] = []
    exact_pairs = capture_joins = 0
    series_first: dict[str, int] = {}
    for i, series in enumerate(captures or ()):
        if series is None:
            continue
        if series in series_first:
            joined.union(series_first[series], i)
            capture_joins += 1
        else:
            series_first[series] = i
    for i, digest in enumerate(sha256s):
        if digest in first_of:
            joined.union(first_of[digest], i)
            exact_pairs += 1
        else:
            first_of[digest] = i
            unique.append(i)

    matches: list[tuple[int, int, float]] = []
    to_register: list[tuple[float, int, int]] = []
    if len(unique) > 1:
        descriptors = np.stack([fingerprints[i].descriptor for i in unique])
        k = min(candidates, len(unique) - 1)
        neighbours = _nearest_neighbours(descriptors, k)
        pairs = sorted({(min(u, v), max(u, v)) for u in range(len(unique)) for v in neighbours[u]})
        for u, v in progress(pairs, "comparing similar photos"):
            a, b = unique[u], unique[v]
            score = match_score(fingerprints[a], fingerprints[b])
            trusted = fingerprint_joins is None or (fingerprint_joins[a] and fingerprint_joins[b])
            if score >= threshold and trusted:
                matches.append((a, b, score))
                joined.union(a, b)
            elif register is not None and score >= registration_min_score:
                to_register.append((score, a, b))

    registered, registration_matches = 0, []
    # Best candidates first: once two images are joined, no pair between their groups needs registering.
    to_register.sort(key=lambda t: (-t[0], t[1], t[2]))
    for _, a, b in (progress(to_register, "registering candidates") if to_register else ()):
        if joined.find(a) == joined.find(b):
            continue
        registered += 1
        same, correlation = register(a, b)
        if same:
            registration_matches.append((a, b, correlation))
            joined.union(a, b)
    labels = np.array([joined.find(i) for i in range(n)], dtype=np.int64)
    return PhotoGroups(_renumber_in_order(labels), exact_pairs, matches, registered, registration_matches,
                       capture_joins)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _nearest_neighbours(descriptors: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    out = np.empty((len(descriptors), k), dtype=np.int64)
    for start in range(0, len(descriptors), chunk):
        sim = descriptors[start : start + chunk] @ descriptors.T
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf
        part = np.argpartition(-sim, k, axis=1)[:, :k] if k < sim.shape[1] - 1 else np.argsort(-sim, axis=1)[:, :k]
        out[start : start + chunk] = part
    return out


def _renumber_in_order(labels: np.ndarray) -> np.ndarray:
    """Group numbers in order of first appearance, so they do not depend on the graph library."""
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    return remap[np.searchsorted(np.unique(labels), labels)]
