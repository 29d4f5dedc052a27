"""Patch SVDD (Yi & Yoon, ACCV 2020): self-supervised patch embeddings, nearest normal patch as the score.

- Encoders (the paper's hierarchical design): ``small`` embeds a 32 x 32
  patch (eight 3 x 3 convolutions, LeakyReLU 0.1) into D = 64 dimensions;
  ``big`` embeds a 64 x 64 patch by applying ``small`` to its four 32 x 32
  quarters and combining the 2 x 2 result (conv 2 x 2 -> 128, conv 1 x 1 -> D).
- Training, on patches of the normal images only, for both patch sizes K:
  the SVDD loss (a patch and a copy shifted by at most K/32 pixels must embed
  close: mean squared distance) and the self-supervised loss (from the two
  embeddings of a patch and one of its eight neighbours, 3K/4 to K away,
  classify which neighbour it is: cross-entropy);
  loss = L_pos(64) + L_pos(32) + lambda (L_svdd(64) + L_svdd(32)), lambda = 1e-3,
  Adam lr 1e-4. Images are standardised by the training set's mean and std.
- Scoring: every K x K patch on a grid of stride 16 (K = 64) and 4 (K = 32) is
  embedded; its score is the distance to the nearest training patch embedding
  of the same size; each pixel gets the mean score of the patches that cover
  it; the two maps are multiplied; the image score is the map's maximum.

The paper trains 300 epochs of batches of 64; ``quick`` trains far fewer,
smaller batches and embeds the 32 x 32 patches on a stride-8 grid, for a
CPU (the configuration in ``meta.json`` says which).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..common.backbones import images01
from ..common.errors import ImpellerBenchError
from ..common.progress import TrainingMeter
from .base import TRAINING_IMAGES_FOR_TIMING, Detector, register
from .neighbours import nearest

# The eight neighbour directions, the classes of the position task.
DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


class SmallPatchEncoder(nn.Module):
    """32 x 32 patch -> D x 1 x 1."""

    def __init__(self, dim: int = 64):
        super().__init__()
        channels = (3, 32, 64, 128, 128, 64, 32, 32, dim)
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, 3, stride=2 if i == 0 else 1) for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])))

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.leaky_relu(x, 0.1)
        return x


class BigPatchEncoder(nn.Module):
    """64 x 64 patch -> D x 1 x 1, through the small encoder on its 2 x 2 quarters."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.small = SmallPatchEncoder(dim)
        self.combine1 = nn.Conv2d(dim, 128, 2)
        self.combine2 = nn.Conv2d(128, dim, 1)

    def forward(self, x):
        n, half = len(x), x.shape[-1] // 2
        quarters = x.unfold(2, half, half).unfold(3, half, half)  # N x C x 2 x 2 x half x half
        quarters = quarters.permute(0, 2, 3, 1, 4, 5).reshape(n * 4, x.shape[1], half, half)
        h = self.small(quarters).view(n, 2, 2, -1).permute(0, 3, 1, 2)
        return self.combine2(F.leaky_relu(self.combine1(h), 0.1))


class PositionClassifier(nn.Module):
    def __init__(self, dim: int = 64):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 128), nn.LeakyReLU(0.1), nn.Linear(128, 128), nn.LeakyReLU(0.1),
                                    nn.Linear(128, len(DIRECTIONS)))

    def forward(self, h1, h2):
        return self.layers((h1 - h2).flatten(1))


@dataclass
class PatchSVDDConfig:
    image_size: int = 256
    dim: int = 64
    steps: int = 50_000  # the paper trains 300 epochs over repeated patch samples
    batch_size: int = 64
    lr: float = 1e-4
    svdd_weight: float = 1e-3  # lambda
    stride_big: int = 16
    stride_small: int = 4
    seed: int = 0


PATCH_SIZES = {"big": 64, "small": 32}


