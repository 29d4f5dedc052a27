"""SPADE (Cohen & Hoshen, 2020): nearest neighbours of whole images, then of pixels within them.

- Image score: mean Euclidean distance of the image's global feature (the
  spatial mean of the backbone's last map: WideResNet-50's pooled layer4 in
  the paper, EfficientNet-Lite0's pooled ``head`` by default here) to its
  ``neighbours`` nearest training images (k = 50, capped by the number of
  training images).
- Pixel score: for each position of the test image's feature pyramid (three
  stages of strides 4, 8 and 16, upsampled to the stride-4 grid and
  concatenated), the distance to the nearest position of any kind among the
  pyramids of those k nearest training images; the map is upsampled to the
  image size and smoothed (Gaussian, sigma 4).

The training pyramids are kept whole (400 images at 256 x 256 with
EfficientNet-Lite0: 400 x 176 x 64 x 64 float32, 1.2 GB).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import TRAINING_IMAGES_FOR_TIMING, register
from .features import PretrainedFeatureDetector, PretrainedFeaturesConfig
from .neighbours import nearest


@dataclass
class SPADEConfig(PretrainedFeaturesConfig):
    neighbours: int = 50


@register("spade")
class SPADE(PretrainedFeatureDetector):
    config_class = SPADEConfig
    layer_role = "pyramid"

    def _features(self, images, progress=None, label="features"):
        pooled, pyramids = [], []
        with torch.no_grad():
            for x in self._batches(images, label, progress):
                pooled.append(self.backbone.pooled(x))
                pyramids.append(self.backbone.patch_features(x, self.layers, 1))
        return torch.cat(pooled), torch.cat(pyramids)

    def fit(self, images, progress=None, groups=None):
        self._require_images(images)
        self.global_bank, self.pyramid_bank = self._features(images, progress)
        self.fitted = True
        return self

    def score_images(self, images):
        self.require_fitted()
        pooled, pyramids = self._features(images, label="scoring")
        k = min(self.config.neighbours, len(self.global_bank))
        distances, neighbours = nearest(pooled, self.global_bank, k)
        channels, h, w = pyramids.shape[1:]
        maps = []
        with torch.no_grad():
            for pyramid, rows in zip(pyramids, neighbours):
                bank = self.pyramid_bank[rows].permute(0, 2, 3, 1).reshape(-1, channels)
                queries = pyramid.permute(1, 2, 0).reshape(-1, channels)
                maps.append(nearest(queries, bank)[0][:, 0].view(h, w))
        height, width = images[0].shape[:2]
        return distances.mean(dim=1).cpu().numpy(), self.finish_maps(torch.stack(maps), (height, width))

    def prepare_untrained(self):
        pooled, pyramid = self._features([torch.zeros(self.config.image_size, self.config.image_size,
                                                      dtype=torch.uint8).numpy()])
        n = TRAINING_IMAGES_FOR_TIMING
        generator = torch.Generator().manual_seed(0)
        self.global_bank = torch.randn(n, pooled.shape[1], generator=generator).to(self.device)
        self.pyramid_bank = torch.randn(n, *pyramid.shape[1:], generator=generator).to(self.device)
        self.fitted = True

    def memory_size(self):
        self.require_fitted()
        return {"bank_images": len(self.global_bank)}

    def state_dict(self):
        return {"global_bank": self.global_bank, "pyramid_bank": self.pyramid_bank}

    def state_spec(self):
        pooled, pyramid = self._features([np.zeros((self.config.image_size,) * 2, np.uint8)])
        return {"global_bank": (("N", pooled.shape[1]), torch.float32),
                "pyramid_bank": (("N", *pyramid.shape[1:]), torch.float32)}  # N: the training images

    def load_state_dict(self, state):
        self.global_bank = state["global_bank"].to(self.device)
        self.pyramid_bank = state["pyramid_bank"].to(self.device)
