"""AST (Rudolph et al., WACV 2023): an asymmetric student-teacher pair on frozen pretrained features.

- Features: one stride-16 stage of a pretrained backbone (EfficientNet-B5 at
  768 px in the paper; EfficientNet-Lite2's ``stage5``, 120 channels, at
  512 px by default here: Lite2 is the offline stand-in for B5), with a 2-D
  sinusoidal positional encoding (32 channels) as extra input.
- Teacher: a normalizing flow of affine coupling blocks (GLOW-style: each
  block first permutes the channels by a fixed seeded permutation, then
  transforms each half with a scale and shift computed from the other half
  and the positional encoding by 3 x 3 convolutions; scales soft-clamped at
  3), trained by maximum likelihood of a standard normal latent z.
- Student: a convolutional network (3 x 3 conv, residual blocks of two
  3 x 3 conv + batch norm + LeakyReLU, 3 x 3 conv) regressing the teacher's
  z from the same features; the asymmetry (an invertible teacher, a plain
  student) is the method's point: the flow stays well-defined off the normal
  data where a copy of the teacher's architecture would generalise.
- Anomaly map: the squared student-teacher distance, averaged over channels,
  upsampled to the image size and smoothed (Gaussian, sigma 4); image score:
  its maximum. Adam lr 2e-4, weight decay 1e-5 for both networks.

Backbone features are computed once per training image and cached.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..common.progress import TrainingMeter
from .base import register
from .features import PretrainedFeatureDetector, PretrainedFeaturesConfig


def positional_encoding(channels: int, height: int, width: int) -> torch.Tensor:
    """channels x H x W: sines and cosines of the row (first half) and column (second half) at
    geometrically spaced frequencies (the transformer encoding, in two dimensions)."""
    quarter = channels // 4
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(quarter) / max(quarter, 1))
    rows = torch.arange(height)[:, None] * frequencies  # H x quarter
    cols = torch.arange(width)[:, None] * frequencies
    encoding = torch.zeros(channels, height, width)
    encoding[0:quarter] = torch.sin(rows).T[:, :, None]
    encoding[quarter:2 * quarter] = torch.cos(rows).T[:, :, None]
    encoding[2 * quarter:3 * quarter] = torch.sin(cols).T[:, None, :]
    encoding[3 * quarter:4 * quarter] = torch.cos(cols).T[:, None, :]
    return encoding


def _subnet(cin: int, cout: int, hidden: int) -> nn.Sequential:
    last = nn.Conv2d(hidden, cout, 3, padding=1)
    nn.init.zeros_(last.weight)  # every coupling starts as the identity
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(), last)


class CouplingBlock(nn.Module):
    """Permute, then y1 = x1 exp(s(x2, c)) + t(x2, c) and y2 = x2 exp(s'(y1, c)) + t'(y1, c)."""

    def __init__(self, channels: int, condition: int, hidden: int, clamp: float, seed: int):
        super().__init__()
        self.register_buffer("permutation", torch.randperm(channels, generator=torch.Generator().manual_seed(seed)))
        self.first, self.clamp = channels // 2, clamp
        second = channels - self.first
        self.transform_first = _subnet(second + condition, 2 * self.first, hidden)
        self.transform_second = _subnet(self.first + condition, 2 * second, hidden)

    def _affine(self, net, x, given, condition):
        scale, shift = net(torch.cat([given, condition], 1)).chunk(2, dim=1)
        scale = self.clamp * 0.636 * torch.atan(scale / self.clamp)  # soft clamp to (-clamp, clamp)
        return x * torch.exp(scale) + shift, scale.flatten(1).sum(1)

    def forward(self, x, condition):
        x = x[:, self.permutation]
        x1, x2 = x[:, :self.first], x[:, self.first:]
        y1, log_det1 = self._affine(self.transform_first, x1, x2, condition)
        y2, log_det2 = self._affine(self.transform_second, x2, y1, condition)
        return torch.cat([y1, y2], 1), log_det1 + log_det2


class FlowTeacher(nn.Module):
    def __init__(self, channels: int, condition: int, hidden: int, blocks: int, clamp: float, seed: int):
        super().__init__()
        self.blocks = nn.ModuleList(CouplingBlock(channels, condition, hidden, clamp, seed + k) for k in range(blocks))

    def forward(self, x, condition):
        log_det = torch.zeros(len(x), device=x.device)
        for block in self.blocks:
            x, block_log_det = block(x, condition)
            log_det = log_det + block_log_det
        return x, log_det


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.LeakyReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.LeakyReLU())

    def forward(self, x):
        return x + self.layers(x)


class Student(nn.Module):
    def __init__(self, channels: int, condition: int, hidden: int, blocks: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels + condition, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.LeakyReLU(),
            *[_ResidualBlock(hidden) for _ in range(blocks)],
            nn.Conv2d(hidden, channels, 3, padding=1))

    def forward(self, x, condition):
        return self.layers(torch.cat([x, condition], 1))


@dataclass
class ASTConfig(PretrainedFeaturesConfig):
    backbone: str = "efficientnet_lite2"
    image_size: int = 512
    positional_channels: int = 32
    coupling_blocks: int = 4
    teacher_hidden: int = 64
    student_hidden: int = 1024
    student_blocks: int = 4
    clamp: float = 3.0
    steps: int = 12_000  # per network: the paper's 240 epochs of 400 images in batches of 8
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 1e-5


@register("ast")
class AST(PretrainedFeatureDetector):
    config_class = ASTConfig
    # quick (CPU): 300 steps per network and a 128-channel student (the paper's 1,024-channel student costs
    # about 5 GMAC per 32 x 32 feature map, several seconds per batch on 2 cores).
    profiles = {"paper": {"image_size": 768}, "quick": {"steps": 300, "student_hidden": 128}}

    def default_layers(self, spec):
        return (spec.middle[1],)  # the stride-16 stage

    def __init__(self, config, name, device=None):
        super().__init__(config, name, device)
        c = config
        channels = self.feature_channels()
        torch.manual_seed(c.seed)
        self.teacher = FlowTeacher(channels, c.positional_channels, c.teacher_hidden, c.coupling_blocks, c.clamp,
                                   c.seed).to(self.device)
        self.student = Student(channels, c.positional_channels, c.student_hidden, c.student_blocks).to(self.device)

    def _condition(self, features):
        n, _, h, w = features.shape
        encoding = positional_encoding(self.config.positional_channels, h, w).to(features.device)
        return encoding[None].expand(n, -1, -1, -1)

    def _train(self, module, loss_of, features, label, progress):
        c = self.config
        generator = torch.Generator().manual_seed(c.seed)
        optimiser = torch.optim.Adam(module.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        module.train()
        meter = TrainingMeter()
        steps = range(c.steps)
        for _ in (progress(steps, label, meter.status) if progress else steps):
            meter.tick()
            batch = features[torch.randint(len(features), (c.batch_size,), generator=generator)]
            loss = loss_of(batch, self._condition(batch))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            meter.loss = float(loss.detach())
        module.eval()
        return meter.loss

    def _negative_log_likelihood(self, features, condition):
        z, log_det = self.teacher(features, condition)
        return (0.5 * (z ** 2).flatten(1).sum(1) - log_det).mean() / z[0].numel()

    def _distillation_loss(self, features, condition):
        with torch.no_grad():
            target, _ = self.teacher(features, condition)
        return ((self.student(features, condition) - target) ** 2).mean()

    def fit(self, images, progress=None, groups=None):
        self._require_images(images, 2)  # batch norm needs two
        features = self.patch_features(images, progress)
        self.teacher_loss = self._train(self.teacher, self._negative_log_likelihood, features, "teacher", progress)
        self.student_loss = self._train(self.student, self._distillation_loss, features, "student", progress)
        self.fitted = True
        return self

    def score_images(self, images):
        self.require_fitted()
        features = self.patch_features(images, label="scoring")
        maps = []
        with torch.no_grad():
            for chunk in features.split(16):
                condition = self._condition(chunk)
                target, _ = self.teacher(chunk, condition)
                maps.append(((self.student(chunk, condition) - target) ** 2).mean(dim=1))
        height, width = images[0].shape[:2]
        maps = self.finish_maps(torch.cat(maps), (height, width))
        return maps.reshape(len(maps), -1).max(axis=1), maps

    def prepare_untrained(self):
        self.teacher.eval()
        self.student.eval()
        self.fitted = True

    def state_dict(self):
        return {f"teacher.{k}": v for k, v in self.teacher.state_dict().items()} | {
            f"student.{k}": v for k, v in self.student.state_dict().items()}

    def load_state_dict(self, state):
        self.teacher.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("teacher.")})
        self.student.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("student.")})
        self.teacher.eval()
        self.student.eval()
