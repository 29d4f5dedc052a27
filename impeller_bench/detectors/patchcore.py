"""PatchCore (Roth et al., CVPR 2022): a coreset memory bank of locally aware patch features.

- Features: two middle stages of the backbone (WideResNet-50's layer2 and
  layer3 in the paper; EfficientNet-Lite0's stride-8 ``stage3`` and stride-16
  ``stage5`` by default here), the deeper one upsampled to the first one's
  grid, concatenated, each position averaged over its 3 x 3 neighbourhood.
- Memory bank: all training patches reduced by greedy k-center selection to
  ``coreset_fraction`` (10%), distances measured after a random projection
  to 128 dimensions. The quick profile caps the bank at ``coreset_max``
  (16,384) patches, a CPU economy: the selection's time grows with bank x
  patches (Magnetic Tile Defects' training side: 68,915 steps over 689,152
  patches at 10%). Splits of up to 160 training images at 256 px keep their
  10%; the README gives the cap's measured cost and effect.
- Patch score: distance to the nearest bank patch; the map is upsampled to the
  image size and smoothed (Gaussian, sigma 4).
- Image score (the paper's eq. 7): with m_test the test patch of largest
  score s, m* its nearest bank patch and N_b(m*) the b = 9 bank patches
  nearest to m* (m* among them),
  s_image = (1 - exp(|m_test - m*|) / sum_{m in N_b(m*)} exp(|m_test - m|)) * s.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import TRAINING_IMAGES_FOR_TIMING, register
from .features import (
    FeatureScorer,
    PretrainedFeatureDetector,
    PretrainedFeaturesConfig,
    ScoredByModule,
)
from .neighbours import greedy_coreset, nearest


@dataclass
class PatchCoreConfig(PretrainedFeaturesConfig):
    coreset_fraction: float = 0.1
    coreset_max: int | None = None  # at most this many bank patches (None: the fraction alone, as published)
    projection_dim: int = 128
    reweight_neighbours: int = 9


class PatchCoreScorer(FeatureScorer):
    """PatchCore's scoring as one module: nearest bank patch per grid position, the reweighted image score."""

    def __init__(self, detector: "PatchCore"):
        super().__init__(detector)
        self.register_buffer("bank", detector.bank, persistent=False)
        self.support_size = min(detector.config.reweight_neighbours, len(detector.bank))

    def grid_scores(self, features):
        h, w = features.shape[-2:]
        patches = features.permute(0, 2, 3, 1).reshape(-1, h * w, features.shape[1])  # N x P x C
        distances, rows = nearest(patches.flatten(0, 1), self.bank)
        distances, rows = distances.view(-1, h * w), rows.view(-1, h * w)
        return distances.view(-1, h, w), self.image_scores(patches, distances, rows)

    def image_scores(self, patches: torch.Tensor, distances: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Eq. 7 per image, from its N x P x C patches, their nearest-bank distances and rows (N x P)."""
        worst_distance, worst = distances.max(dim=1)  # s and m_test
        nearest_to_worst = self.bank[rows.gather(1, worst[:, None])[:, 0]]  # m*
        _, support = nearest(nearest_to_worst, self.bank, self.support_size)  # N_b(m*), m* first: N x b
        worst_patch = patches.gather(1, worst[:, None, None].expand(-1, 1, patches.shape[2]))  # N x 1 x C
        to_support = (worst_patch - self.bank[support]).square().sum(dim=2).sqrt()  # N x b
        return (1 - torch.softmax(to_support, dim=1)[:, 0]) * worst_distance


@register("patchcore")
class PatchCore(ScoredByModule, PretrainedFeatureDetector):
    config_class = PatchCoreConfig
    scorer_class = PatchCoreScorer
    layer_role = "middle"
    neighbourhood = 3
    profiles = {"paper": {}, "quick": {"coreset_max": 16384}}

    def bank_size(self, patches: int) -> int:
        """Patches the coreset keeps of ``patches``: the fraction, at most ``coreset_max``."""
        count = max(1, round(self.config.coreset_fraction * patches))
        return count if self.config.coreset_max is None else min(count, self.config.coreset_max)

    def fit(self, images, progress=None, groups=None):
        self._require_images(images)
        features = self.patch_features(images, progress)
        patches = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        count = self.bank_size(len(patches))
        chosen = greedy_coreset(patches, count, self.config.projection_dim, self.config.seed, progress)
        self.bank = patches[chosen.to(patches.device)].contiguous()
        self.fitted = True
        return self

    def prepare_untrained(self):
        grid = self.config.image_size // 8
        channels = self.feature_channels()
        count = self.bank_size(TRAINING_IMAGES_FOR_TIMING * grid * grid)
        self.bank = torch.randn(count, channels, generator=torch.Generator().manual_seed(0)).to(self.device)
        self.fitted = True

    def memory_size(self):
        self.require_fitted()
        return {"bank_patches": len(self.bank)}

    def state_dict(self):
        return {"bank": self.bank}

    def state_spec(self):
        return {"bank": (("N", self.feature_channels()), torch.float32)}

    def load_state_dict(self, state):
        self.bank = state["bank"].to(self.device)
