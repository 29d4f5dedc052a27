"""PatchCore (Roth et al., CVPR 2022): a coreset memory bank of locally aware patch features.

- Features: two middle stages of the backbone (WideResNet-50's layer2 and
  layer3 in the paper; EfficientNet-Lite0's stride-8 ``stage3`` and stride-16
  ``stage5`` by default here), the deeper one upsampled to the first one's
  grid, concatenated, each position averaged over its 3 x 3 neighbourhood.
- Memory bank: all training patches reduced by greedy k-center selection to
  ``coreset_fraction`` (10%), distances measured after a random projection
  to 128 dimensions.
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
from .features import PretrainedFeatureDetector, PretrainedFeaturesConfig
from .neighbours import greedy_coreset, nearest


@dataclass
class PatchCoreConfig(PretrainedFeaturesConfig):
    coreset_fraction: float = 0.1
    projection_dim: int = 128
    reweight_neighbours: int = 9


@register("patchcore")
class PatchCore(PretrainedFeatureDetector):
    config_class = PatchCoreConfig
    layer_role = "middle"
    neighbourhood = 3

    def fit(self, images, progress=None):
        self._require_images(images)
        features = self.patch_features(images, progress)
        patches = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        count = max(1, round(self.config.coreset_fraction * len(patches)))
        chosen = greedy_coreset(patches, count, self.config.projection_dim, self.config.seed, progress)
        self.bank = patches[chosen.to(patches.device)].contiguous()
        self.fitted = True
        return self

    def score_images(self, images):
        self.require_fitted()
        features = self.patch_features(images)
        n, channels, h, w = features.shape
        patches = features.permute(0, 2, 3, 1).reshape(n, h * w, channels)
        maps, scores = [], []
        with torch.no_grad():
            for image_patches in patches:
                distances, nearest_rows = nearest(image_patches, self.bank)
                distances, nearest_rows = distances[:, 0], nearest_rows[:, 0]
                maps.append(distances.view(h, w))
                scores.append(self._image_score(image_patches, distances, nearest_rows))
        height, width = images[0].shape[:2]
        return torch.stack(scores).cpu().numpy(), self.finish_maps(torch.stack(maps), (height, width))

    def _image_score(self, patches, distances, nearest_rows) -> torch.Tensor:
        worst = int(distances.argmax())
        b = min(self.config.reweight_neighbours, len(self.bank))
        _, support = nearest(self.bank[nearest_rows[worst]][None], self.bank, b)  # N_b(m*), m* first
        to_support = torch.cdist(patches[worst][None], self.bank[support[0]])[0]
        weight = 1 - torch.softmax(to_support, dim=0)[0]
        return weight * distances[worst]

    def prepare_untrained(self):
        grid = self.config.image_size // 8
        channels = self.feature_channels()
        count = round(self.config.coreset_fraction * TRAINING_IMAGES_FOR_TIMING * grid * grid)
        self.bank = torch.randn(count, channels, generator=torch.Generator().manual_seed(0)).to(self.device)
        self.fitted = True

    def state_dict(self):
        return {"bank": self.bank}

    def load_state_dict(self, state):
        self.bank = state["bank"].to(self.device)
