"""Shared machinery of the detectors built on a frozen pretrained backbone (PatchCore, PaDiM, SPADE, AST).

The backbone's weights are not part of a saved detector: ``load`` rebuilds the
backbone from the configuration (name and weights file, checksummed) and
restores only what the method learnt (memory bank, Gaussians, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..backbones import backbone_spec, imagenet_tensor, load_backbone, weights_path
from ..errors import ImpellerBenchError
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

    def feature_channels(self) -> int:
        """Channels of the method's features (one forward pass of a small blank image)."""
        return self.patch_features([np.zeros((64, 64), np.uint8)]).shape[1]

    def finish_maps(self, low_resolution: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """N x h x w feature-grid scores -> N x H x W maps: bilinear upsampling, then Gaussian smoothing."""
        maps = F.interpolate(low_resolution[:, None].float(), size=size, mode="bilinear", align_corners=False)
        maps = maps[:, 0].cpu().numpy()
        if self.config.blur_sigma > 0:
            maps = ndi.gaussian_filter(maps, sigma=(0, self.config.blur_sigma, self.config.blur_sigma))
        return maps

    def _require_images(self, images, minimum: int = 1):
        if len(images) < minimum:
            raise ImpellerBenchError(f"{self.name} needs at least {minimum} training image(s), got {len(images)}")

    def describe(self):
        weights = self.config.backbone_weights or str(weights_path(self.config.backbone))
        return super().describe() | {"backbone": self.config.backbone, "layers": self.layers,
                                     "backbone_weights": weights}
