"""Shared machinery of the detectors built on a frozen pretrained backbone (PatchCore, PaDiM, SPADE, AST).

The backbone's weights are not part of a saved detector: ``load`` rebuilds the
backbone from the configuration (name and weights file, checksummed) and
restores only what the method learnt (memory bank, Gaussians, ...).

Detectors that export to ONNX (PaDiM, PatchCore) score through a ``FeatureScorer``:
one torch module from the [0, 1] image at the model's input size to the image
scores and the smoothed anomaly maps, which ``score_images`` runs and
``impeller_bench.inspection.export`` writes out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..common.backbones import (
    backbone_spec,
    imagenet_tensor,
    images01,
    load_backbone,
    normalise,
    weights_path,
)
from ..common.errors import ImpellerBenchError
from .base import Detector

BATCH = 16


@dataclass
class PretrainedFeaturesConfig:
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None  # None: the backbone's known file (checksummed)
    layers: list[str] | None = None  # None: the method's default layers of this backbone
    image_size: int = 256
    blur_sigma: float = 4.0  # Gaussian smoothing of the anomaly map at the image size, in pixels
    seed: int = 0


def mirror_indices(size: int, radius: int, device=None) -> torch.Tensor:
    """Indices that extend ``size`` positions by ``radius`` on each side as scipy.ndimage's "reflect" mode does
    (d c b a | a b c d | d c b a, repeating with period 2 * size)."""
    positions = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(positions >= size, 2 * size - 1 - positions, positions)


class GaussianBlur(nn.Module):
    """Gaussian smoothing of N x H x W maps as a fixed separable convolution: scipy.ndimage.gaussian_filter's
    kernel (truncated at 4 sigma) and edge mode, in operations that export to ONNX."""

    def __init__(self, sigma: float, truncate: float = 4.0):
        super().__init__()
        self.radius = int(truncate * sigma + 0.5) if sigma > 0 else 0
        offsets = np.arange(-self.radius, self.radius + 1, dtype=np.float64)
        kernel = np.exp(-0.5 * offsets ** 2 / sigma ** 2) if sigma > 0 else np.ones(1)
        self.register_buffer("kernel", torch.tensor(kernel / kernel.sum(), dtype=torch.float32), persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if self.radius == 0:
            return maps
        x = maps[:, None]
        for axis, shape in ((2, (-1, 1)), (3, (1, -1))):
            x = x.index_select(axis, mirror_indices(x.shape[axis], self.radius, x.device))
            x = F.conv2d(x, self.kernel.view(1, 1, *shape))
        return x[:, 0]


def upsample_and_smooth(grid: torch.Tensor, size: tuple[int, int], blur: GaussianBlur) -> torch.Tensor:
    """N x h x w feature-grid scores -> N x H x W maps: bilinear upsampling, then Gaussian smoothing."""
    maps = F.interpolate(grid[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return blur(maps)


def score_through(module: nn.Module, images: Sequence[np.ndarray], input_size: int, device: torch.device,
                  batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A scoring module's (scores, maps) for uint8 images, ``batch`` at a time: each image resized to
    ``input_size`` (``images01``), the maps made at the images' own size."""
    size = tuple(np.asarray(images[0]).shape[:2])
    scores, maps = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            chunk_scores, chunk_maps = module(images01(images[start:start + batch], input_size).to(device), size)
            scores.append(chunk_scores.cpu())
            maps.append(chunk_maps.cpu())
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


class ScoredByModule:
    """Mixin for a detector that scores through one torch module (exportable: ``impeller_bench.inspection.export``).

    ``scoring_module()`` is ``scorer_class(detector)`` in eval mode: x01 (N x 3 x S x S in [0, 1], S =
    ``model_input_size``) -> (scores N, maps N x S x S); called with an output size, the maps come at that
    size instead. ``score_images`` runs that module on the images resized to S and asks for the maps at the
    images' own size, so the scores and maps of a torch run and of an exported graph come from one code path."""

    scorer_class: ClassVar[type[nn.Module]]
    scoring_batch: ClassVar[int] = BATCH

    def scoring_module(self) -> nn.Module:
        """The fitted scoring as one module (shares the detector's weights: no copy)."""
        self.require_fitted()
        return self.scorer_class(self).eval()

    def score_images(self, images):
        return score_through(self.scoring_module(), images, self.model_input_size, self.device, self.scoring_batch)


