"""EfficientAD (Batzner et al., WACV 2024) and the paper's variant ("ours"), one implementation.

- Teacher T and student S are patch description networks (PDN, small or
  medium, no padding): 256 x 256 -> 56 x 56 (image size s -> s/4 - 8).
  The student has twice the teacher's 384 channels: the first half imitates
  T, the second half imitates the autoencoder.
- Autoencoder A: five stride-2 convolutions and one valid convolution down to
  a 64 x 1 x 1 latent, then a decoder back to the teacher's output size:
  ``bilinear`` (published: resize + conv k4 p2 steps, dropout) or
  ``transposed`` (ours: transposed convolutions, no dropout).
- Losses: the hard-feature loss (mean of the squared T-S differences at or
  above their 0.999 quantile), L_AE = mean (T(x') - A(x'))^2 and
  L_STAE = mean (A(x') - S'(x'))^2 on an augmented x'; Adam, lr 1e-4,
  weight decay 1e-5, lr x 0.1 after 95% of the steps. No penalty term (no
  ImageNet images offline); ``describe()`` records that.
- Maps: local = channel mean of (T - S)^2, global = channel mean of
  (A - S')^2, each mapped to 0.1 (M - q_a) / (q_b - q_a) with its 0.9 and
  0.995 quantiles over normal images held out from training (a seeded 10% of
  the training images, never the test set); their mean, padded by 4 pixels
  per side and resized bilinearly to the image size, is the anomaly map; its
  maximum is the image score.

Transposed-decoder size arithmetic: H_out = stride * (H_in - 1) + kernel - 2 * padding.
With t = the teacher's output size (56 for 256 x 256) and t divisible by 8:
ConvT(k = t/8, s = 1, p = 0): 1 -> t/8; then three ConvT(k = 4, s = 2, p = 1):
h -> 2h, so t/8 -> t/4 -> t/2 -> t. Every kernel is a multiple of its stride,
so each output pixel gets the same number of taps (no checkerboard).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import images01, load_state_dict, normalise
from ..errors import ImpellerBenchError
from ..progress import TrainingMeter
from .base import Detector, register

TEACHER_CHANNELS = 384
LATENT_CHANNELS = 64
MAP_PADDING = 4


def teacher_size(image_size: int) -> int:
    """Output side of a PDN (no padding) for a square input: s -> s/4 - 8 for s divisible by 4."""
    size = image_size
    for kernel, pool in ((4, True), (4, True), (3, False), (4, False)):
        size = size - kernel + 1
        if pool:
            size = (size - 2) // 2 + 1
    return size


def pdn(out_channels: int, size: str = "small") -> nn.Sequential:
    """Patch description network; module indices follow the published EfficientAD files."""
    if size == "small":
        return nn.Sequential(
            nn.Conv2d(3, 128, 4), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Conv2d(128, 256, 4), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Conv2d(256, 256, 3), nn.ReLU(),
            nn.Conv2d(256, out_channels, 4),
        )
    if size == "medium":
        return nn.Sequential(
            nn.Conv2d(3, 256, 4), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Conv2d(256, 512, 4), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Conv2d(512, 512, 1), nn.ReLU(),
            nn.Conv2d(512, 512, 3), nn.ReLU(),
            nn.Conv2d(512, out_channels, 4), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 1),
        )
    raise ImpellerBenchError(f"unknown PDN size {size!r} (small or medium)")


# anomalib names its PDN convolutions conv1, conv2, ...; the published files use Sequential indices.
_CONV_INDICES = {"small": (0, 3, 6, 8), "medium": (0, 3, 6, 8, 10, 12)}


def teacher_state_from_file(path, size: str) -> dict[str, torch.Tensor]:
    """A pretrained teacher's state dict, from the published layout or anomalib's (keys mapped)."""
    state = load_state_dict(path)
    state = {k.removeprefix("module.").removeprefix("teacher."): v for k, v in state.items()}
    if any(k.startswith("conv") for k in state):
        indices = _CONV_INDICES[size]
        state = {f"{indices[int(k[4]) - 1]}.{k.split('.', 1)[1]}": v for k, v in state.items() if k.startswith("conv")}
    return state


class AutoEncoder(nn.Module):
    def __init__(self, image_size: int = 256, decoder: str = "bilinear", dropout: float = 0.2):
        super().__init__()
        if image_size % 32:
            raise ImpellerBenchError(f"image size {image_size} must be a multiple of 32")
        self.out_size = teacher_size(image_size)
        layers, channels = [], (3, 32, 32, 64, 64, 64)
        for cin, cout in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(LATENT_CHANNELS, LATENT_CHANNELS, image_size // 32))  # -> 1 x 1
        self.encoder = nn.Sequential(*layers)
        if decoder == "bilinear":
            self.decoder = BilinearDecoder(image_size, self.out_size, dropout)
        elif decoder == "transposed":
            self.decoder = TransposedDecoder(self.out_size, dropout)
        else:
            raise ImpellerBenchError(f"unknown decoder {decoder!r} (bilinear or transposed)")

    def forward(self, x):
        return self.decoder(self.encoder(x))


class BilinearDecoder(nn.Module):
    """The published decoder: bilinear resizes, each followed by conv k4 s1 p2 (+1 pixel), ReLU, dropout."""

    SIZES_AT_256 = (3, 8, 15, 32, 63, 127)

    def __init__(self, image_size: int, out_size: int, dropout: float):
        super().__init__()
        self.sizes = [max(1, round(s * image_size / 256)) for s in self.SIZES_AT_256]
        self.out_size = out_size
        self.convs = nn.ModuleList(nn.Conv2d(LATENT_CHANNELS, LATENT_CHANNELS, 4, padding=2) for _ in self.sizes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.tail = nn.Sequential(
            nn.Conv2d(LATENT_CHANNELS, LATENT_CHANNELS, 3, padding=1), nn.ReLU(),
            nn.Conv2d(LATENT_CHANNELS, TEACHER_CHANNELS, 3, padding=1),
        )

    def forward(self, z):
        for size, conv in zip(self.sizes, self.convs):
            z = self.dropout(F.relu(conv(F.interpolate(z, size=size, mode="bilinear", align_corners=False))))
        return self.tail(F.interpolate(z, size=self.out_size, mode="bilinear", align_corners=False))


class TransposedDecoder(nn.Module):
    """Ours: learnable upsampling mirroring the encoder (see the module docstring for the arithmetic)."""

    def __init__(self, out_size: int, dropout: float = 0.0):
        super().__init__()
        if out_size % 8:
            raise ImpellerBenchError(f"teacher output size {out_size} is not divisible by 8")
        c = LATENT_CHANNELS
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(c, c, out_size // 8, stride=1), nn.ReLU(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.tail = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, TEACHER_CHANNELS, 3, padding=1),
        )

    def forward(self, z):
        return self.tail(self.dropout(self.upsample(z)))


@dataclass
class EfficientADConfig:
    decoder: str = "bilinear"
    dropout: float = 0.2
    pdn: str = "small"
    image_size: int = 256
    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-5
    hard_quantile: float = 0.999
    validation_fraction: float = 0.1
    teacher_weights: str | None = None  # None: a seeded random teacher, labelled as such
    # Training arithmetic: "float32" (published), or "bfloat16" mixed precision (weights, loss and scoring stay
    # float32), or "auto" = bfloat16 where the hardware runs it natively (CUDA, or a CPU with bf16 units), else float32.
    precision: str = "float32"
    seed: int = 0


@dataclass
class OursConfig(EfficientADConfig):
    decoder: str = "transposed"
    dropout: float = 0.0


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The published autoencoder-input augmentation: one of brightness, contrast, saturation, factor in [0.8, 1.2]."""
    choice = int(torch.randint(3, (1,), generator=generator))
    factor = float(torch.empty(1).uniform_(0.8, 1.2, generator=generator))
    if choice == 0:
        return (x * factor).clamp(0, 1)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    reference = gray.mean(dim=(2, 3), keepdim=True) if choice == 1 else gray
    return (reference + factor * (x - reference)).clamp(0, 1)


