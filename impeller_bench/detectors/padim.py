"""PaDiM (Defard et al., ICPR 2021): a Gaussian per feature-grid position, Mahalanobis distance as the score.

- Features: three stages of strides 4, 8 and 16 (ResNet's layer1-3 in the
  paper; EfficientNet-Lite0's ``stage2``, ``stage3``, ``stage5`` by default
  here), upsampled to the stride-4 grid and concatenated; a seeded random
  subset of ``channels`` (100, the paper's choice for ResNet-18) is kept.
- At each grid position (i, j): the mean mu_ij and covariance
  Sigma_ij + 0.01 I of the training images' features there.
- Score at (i, j): sqrt((x - mu_ij)^T Sigma_ij^-1 (x - mu_ij)); the map is
  upsampled to the image size and smoothed (Gaussian, sigma 4); the image
  score is the map's maximum.

Statistics are accumulated image batch by image batch (float64), so memory
does not grow with the number of training images.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import register
from .features import (
    FeatureScorer,
    PretrainedFeatureDetector,
    PretrainedFeaturesConfig,
    ScoredByModule,
)


@dataclass
class PaDiMConfig(PretrainedFeaturesConfig):
    channels: int = 100
    regularisation: float = 0.01


def kept_embeddings(features: torch.Tensor, kept_channels: torch.Tensor) -> torch.Tensor:
    """N x C x h x w features -> N x P x d: the kept channels at every grid position (P = h * w)."""
    return features.index_select(1, kept_channels).flatten(2).transpose(1, 2)


class PaDiMScorer(FeatureScorer):
    """PaDiM's scoring as one module: Mahalanobis distance at each grid position, the map's maximum."""

    def __init__(self, detector: "PaDiM"):
        super().__init__(detector)
        self.register_buffer("kept_channels", detector.kept_channels, persistent=False)
        self.register_buffer("mean", detector.mean, persistent=False)
        self.register_buffer("precision", detector.precision, persistent=False)

    def grid_scores(self, features):
        h, w = features.shape[-2:]
        diff = kept_embeddings(features, self.kept_channels) - self.mean
        squared = torch.einsum("npd,pde,npe->np", diff, self.precision, diff).clamp_min(0)
        return squared.sqrt().view(-1, h, w), None


@register("padim")
class PaDiM(ScoredByModule, PretrainedFeatureDetector):
    config_class = PaDiMConfig
    scorer_class = PaDiMScorer
    layer_role = "pyramid"

    def fit(self, images, progress=None, groups=None):
        self._require_images(images, 2)
        channels_available = self.feature_channels()
        generator = torch.Generator().manual_seed(self.config.seed)
        keep = min(self.config.channels, channels_available)
        self.kept_channels = torch.randperm(channels_available, generator=generator)[:keep].sort().values.to(self.device)
        total = sum_ = outer = None
        with torch.no_grad():
            for x in self._batches(images, "features", progress):
                e = kept_embeddings(self.backbone.patch_features(x, self.layers, 1), self.kept_channels).double()
                if sum_ is None:
                    total, sum_, outer = 0, torch.zeros_like(e[0]), torch.zeros(e.shape[1], keep, keep, dtype=e.dtype,
                                                                                 device=e.device)
                total += len(e)
                sum_ += e.sum(0)
                outer += torch.einsum("npd,npe->pde", e, e)
        mean = sum_ / total
        covariance = (outer - total * torch.einsum("pd,pe->pde", mean, mean)) / (total - 1)
        covariance += self.config.regularisation * torch.eye(keep, dtype=covariance.dtype, device=covariance.device)
        self.mean = mean.float()
        self.precision = torch.linalg.inv(covariance).float()
        self.fitted = True
        return self

    def prepare_untrained(self):
        keep = min(self.config.channels, self.feature_channels())
        positions = (self.config.image_size // 4) ** 2
        self.kept_channels = torch.arange(keep, device=self.device)
        self.mean = torch.zeros(positions, keep, device=self.device)
        self.precision = torch.eye(keep, device=self.device).expand(positions, keep, keep).contiguous()
        self.fitted = True

    def state_dict(self):
        return {"kept_channels": self.kept_channels, "mean": self.mean, "precision": self.precision}

    def state_spec(self):
        keep = min(self.config.channels, self.feature_channels())
        with torch.no_grad():  # the feature grid's positions at this input size
            size = self.config.image_size
            grid = self.backbone.patch_features(torch.zeros(1, 3, size, size, device=self.device), self.layers, 1)
        positions = grid.shape[2] * grid.shape[3]
        return {"kept_channels": ((keep,), torch.int64), "mean": ((positions, keep), torch.float32),
                "precision": ((positions, keep, keep), torch.float32)}

    def load_state_dict(self, state):
        self.kept_channels = state["kept_channels"].to(self.device)
        self.mean = state["mean"].to(self.device)
        self.precision = state["precision"].to(self.device)