class FeatureScorer(nn.Module):
    """x01 (N x 3 x S x S, [0, 1]) -> (scores N, maps N x S x S, or at ``size``): backbone features, the
    method's grid scores (``grid_scores``), upsampled and smoothed; the image score is the map's maximum
    unless the method gives its own."""

    def __init__(self, detector: "PretrainedFeatureDetector"):
        super().__init__()
        self.backbone = detector.backbone
        self.layers, self.neighbourhood = tuple(detector.layers), detector.neighbourhood
        self.model_input_size = detector.model_input_size
        self.blur = GaussianBlur(detector.config.blur_sigma).to(detector.device)

    def grid_scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """N x C x h x w features -> (N x h x w scores, N image scores or None: the map's maximum)."""
        raise NotImplementedError

    def forward(self, x01: torch.Tensor, size: tuple[int, int] | None = None):
        features = self.backbone.patch_features(normalise(x01), self.layers, self.neighbourhood)
        grid, scores = self.grid_scores(features)
        maps = upsample_and_smooth(grid, size or (self.model_input_size, self.model_input_size), self.blur)
        return (maps.amax(dim=(1, 2)) if scores is None else scores), maps


class PretrainedFeatureDetector(Detector):
    """A detector on frozen backbone features; subclasses say which layers and how to score them."""

    layer_role: ClassVar[str] = "middle"  # "middle" (strides 8, 16) or "pyramid" (strides 4, 8, 16)
    neighbourhood: ClassVar[int] = 1  # patch aggregation window (3: PatchCore's locally aware features)

    def __init__(self, config, name, device=None):
        super().__init__(config, name, device)
        spec = backbone_spec(config.backbone)
        self.layers = list(config.layers or self.default_layers(spec))
        self.backbone = load_backbone(config.backbone, config.backbone_weights).to(self.device)
        unknown = set(self.layers) - set(self.backbone.map_names())
        if unknown:
            raise ImpellerBenchError(f"{config.backbone} has no layer(s) {sorted(unknown)}; "
                                     f"it has {', '.join(self.backbone.map_names())}")

    def default_layers(self, spec) -> tuple[str, ...]:
        """The backbone's layers this method takes unless told otherwise."""
        return getattr(spec, self.layer_role)

    def _batches(self, images: Sequence[np.ndarray], label: str, progress: Callable | None):
        starts = range(0, len(images), BATCH)
        for start in (progress(starts, label) if progress else starts):
            yield imagenet_tensor(images[start:start + BATCH], self.config.image_size).to(self.device)

    def patch_features(self, images, progress=None, label: str = "features") -> torch.Tensor:
        """N x C x h x w features of the method's layers (on the device)."""
        with torch.no_grad():
            return torch.cat([self.backbone.patch_features(x, self.layers, self.neighbourhood)
                              for x in self._batches(images, label, progress)])

    @property
    def model_input_size(self) -> int:
        """The side of the square image the backbone sees (every image is resized to it)."""
        return self.config.image_size

    def feature_channels(self) -> int:
        """Channels of the method's features (one forward pass of a small blank image)."""
        return self.patch_features([np.zeros((64, 64), np.uint8)]).shape[1]

    def finish_maps(self, low_resolution: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """N x h x w feature-grid scores -> N x H x W maps: bilinear upsampling, then Gaussian smoothing."""
        blur = GaussianBlur(self.config.blur_sigma).to(low_resolution.device)
        return upsample_and_smooth(low_resolution, size, blur).cpu().numpy()

    def _require_images(self, images, minimum: int = 1):
        if len(images) < minimum:
            raise ImpellerBenchError(f"{self.name} needs at least {minimum} training image(s), got {len(images)}")

    def describe(self):
        weights = self.config.backbone_weights or str(weights_path(self.config.backbone))
        return super().describe() | {"backbone": self.config.backbone, "layers": self.layers,
                                     "backbone_weights": weights}