@register("patchsvdd")
class PatchSVDD(Detector):
    config_class = PatchSVDDConfig
    # quick (CPU): batches of 16, 500 steps, the 32 x 32 grid at stride 8: on a 2-core CPU one paper-sized
    # step (batch 64, 1,280 small-encoder passes) takes seconds and the stride-4 grid ~4 s per image.
    profiles = {"paper": {}, "quick": {"steps": 500, "batch_size": 16, "stride_small": 8}}

    def __init__(self, config, name, device=None):
        super().__init__(config, name, device)
        c = config
        if c.image_size < 3 * PATCH_SIZES["big"]:  # the position task needs a 64 x 64 patch's neighbours
            raise ImpellerBenchError(f"image size {c.image_size} is below 192, the least Patch SVDD works at")
        for size, stride in ((64, c.stride_big), (32, c.stride_small)):
            if (c.image_size - size) % stride:
                raise ImpellerBenchError(f"image size {c.image_size} must exceed {size} by a multiple of the stride {stride}")
        torch.manual_seed(c.seed)
        self.encoder = BigPatchEncoder(c.dim).to(self.device)
        self.classifiers = nn.ModuleDict({k: PositionClassifier(c.dim) for k in PATCH_SIZES}).to(self.device)
        self.statistics = torch.zeros(2)  # mean and std of the training images
        self.banks: dict[str, torch.Tensor] = {}

    def _encoders(self):
        return {"big": self.encoder, "small": self.encoder.small}

    def _standardised(self, images) -> torch.Tensor:
        x = images01(images, self.config.image_size)
        return (x - self.statistics[0]) / self.statistics[1]

    # ----------------------------------------------------------------- training

    @staticmethod
    def _crop(x, rows, cols, size):
        return torch.stack([x[i, :, r:r + size, c:c + size] for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist()))])

    def _losses(self, data, size_name, generator):
        c, k = self.config, PATCH_SIZES[size_name]
        encoder, n, side = self._encoders()[size_name], c.batch_size, data.shape[-1]
        pick = torch.randint(len(data), (n,), generator=generator)
        x = data[pick]
        # Position task: a patch and one of its 8 neighbours, offset by 3K/4 plus a jitter below K/4.
        jitter = max(1, k // 4)
        reach = 3 * k // 4 + jitter
        rows = torch.randint(reach, side - k - reach + 1, (n,), generator=generator)
        cols = torch.randint(reach, side - k - reach + 1, (n,), generator=generator)
        label = torch.randint(len(DIRECTIONS), (n,), generator=generator)
        direction = torch.tensor(DIRECTIONS)[label]
        shift = 3 * k // 4 + torch.randint(jitter, (n, 2), generator=generator)
        rows2, cols2 = rows + direction[:, 0] * shift[:, 0], cols + direction[:, 1] * shift[:, 1]
        p1, p2 = self._crop(x, rows, cols, k).to(self.device), self._crop(x, rows2, cols2, k).to(self.device)
        logits = self.classifiers[size_name](encoder(p1), encoder(p2))
        position = F.cross_entropy(logits, label.to(self.device))
        # SVDD task: a patch and a copy shifted by at most K/32 pixels.
        small = max(1, k // 32)
        rows = torch.randint(small, side - k - small + 1, (n,), generator=generator)
        cols = torch.randint(small, side - k - small + 1, (n,), generator=generator)
        offset = torch.randint(-small, small + 1, (n, 2), generator=generator)
        q1 = self._crop(x, rows, cols, k).to(self.device)
        q2 = self._crop(x, rows + offset[:, 0], cols + offset[:, 1], k).to(self.device)
        svdd = ((encoder(q1) - encoder(q2)) ** 2).sum(1).mean()
        return position + c.svdd_weight * svdd

    def fit(self, images, progress=None, groups=None):
        c = self.config
        if len(images) < 1:
            raise ImpellerBenchError("Patch SVDD needs at least one training image")
        raw = images01(images, c.image_size)
        self.statistics = torch.stack([raw.mean(), raw.std() + 1e-6])
        data = (raw - self.statistics[0]) / self.statistics[1]
        generator = torch.Generator().manual_seed(c.seed)
        parameters = list(self.encoder.parameters()) + list(self.classifiers.parameters())
        optimiser = torch.optim.Adam(parameters, lr=c.lr)
        self.encoder.train()
        meter = TrainingMeter()
        steps = range(c.steps)
        for _ in (progress(steps, "training", meter.status) if progress else steps):
            meter.tick()
            loss = self._losses(data, "big", generator) + self._losses(data, "small", generator)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            meter.loss = float(loss.detach())
        self.encoder.eval()
        self.last_loss = meter.loss
        self.banks = {name: self._embed_grid(data, name, progress).flatten(0, 2) for name in PATCH_SIZES}
        self.fitted = True
        return self

    # ----------------------------------------------------------------- scoring

    def _stride(self, size_name):
        return self.config.stride_big if size_name == "big" else self.config.stride_small

    def _embed_grid(self, data: torch.Tensor, size_name: str, progress=None) -> torch.Tensor:
        """N x h x w x D embeddings of every patch on the grid."""
        k, stride = PATCH_SIZES[size_name], self._stride(size_name)
        encoder, out = self._encoders()[size_name], []
        images = progress(data, f"memory bank of {k} x {k} patches") if progress else data
        with torch.no_grad():
            for image in images:
                patches = image.unfold(1, k, stride).unfold(2, k, stride)  # C x h x w x K x K
                h, w = patches.shape[1:3]
                patches = patches.permute(1, 2, 0, 3, 4).reshape(h * w, -1, k, k)
                codes = torch.cat([encoder(chunk.to(self.device)).flatten(1) for chunk in patches.split(256)])
                out.append(codes.view(h, w, -1))
        return torch.stack(out)

    def _pixel_map(self, scores: torch.Tensor, size_name: str) -> torch.Tensor:
        """Each pixel: the mean score of the patches covering it."""
        k, stride = PATCH_SIZES[size_name], self._stride(size_name)
        window = torch.ones(1, 1, k, k, device=scores.device)
        total = F.conv_transpose2d(scores[:, None], window, stride=stride)
        coverage = F.conv_transpose2d(torch.ones_like(scores[:1, None]), window, stride=stride)
        return (total / coverage)[:, 0]

    def score_images(self, images):
        self.require_fitted()
        data = self._standardised(images)
        combined = None
        for name in PATCH_SIZES:
            grid = self._embed_grid(data, name)
            n, h, w, d = grid.shape
            distances = nearest(grid.reshape(-1, d), self.banks[name])[0].view(n, h, w)
            pixel = self._pixel_map(distances, name)
            combined = pixel if combined is None else combined * pixel
        height, width = np.asarray(images[0]).shape[:2]
        maps = F.interpolate(combined[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        maps = maps.cpu().numpy()
        return maps.reshape(len(maps), -1).max(axis=1), maps

    def prepare_untrained(self):
        self.statistics = torch.tensor([0.5, 0.25])
        self.encoder.eval()
        generator = torch.Generator().manual_seed(0)
        for name in PATCH_SIZES:
            per_image = ((self.config.image_size - PATCH_SIZES[name]) // self._stride(name) + 1) ** 2
            self.banks[name] = torch.randn(TRAINING_IMAGES_FOR_TIMING * per_image, self.config.dim, generator=generator).to(self.device)
        self.fitted = True

    def memory_size(self):
        self.require_fitted()
        return {f"bank_patches_{name}": len(bank) for name, bank in self.banks.items()}

    # ----------------------------------------------------------------- persistence

    def state_dict(self):
        state = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        state |= {f"classifiers.{k}": v for k, v in self.classifiers.state_dict().items()}
        return state | {"statistics": self.statistics} | {f"bank.{k}": v for k, v in self.banks.items()}

    def state_spec(self):
        networks = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        networks |= {f"classifiers.{k}": v for k, v in self.classifiers.state_dict().items()}
        return ({k: (tuple(v.shape), v.dtype) for k, v in networks.items()} | {"statistics": ((2,), torch.float32)}
                | {f"bank.{name}": ((f"N_{name}", self.config.dim), torch.float32) for name in PATCH_SIZES})

    def load_state_dict(self, state):
        self.encoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("encoder.")})
        self.classifiers.load_state_dict({k[12:]: v for k, v in state.items() if k.startswith("classifiers.")})
        self.statistics = state["statistics"]
        self.banks = {k[5:]: v.to(self.device) for k, v in state.items() if k.startswith("bank.")}
        self.encoder.eval()