@register("efficientad")
class EfficientAD(Detector):
    config_class = EfficientADConfig
    # "quick" is the CPU default: 128 x 128 inputs, batches of 4, bfloat16 mixed precision where the hardware
    # has it (3.3x faster per step on a 2-core CPU with AMX), and a step count that keeps `run ours` on the
    # built-in data under 3 minutes.
    profiles = {
        "paper": {"steps": 70_000, "batch_size": 1, "image_size": 256, "precision": "float32"},
        "quick": {"steps": 400, "batch_size": 4, "image_size": 128, "precision": "auto"},
    }

    def __init__(self, config, name, device=None):
        super().__init__(config, name, device)
        c = config
        if c.precision not in ("float32", "bfloat16", "auto"):
            raise ImpellerBenchError(f"unknown precision {c.precision!r} (float32, bfloat16 or auto)")
        torch.manual_seed(c.seed)
        self.teacher = pdn(TEACHER_CHANNELS, c.pdn)
        self.student = pdn(2 * TEACHER_CHANNELS, c.pdn)
        self.autoencoder = AutoEncoder(c.image_size, c.decoder, c.dropout)
        if c.teacher_weights:
            self.teacher.load_state_dict(teacher_state_from_file(c.teacher_weights, c.pdn))
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.buffers = {name: torch.zeros(shape) for name, shape in (
            ("teacher_mean", (1, TEACHER_CHANNELS, 1, 1)), ("teacher_std", (1, TEACHER_CHANNELS, 1, 1)),
            ("quantiles", (4,)))}
        self._to_device()

    @property
    def training_precision(self) -> str:
        """The configured precision, with "auto" resolved for this device."""
        precision = self.config.precision
        if precision != "auto":
            return precision
        if self.device.type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        native = self.device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return "bfloat16" if native else "float32"

    def _to_device(self):
        for module in (self.teacher, self.student, self.autoencoder):
            module.to(self.device)
        self.buffers = {k: v.to(self.device) for k, v in self.buffers.items()}

    # ----------------------------------------------------------------- data

    def _batch01(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 images -> float [0, 1] at the model's size, on the CPU (moved per batch)."""
        return images01(images, self.config.image_size)

    def _teacher(self, x01: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (self.teacher(normalise(x01)) - self.buffers["teacher_mean"]) / self.buffers["teacher_std"]

    # ----------------------------------------------------------------- training

    def fit(self, images, progress=None):
        c = self.config
        if len(images) < 2:
            raise ImpellerBenchError("EfficientAD needs at least two training images")
        generator = torch.Generator().manual_seed(c.seed)
        data = self._batch01(images)
        order = torch.randperm(len(data), generator=generator)
        n_val = max(1, int(round(c.validation_fraction * len(data))))
        validation, train = data[order[:n_val]], data[order[n_val:]]
        # The teacher is frozen and sees the unaugmented images in the student loss: its outputs are computed once.
        train_targets = self._fit_teacher_statistics(train)
        self.teacher.eval()
        self.student.train()
        self.autoencoder.train()
        parameters = list(self.student.parameters()) + list(self.autoencoder.parameters())
        optimiser = torch.optim.Adam(parameters, lr=c.lr, weight_decay=c.weight_decay)
        schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=max(1, int(0.95 * c.steps)), gamma=0.1)
        meter = TrainingMeter()
        steps = range(c.steps)
        bfloat16 = self.training_precision == "bfloat16"
        layout = torch.channels_last if bfloat16 else torch.contiguous_format  # what oneDNN's bf16 kernels want
        for module in (self.student, self.autoencoder, self.teacher):
            module.to(memory_format=layout)
        for _ in (progress(steps, "training", meter.status) if progress else steps):
            meter.tick()
            pick = torch.randint(len(train), (c.batch_size,), generator=generator)
            x = train[pick].to(self.device).contiguous(memory_format=layout)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bfloat16):
                loss = self._loss(x, train_targets[pick].to(self.device), _augment(x, generator))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            meter.loss = float(loss.detach())
        for module in (self.student, self.autoencoder, self.teacher):
            module.to(memory_format=torch.contiguous_format)
        self.student.eval()
        self.autoencoder.eval()
        self._fit_map_quantiles(validation)
        self.last_loss = meter.loss
        self.fitted = True
        return self

    def _fit_teacher_statistics(self, train: torch.Tensor) -> torch.Tensor:
        """Sets the per-channel mean and std; returns the normalised teacher outputs (on the CPU)."""
        outputs = []
        with torch.no_grad():
            for chunk in train.split(8):
                outputs.append(self.teacher(normalise(chunk.to(self.device))).cpu())
        stacked = torch.cat(outputs)
        mean = stacked.mean(dim=(0, 2, 3), keepdim=True)
        std = stacked.std(dim=(0, 2, 3), keepdim=True) + 1e-6
        self.buffers["teacher_mean"], self.buffers["teacher_std"] = mean.to(self.device), std.to(self.device)
        return (stacked - mean) / std

    def _loss(self, x: torch.Tensor, target: torch.Tensor, x_aug: torch.Tensor) -> torch.Tensor:
        c = self.config
        student = self.student(normalise(x))[:, :TEACHER_CHANNELS].float()
        distance = (target - student) ** 2
        hard = distance[distance >= torch.quantile(distance.flatten()[: 2 ** 24], c.hard_quantile)]
        loss_st = hard.mean()
        target_aug = self._teacher(x_aug).float()
        ae = self.autoencoder(normalise(x_aug)).float()
        student_ae = self.student(normalise(x_aug))[:, TEACHER_CHANNELS:].float()
        return loss_st + ((target_aug - ae) ** 2).mean() + ((ae - student_ae) ** 2).mean()

    # ----------------------------------------------------------------- scoring

    def _raw_maps(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            x = normalise(x01)
            target = self._teacher(x01)
            student = self.student(x)
            ae = self.autoencoder(x)
            local = ((target - student[:, :TEACHER_CHANNELS]) ** 2).mean(dim=1, keepdim=True)
            global_ = ((ae - student[:, TEACHER_CHANNELS:]) ** 2).mean(dim=1, keepdim=True)
        return local, global_

    def _fit_map_quantiles(self, validation: torch.Tensor) -> None:
        locals_, globals_ = [], []
        for chunk in validation.split(8):
            local, global_ = self._raw_maps(chunk.to(self.device))
            locals_.append(local.flatten())
            globals_.append(global_.flatten())
        local, global_ = torch.cat(locals_), torch.cat(globals_)
        q = torch.tensor([0.9, 0.995], device=local.device)
        self.buffers["quantiles"] = torch.cat([torch.quantile(local, q), torch.quantile(global_, q)])

    def score_images(self, images):
        self.require_fitted()
        height, width = np.asarray(images[0]).shape[:2]
        qa_l, qb_l, qa_g, qb_g = self.buffers["quantiles"]
        maps = []
        for start in range(0, len(images), 8):
            x01 = self._batch01(images[start : start + 8]).to(self.device)
            local, global_ = self._raw_maps(x01)
            combined = 0.5 * (0.1 * (local - qa_l) / (qb_l - qa_l) + 0.1 * (global_ - qa_g) / (qb_g - qa_g))
            combined = F.pad(combined, [MAP_PADDING] * 4)
            combined = F.interpolate(combined, size=(height, width), mode="bilinear", align_corners=False)
            maps.append(combined[:, 0].cpu())
        maps = torch.cat(maps).numpy()
        return maps.reshape(len(maps), -1).max(axis=1), maps

    def prepare_untrained(self):
        self.buffers["teacher_mean"].zero_()
        self.buffers["teacher_std"].fill_(1.0)
        self.buffers["quantiles"] = torch.tensor([0.0, 1.0, 0.0, 1.0], device=self.device)
        for module in (self.teacher, self.student, self.autoencoder):
            module.eval()
        self.fitted = True

    # ----------------------------------------------------------------- persistence

    def state_dict(self):
        state = {f"teacher.{k}": v for k, v in self.teacher.state_dict().items()}
        state |= {f"student.{k}": v for k, v in self.student.state_dict().items()}
        state |= {f"autoencoder.{k}": v for k, v in self.autoencoder.state_dict().items()}
        return state | {f"buffer.{k}": v for k, v in self.buffers.items()}

    def load_state_dict(self, state):
        for prefix, module in (("teacher.", self.teacher), ("student.", self.student), ("autoencoder.", self.autoencoder)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.buffers = {k[len("buffer."):]: v for k, v in state.items() if k.startswith("buffer.")}
        self._to_device()
        for module in (self.teacher, self.student, self.autoencoder):
            module.eval()

    def describe(self):
        return super().describe() | {
            "teacher": self.config.teacher_weights or f"random (seeded, untrained: seed {self.config.seed})",
            "penalty": "none (no penalty images given)",
            "training_precision": self.training_precision,
        }


@register("ours")
class Ours(EfficientAD):
    """EfficientAD whose autoencoder decodes with transposed convolutions, without dropout."""

    config_class = OursConfig
