"""EfficientAD (Batzner et al., WACV 2024) and the paper's variant ("ours"), one implementation.

- Teacher T: a frozen ImageNet backbone's features (the offline default, see
  ``FeatureTeacher``), a pretrained PDN from a file (the published teachers;
  the paper's setting), or a seeded random PDN (ablations only: the student
  then copies it everywhere, defects included).
- Student S: a patch description network (PDN, small or medium, no
  padding): 256 x 256 -> 56 x 56 (image size s -> s/4 - 8), with twice the
  teacher's channels: the first half imitates T, the second half imitates
  the autoencoder.
- Autoencoder A: five stride-2 convolutions and one valid convolution down to
  a 64 x 1 x 1 latent, then a decoder back to the teacher's output size:
  ``bilinear`` (published: resize + conv k4 p2 steps, dropout) or
  ``transposed`` (ours: transposed convolutions, no dropout).
- Losses: the hard-feature loss (mean of the squared T-S differences at or
  above their 0.999 quantile: the top 0.1%), L_AE = mean (T(x') - A(x'))^2 and
  L_STAE = mean (A(x') - S'(x'))^2 on an augmented x'; Adam, lr 1e-4,
  weight decay 1e-5, lr x 0.1 after 95% of the steps. No penalty term (no
  ImageNet images offline); ``describe()`` records that.
- Maps: local = channel mean of (T - S)^2, global = channel mean of
  (A - S')^2, each mapped to 0.1 (M - q_a) / (q_b - q_a) with its 0.9 and
  0.995 quantiles over normal images held out from training (a seeded 10% of
  the training images, never the test set); their mean, padded by 4 cells
  per side and resized bilinearly to the image size, is the anomaly map; its
  maximum is the image score. The published padding is 0, which outranks
  the mostly negative normalised map (a bright frame); the default pads with
  each map's minimum (``map_padding``). With ``cover_border`` the input is
  mirrored outwards first, so the map needs no frame, and the image score is
  the maximum over the cells whose patch holds no mirrored pixel. With
  ``image_score_share`` the image score is the mean of that share of the
  cells, the highest, instead of the maximum (an ablation).

The quick profile's economies (cached teacher outputs, one student pass per
step, a half-width student) are options of the same loop; the published loop
is what ``--profile paper`` runs.

Scoring is one module, ``EfficientADScorer`` (the S x S image in, scores and
maps out): ``score_images`` runs it and ``impeller_bench.export`` writes it
to ONNX.

Transposed-decoder size arithmetic: H_out = stride * (H_in - 1) + kernel - 2 * padding.
With t = the teacher's output size (56 for 256 x 256) and t divisible by 8:
ConvT(k = t/8, s = 1, p = 0): 1 -> t/8; then three ConvT(k = 4, s = 2, p = 1):
h -> 2h, so t/8 -> t/4 -> t/2 -> t. Every kernel is a multiple of its stride,
so each output pixel gets the same number of taps (no checkerboard).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import BACKBONES, backbone_spec, images01, load_backbone, load_state_dict, normalise, weights_path
from ..errors import ImpellerBenchError
from ..progress import TrainingMeter
from .base import Detector, register
from .features import ScoredByModule

TEACHER_CHANNELS = 384
LATENT_CHANNELS = 64
MAP_PADDING = 4
# A PDN's output cell i sees input pixels 4i ... 4i + 32, so 16 pixels per side are never the centre of a patch.
PDN_BORDER = 16


def teacher_size(image_size: int) -> int:
    """Output side of a PDN (no padding) for a square input: s -> s/4 - 8 for s divisible by 4."""
    size = image_size
    for kernel, pool in ((4, True), (4, True), (3, False), (4, False)):
        size = size - kernel + 1
        if pool:
            size = (size - 2) // 2 + 1
    return size


def pdn(out_channels: int, size: str = "small", width: float = 1.0) -> nn.Sequential:
    """Patch description network; module indices follow the published EfficientAD files.

    ``width`` scales the hidden channels (1: published; a CPU budget may take a narrower student)."""
    a, b = (max(8, round(c * width)) for c in ((128, 256) if size == "small" else (256, 512)))
    if size == "small":
        return nn.Sequential(
            nn.Conv2d(3, a, 4), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Conv2d(a, b, 4), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Conv2d(b, b, 3), nn.ReLU(),
            nn.Conv2d(b, out_channels, 4),
        )
    if size == "medium":
        return nn.Sequential(
            nn.Conv2d(3, a, 4), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Conv2d(a, b, 4), nn.ReLU(), nn.AvgPool2d(2, 2),
            nn.Conv2d(b, b, 1), nn.ReLU(),
            nn.Conv2d(b, b, 3), nn.ReLU(),
            nn.Conv2d(b, out_channels, 4), nn.ReLU(),
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


def pca_projection(vectors: torch.Tensor, channels: int, seed: int, sample_size: int = 50_000):
    """(mean, C x channels projection) of a seeded sample of the rows of ``vectors``: the top principal
    directions as columns; zero columns where the vectors have fewer dimensions than ``channels``."""
    generator = torch.Generator().manual_seed(seed)
    sample = vectors[torch.randperm(len(vectors), generator=generator)[:sample_size].to(vectors.device)]
    mean = sample.mean(0)
    components = torch.linalg.svd(sample - mean, full_matrices=False)[2][:channels]
    if len(components) < channels:
        components = torch.cat([components, components.new_zeros(channels - len(components), components.shape[1])])
    return mean, components.T.contiguous()


class FeatureTeacher(nn.Module):
    """A frozen ImageNet backbone as the teacher (no distillation, no download).

    Its middle feature maps (strides 8 and 16, the layers PatchCore takes),
    averaged over 3 x 3 neighbourhoods, are sampled at the centres of the
    PDN's receptive fields (output cell i sees input pixels 4i ... 4i + 32, so
    the student and the teacher describe the same patch) and, where they have
    more than 384 channels, projected to 384 by PCA fitted on the training
    images. The backbone's weights are rebuilt from its name, never saved.
    The backbone sees the input mirrored outwards by ``MARGIN`` pixels, so that
    its own zero padding does not reach the features the student must imitate.
    """

    MARGIN = 16

    def __init__(self, backbone: str, image_size: int, layers=None, scale: float = 1.0, weights=None):
        super().__init__()
        self.scale = scale
        self.backbone = load_backbone(backbone, weights)
        self.layers = tuple(layers or backbone_spec(backbone).middle)
        out = teacher_size(image_size)
        padded = image_size + 2 * self.MARGIN
        centres = (4 * torch.arange(out, dtype=torch.float32) + 16.5 + self.MARGIN) / padded * 2 - 1
        grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("grid", torch.stack([grid_x, grid_y], -1)[None], persistent=False)
        with torch.no_grad():
            channels = self.backbone.patch_features(torch.zeros(1, 3, 64, 64), self.layers).shape[1]
        self.out_channels = min(channels, TEACHER_CHANNELS)
        # Identity unless there are more channels than 384; then fit_projection sets a PCA.
        self.register_buffer("offset", torch.zeros(channels))
        self.register_buffer("projection", torch.eye(channels)[:, : self.out_channels].contiguous())

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, [self.MARGIN] * 4, mode="reflect")
        if self.scale != 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        features = self.backbone.patch_features(x, self.layers)
        # x.shape[0], not len(x): a traced graph (ONNX export) keeps the batch size dynamic.
        return F.grid_sample(features, self.grid.expand(x.shape[0], -1, -1, -1).to(features.dtype), mode="bilinear",
                             align_corners=False)

    def fit_projection(self, batches, seed: int) -> None:
        """PCA of the training images' patch features, when they have more than 384 channels."""
        if self.projection.shape[0] == self.out_channels:
            return
        with torch.no_grad():
            vectors = torch.cat([self.patch_features(x).permute(0, 2, 3, 1).flatten(0, 2) for x in batches])
        self.offset, self.projection = pca_projection(vectors, self.out_channels, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.patch_features(x).permute(0, 2, 3, 1)
        return ((features - self.offset) @ self.projection).permute(0, 3, 1, 2)

    def learnt_state(self) -> dict[str, torch.Tensor]:
        return {"offset": self.offset, "projection": self.projection}


RANDOM_TEACHER = "random"
MAP_PADDINGS = ("minimum", "zero")
ANOMALY_MAPS = ("combined", "local")


def teacher_kind(teacher: str) -> str:
    """"random", "features" (a backbone's name), "distilled" (``distilled`` or ``distilled:BACKBONE``: a PDN
    distilled on free images, cached per machine, see ``impeller_bench.distill``) or "file" (a pretrained PDN
    teacher)."""
    if teacher == RANDOM_TEACHER:
        return "random"
    if teacher in BACKBONES:
        return "features"
    if teacher == "distilled" or teacher.startswith("distilled:"):
        return "distilled"
    if Path(teacher).is_file():
        return "file"
    raise ImpellerBenchError(f"teacher {teacher!r} is neither {RANDOM_TEACHER!r}, a backbone ({', '.join(BACKBONES)}), "
                             "'distilled[:BACKBONE]' nor an existing teacher file")


class AutoEncoder(nn.Module):
    def __init__(self, image_size: int = 256, decoder: str = "bilinear", dropout: float = 0.2,
                 out_channels: int = TEACHER_CHANNELS):
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
            self.decoder = BilinearDecoder(image_size, self.out_size, dropout, out_channels)
        elif decoder == "transposed":
            self.decoder = TransposedDecoder(self.out_size, dropout, out_channels)
        else:
            raise ImpellerBenchError(f"unknown decoder {decoder!r} (bilinear or transposed)")

    def forward(self, x):
        return self.decoder(self.encoder(x))


class BilinearDecoder(nn.Module):
    """The published decoder: bilinear resizes, each followed by conv k4 s1 p2 (+1 pixel), ReLU, dropout."""

    SIZES_AT_256 = (3, 8, 15, 32, 63, 127)

    def __init__(self, image_size: int, out_size: int, dropout: float, out_channels: int = TEACHER_CHANNELS):
        super().__init__()
        self.sizes = [max(1, round(s * image_size / 256)) for s in self.SIZES_AT_256]
        self.out_size = out_size
        self.convs = nn.ModuleList(nn.Conv2d(LATENT_CHANNELS, LATENT_CHANNELS, 4, padding=2) for _ in self.sizes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.tail = nn.Sequential(
            nn.Conv2d(LATENT_CHANNELS, LATENT_CHANNELS, 3, padding=1), nn.ReLU(),
            nn.Conv2d(LATENT_CHANNELS, out_channels, 3, padding=1),
        )

    def forward(self, z):
        for size, conv in zip(self.sizes, self.convs):
            z = self.dropout(F.relu(conv(F.interpolate(z, size=size, mode="bilinear", align_corners=False))))
        return self.tail(F.interpolate(z, size=self.out_size, mode="bilinear", align_corners=False))


class TransposedDecoder(nn.Module):
    """Ours: learnable upsampling mirroring the encoder (see the module docstring for the arithmetic)."""

    def __init__(self, out_size: int, dropout: float = 0.0, out_channels: int = TEACHER_CHANNELS):
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
            nn.Conv2d(c, out_channels, 3, padding=1),
        )

    def forward(self, z):
        return self.tail(self.dropout(self.upsample(z)))


@dataclass
class EfficientADConfig:
    decoder: str = "bilinear"
    dropout: float = 0.2
    pdn: str = "small"
    student_width: float = 1.0  # hidden channels of the student relative to the published PDN
    image_size: int = 256
    steps: int = 1000  # with stop_check_every, the most steps
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-5
    hard_quantile: float = 0.999
    validation_fraction: float = 0.1
    # A backbone's name (a frozen ImageNet feature teacher, offline), a pretrained PDN teacher file, or "random".
    teacher: str = "efficientnet_lite2"
    teacher_layers: list[str] | None = None  # feature teacher only; None: the backbone's middle layers
    teacher_scale: float = 1.0  # feature teacher only: the backbone sees the input enlarged by this factor
    # "minimum": the 4-pixel frame around the map takes each map's minimum (ranks as normal);
    # "zero": the published zero padding after normalisation (most normalised values are negative: a bright frame).
    map_padding: str = "minimum"
    # "combined" (published): the mean of the normalised student-teacher (local) and autoencoder (global) maps.
    # "local": the normalised local map alone (the autoencoder still trains the student's second half).
    anomaly_map: str = "combined"
    # The image score (an ablation): the mean of this share of the anomaly map's cells, the highest (at the PDN's
    # stride, before resizing and framing; at least one cell); 0: the map's maximum, as published (without border
    # cover: the maximum of the framed, resized map, which bilinear resizing makes a little lower than the
    # highest cell's). The idea: single cells of normal parts may score high by chance, a defect raises a patch.
    image_score_share: float = 0.0
    # True: the input is mirrored outwards by 16 pixels per side first, so the maps cover the whole image at the
    # PDN's stride and need no frame (image_size + 32 must then be a multiple of 32).
    cover_border: bool = False
    # 0: the published loop (a fresh augmentation and a teacher pass per step, two student passes). N > 0: the
    # teacher's outputs on N colour-augmented views per training image (the first unaugmented) are computed once
    # and each step trains one student pass on a batch of views against them (the CPU profile's economy).
    cached_views: int = 0
    # Cached views only, 0: no limit. N > 0: at most N views in all, so fewer per image on a large training set
    # (at least the unaugmented one): the teacher's passes before the first step stop growing with the set
    # (Magnetic Tile Defects, 673 images: 3 views each took 3.5 minutes on 2 cores; 8 would take about 12).
    cached_views_at_most: int = 0
    # Cached views only: each augmented view is also turned by a random multiple of 90 degrees and maybe mirrored
    # (for parts photographed in any orientation, as impellers are; more normal appearance from few photos).
    turn_views: bool = False
    # Training arithmetic: "float32" (published), "bfloat16" mixed precision (weights, loss and scoring stay
    # float32), or "auto": whichever of the two trains faster on this device, measured once per process.
    precision: str = "float32"
    # Scoring arithmetic: "float32" (published; every profile's default, so that scores do not depend on the CPU)
    # or "bfloat16": the networks under bfloat16 autocast, the maps and their statistics in float32 (for a line
    # whose CPU has bfloat16 units: about half the latency on this project's 2-core AMD EPYC, see the README).
    scoring_precision: str = "float32"
    # Early stopping on held-out normal images: every stop_check_every steps (0: never), the student's mean
    # squared distance to the (per-channel standardised) teacher on the validation images; training stops at the
    # first check where it is at most stop_distance (the student reproduces that much of the teacher's variance
    # on unseen normal images: 0.2 = 80%) or, with stop_min_improvement (a fraction; None: never), improved on
    # the previous check by less than that, then trains a final tail of 1/19 of the steps done at lr x 0.1 (so
    # the published decay still covers the last 5%). Checks stop where a full-length run would decay. A feature
    # teacher's only: with a PDN teacher (file, distilled, random) every step is trained.
    stop_check_every: int = 0
    stop_distance: float = 0.0
    stop_min_improvement: float | None = None
    seed: int = 0


@dataclass
class OursConfig(EfficientADConfig):
    decoder: str = "transposed"
    dropout: float = 0.0


def mirror_border(x01: torch.Tensor, cover_border: bool) -> torch.Tensor:
    """With ``cover_border``, the input mirrored outwards by ``PDN_BORDER`` pixels per side (else unchanged)."""
    return F.pad(x01, [PDN_BORDER] * 4, mode="reflect") if cover_border else x01


class EfficientADScorer(nn.Module):
    """EfficientAD's scoring as one module (the detector's networks and statistics, shared, not copied).

    x01 (N x 3 x S x S in [0, 1], S = the configured image size) -> (scores N, maps N x S x S, or at ``size``):
    the border mirrored outwards when covered, the local and global maps normalised by their quantiles and
    averaged, framed unless the border is covered, resized bilinearly."""

    def __init__(self, detector: "EfficientAD"):
        super().__init__()
        self.teacher, self.student, self.autoencoder = detector.teacher, detector.student, detector.autoencoder
        for name, value in detector.buffers.items():  # teacher_mean, teacher_std, quantiles
            self.register_buffer(name, value, persistent=False)
        self.channels, self.model_input_size = detector.channels, detector.model_input_size
        self.cover_border, self.zero_frame = detector.config.cover_border, detector.config.map_padding == "zero"
        self.local_only = detector.config.anomaly_map == "local"
        self.bfloat16 = detector.config.scoring_precision == "bfloat16"
        self.channels_last = False  # set by ``EfficientAD.scoring_module`` on the CPU (weights converted with it)
        # The cells the image score takes the mean of (0: their maximum); fixed by the input size, so that an
        # exported graph holds a constant.
        inner = PDN_BORDER // 4 if self.cover_border else 0
        cells = (teacher_size(detector.input_size) - 2 * inner) ** 2
        share = detector.config.image_score_share
        self.image_score_cells = max(1, round(share * cells)) if share > 0 else 0

    def teacher_output(self, x01: torch.Tensor) -> torch.Tensor:
        """The teacher's features, normalised per channel with the training images' statistics."""
        return self.standardised(self.teacher(normalise(x01)))

    def standardised(self, teacher: torch.Tensor) -> torch.Tensor:
        return (teacher - self.teacher_mean) / self.teacher_std

    def raw_maps(self, x01: torch.Tensor, with_global: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(local, global) N x 1 x t x t maps of the network input (its border already mirrored if covered);
        without ``with_global`` the autoencoder does not run and global is None. The networks run in the
        scoring precision; the maps are float32."""
        x = normalise(x01)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            student = self.student(x).float()
            teacher = self.teacher(x).float()
            reconstruction = self.autoencoder(x).float() if with_global else None
        local = ((self.standardised(teacher) - student[:, : self.channels]) ** 2).mean(dim=1, keepdim=True)
        if not with_global:
            return local, None
        return local, ((reconstruction - student[:, self.channels:]) ** 2).mean(dim=1, keepdim=True)

    def combined(self, local: torch.Tensor, global_: torch.Tensor | None) -> torch.Tensor:
        """Each map mapped to 0.1 (M - q_a) / (q_b - q_a) with its validation quantiles, then their mean (or the
        local map's alone)."""
        qa_l, qb_l, qa_g, qb_g = self.quantiles
        local = 0.1 * (local - qa_l) / (qb_l - qa_l)
        return local if self.local_only else 0.5 * (local + 0.1 * (global_ - qa_g) / (qb_g - qa_g))

    def forward(self, x01: torch.Tensor, size: tuple[int, int] | None = None):
        grid = self.combined(*self.raw_maps(mirror_border(x01, self.cover_border), with_global=not self.local_only))
        scores = None
        if self.cover_border or self.image_score_cells:
            # Scored only where a patch holds no mirrored pixels (the published map's cells); mapped everywhere.
            inner = PDN_BORDER // 4
            cells = (grid[..., inner:-inner, inner:-inner] if self.cover_border else grid).flatten(1)
            scores = (torch.topk(cells, self.image_score_cells, dim=1).values.mean(dim=1) if self.image_score_cells
                      else cells.amax(dim=1))
        if not self.cover_border:
            frame = 0.0 if self.zero_frame else grid.amin(dim=(2, 3), keepdim=True)
            grid = F.pad(grid - frame, [MAP_PADDING] * 4) + frame
        size = size or (self.model_input_size, self.model_input_size)
        maps = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]
        return (maps.amax(dim=(1, 2)) if scores is None else scores), maps


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The published autoencoder-input augmentation: one of brightness, contrast, saturation, factor in [0.8, 1.2]."""
    choice = int(torch.randint(3, (1,), generator=generator))
    factor = float(torch.empty(1).uniform_(0.8, 1.2, generator=generator))
    if choice == 0:
        return (x * factor).clamp(0, 1)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    reference = gray.mean(dim=(2, 3), keepdim=True) if choice == 1 else gray
    return (reference + factor * (x - reference)).clamp(0, 1)


def validation_split(order: list[int], count: int, groups=None) -> list[int]:
    """The first ``count`` images of ``order``; with photo ``groups``, each taken image's whole group comes
    along (in ``order``), so that no photo is both trained on and held out; at least one image is left."""
    if groups is None:
        return order[:count]
    members: dict = {}
    for k in order:
        members.setdefault(groups[k], []).append(k)
    held: list[int] = []
    for k in order:
        if len(held) >= count:
            break
        group = members.pop(groups[k], None)  # None: k's group is held already
        if group is not None and len(held) + len(group) < len(order):
            held += group
    return held or order[:count]


_FASTEST_PRECISION: dict[str, str] = {}


def fastest_precision(device: torch.device) -> str:
    """float32 or bfloat16, whichever runs a small PDN training step faster here (measured once per process).

    Support is not speed: a CPU with avx512_bf16 but no AMX runs bfloat16 convolutions slower than float32."""
    key = str(device)
    if key not in _FASTEST_PRECISION:
        import time

        model = pdn(64, "small").to(device)
        x = torch.rand(2, 3, 64, 64, device=device)
        seconds = {}
        for precision in ("float32", "bfloat16"):
            layout = torch.channels_last if precision == "bfloat16" else torch.contiguous_format
            model.to(memory_format=layout)
            timings = []
            for _ in range(4):
                started = time.perf_counter()
                # (enable_grad: the first call may come from inside a no_grad pass, e.g. a teacher distilled on use)
                with torch.enable_grad(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                         enabled=precision == "bfloat16"):
                    loss = model(x.contiguous(memory_format=layout)).float().square().mean()
                loss.backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                timings.append(time.perf_counter() - started)
            seconds[precision] = min(timings[1:])
        _FASTEST_PRECISION[key] = "bfloat16" if seconds["bfloat16"] < 0.8 * seconds["float32"] else "float32"
    return _FASTEST_PRECISION[key]


class EarlyStop:
    """The student's held-out distance, checked every ``stop_check_every`` steps of its detector's configuration
    (see ``EfficientADConfig``)."""

    def __init__(self, detector: "EfficientAD", validation: torch.Tensor):
        self.detector, self.validation, self.config = detector, validation, detector.config
        self.targets = None  # the frozen teacher's outputs on the validation images, computed at the first check
        self.history: list[tuple[int, float]] = []

    def distance(self) -> float:
        """Mean over the validation images and cells of the channel-mean squared student-teacher distance."""
        d = self.detector
        with torch.no_grad():
            if self.targets is None:
                self.targets = torch.cat([d._teacher(chunk.to(d.device)) for chunk in self.validation.split(8)])
            total = 0.0
            for chunk, target in zip(self.validation.split(8), self.targets.split(8)):
                student = d.student(normalise(chunk.to(d.device)))[:, : d.channels].float()
                total += float(((target - student) ** 2).mean(dim=(1, 2, 3)).sum())
        return total / len(self.validation)

    def should_stop(self, step: int) -> bool:
        if step % self.config.stop_check_every:
            return False
        distance = self.distance()
        previous = self.history[-1][1] if self.history else None
        self.history.append((step, distance))
        plateau = self.config.stop_min_improvement
        return distance <= self.config.stop_distance or (
            plateau is not None and previous is not None and distance > (1 - plateau) * previous)


@register("efficientad")
class EfficientAD(ScoredByModule, Detector):
    config_class = EfficientADConfig
    scorer_class = EfficientADScorer
    scoring_batch = 8
    # "quick" is the CPU default, chosen from the quality-against-time curve of benchmarks/efficientad_budget.py
    # (figures in the README's EfficientAD section): the frozen feature teacher (the configuration's default,
    # EfficientNet-Lite2: 3 image-AUROC points over Lite0 on impeller-v2-native, 5 on impeller-v2-300) seeing the
    # image at twice the size, 128 x 128 inputs mirrored to cover the border, a half-width student, teacher outputs
    # cached on eight views per image (colour-augmented, turned and mirrored), one student pass per step, lr 1e-3
    # and the top 10% as hard features (for a short schedule), and bfloat16 where it measures faster. Training stops
    # once the student reproduces 80% of the teacher's variance on held-out normals (the built-in impellers: 500
    # steps), else after 2,000 (real photos); not on a plateau: the distance on a few held-out photos is too noisy
    # for that (a 2% rule stopped v2-native's seed 1 at 1,053 steps, Lite0 teacher: image AUROC 71.95 against 77.01
    # at 2,000). Every profile scores with the published combined map (the method's definition); the local map
    # alone is an ablation (anomaly_map="local"; benchmarks/efficientad_budget.py reports both maps of one fit).
    profiles = {
        "paper": {"steps": 70_000, "batch_size": 1, "image_size": 256, "precision": "float32"},
        "quick": {"steps": 2000, "stop_check_every": 250, "stop_distance": 0.2,
                  "batch_size": 4, "image_size": 128, "precision": "auto", "lr": 1e-3,
                  "hard_quantile": 0.9, "teacher_scale": 2.0, "cover_border": True, "student_width": 0.5,
                  "cached_views": 8, "cached_views_at_most": 2048, "turn_views": True},
    }

    def __init__(self, config, name, device=None):
        super().__init__(config, name, device)
        c = config
        if c.precision not in ("float32", "bfloat16", "auto"):
            raise ImpellerBenchError(f"unknown precision {c.precision!r} (float32, bfloat16 or auto)")
        if c.scoring_precision not in ("float32", "bfloat16"):
            raise ImpellerBenchError(f"unknown scoring precision {c.scoring_precision!r} (float32 or bfloat16)")
        if c.map_padding not in MAP_PADDINGS:
            raise ImpellerBenchError(f"unknown map padding {c.map_padding!r} ({' or '.join(MAP_PADDINGS)})")
        if c.anomaly_map not in ANOMALY_MAPS:
            raise ImpellerBenchError(f"unknown anomaly map {c.anomaly_map!r} ({' or '.join(ANOMALY_MAPS)})")
        if not 0 <= c.image_score_share <= 1:
            raise ImpellerBenchError(f"image_score_share is a share of the map's cells, from 0 to 1, not {c.image_score_share}")
        self.teacher_kind = teacher_kind(c.teacher)
        torch.manual_seed(c.seed)
        self.input_size = c.image_size + (2 * PDN_BORDER if c.cover_border else 0)
        if self.teacher_kind == "features":
            self.teacher = FeatureTeacher(c.teacher, self.input_size, c.teacher_layers, c.teacher_scale)
            channels = self.teacher.out_channels
        else:
            if c.teacher_layers:  # (teacher_scale, a profile's setting, simply has nothing to scale here)
                raise ImpellerBenchError("teacher_layers applies to a backbone feature teacher only")
            self.teacher, channels = pdn(TEACHER_CHANNELS, c.pdn), TEACHER_CHANNELS
            if self.teacher_kind == "file":
                c.teacher = str(Path(c.teacher).resolve())  # a saved detector finds it from any folder
                try:
                    self.teacher.load_state_dict(teacher_state_from_file(c.teacher, c.pdn))
                except RuntimeError as exc:
                    raise ImpellerBenchError(f"not a {c.pdn} PDN teacher: {str(exc).splitlines()[0]}", c.teacher) from exc
            elif self.teacher_kind == "distilled":
                from ..distill import distilled_backbone, load_on_first_use

                c.teacher = f"distilled:{distilled_backbone(c.teacher)}"  # the backbone on record
                # Loaded from the cache (seed 0 for every detector: one teacher per machine serves all) when the
                # teacher first runs, unless a saved detector's own teacher weights are loaded first.
                load_on_first_use(self.teacher, c.teacher, c.pdn)
        if (c.turn_views or c.cached_views_at_most) and not c.cached_views:
            raise ImpellerBenchError("turn_views and cached_views_at_most apply to cached views only (cached_views > 0)")
        self.channels = channels
        self.student = pdn(2 * channels, c.pdn, c.student_width)
        self.autoencoder = AutoEncoder(self.input_size, c.decoder, c.dropout, channels)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.buffers = {name: torch.zeros(shape) for name, shape in (
            ("teacher_mean", (1, channels, 1, 1)), ("teacher_std", (1, channels, 1, 1)), ("quantiles", (4,)))}
        self._to_device()

    @property
    def model_input_size(self) -> int:
        """The side of the square image the networks are given (before any mirrored border)."""
        return self.config.image_size

    @property
    def training_precision(self) -> str:
        """The configured precision, with "auto" resolved by measurement on this device."""
        return self.config.precision if self.config.precision != "auto" else fastest_precision(self.device)

    def _to_device(self):
        for module in (self.teacher, self.student, self.autoencoder):
            module.to(self.device)
        self.buffers = {k: v.to(self.device) for k, v in self.buffers.items()}

    # ----------------------------------------------------------------- data

    def _batch01(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 images -> float [0, 1] at the model's size (mirrored borders added), on the CPU."""
        return mirror_border(images01(images, self.config.image_size), self.config.cover_border)

    def _teacher(self, x01: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return EfficientADScorer(self).teacher_output(x01)

    # ----------------------------------------------------------------- training

    def fit(self, images, progress=None, groups=None):
        c = self.config
        if len(images) < 2:
            raise ImpellerBenchError("EfficientAD needs at least two training images")
        generator = torch.Generator().manual_seed(c.seed)
        data = self._batch01(images)
        order = torch.randperm(len(data), generator=generator).tolist()
        held = validation_split(order, max(1, int(round(c.validation_fraction * len(data)))), groups)
        # Never trained on: the maps' quantiles are fitted on them, and a model file's thresholds calibrated.
        self.validation_indices = held
        held_set = set(held)
        kept = [k for k in order if k not in held_set]
        validation, train = data[held], data[kept]
        self.teacher.eval()
        if self.teacher_kind == "features":
            self.teacher.fit_projection((normalise(chunk.to(self.device)) for chunk in train.split(8)), c.seed)
        # The teacher is frozen and sees the unaugmented images in the student loss: its outputs are computed once.
        train_targets = self._fit_teacher_statistics(train)
        if c.cached_views:
            train, train_targets = self._cached_views(train, train_targets, generator, progress)
        self.student.train()
        self.autoencoder.train()
        parameters = list(self.student.parameters()) + list(self.autoencoder.parameters())
        optimiser = torch.optim.Adam(parameters, lr=c.lr, weight_decay=c.weight_decay)
        meter = TrainingMeter()
        bfloat16 = self.training_precision == "bfloat16"
        layout = torch.channels_last if bfloat16 else torch.contiguous_format  # what oneDNN's bf16 kernels want
        for module in (self.student, self.autoencoder, self.teacher):
            module.to(memory_format=layout)

        def train_step():
            meter.tick()
            pick = torch.randint(len(train), (c.batch_size,), generator=generator)
            x = train[pick].to(self.device).contiguous(memory_format=layout)
            target = train_targets[pick].to(self.device).float()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bfloat16):
                if c.cached_views:
                    loss = self._loss(x, target, x, target)
                else:
                    x_aug = _augment(x, generator)
                    loss = self._loss(x, target, x_aug, self._teacher(x_aug).float())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            meter.loss = float(loss.detach())

        def set_lr(lr):
            for group in optimiser.param_groups:
                group["lr"] = lr

        decay_at = max(1, int(0.95 * c.steps))
        # The held-out distance tracks quality for a feature teacher only: a student of a PDN teacher's own
        # architecture imitates it at once (built-in data, distilled teacher: distance 0.018 at the first check,
        # image AUROC 69.5 stopped there against 80.3 after 2,000 steps), so a PDN teacher trains every step.
        stopping = EarlyStop(self, validation) if c.stop_check_every and self.teacher_kind == "features" else None
        done, stopped = 0, False
        steps = range(c.steps)
        for step in (progress(steps, "training", meter.status) if progress else steps):
            if step == decay_at:
                set_lr(c.lr * 0.1)
            train_step()
            done = step + 1
            if stopping is not None and done < decay_at and stopping.should_stop(done):
                stopped = True
                break
        if stopped:
            set_lr(c.lr * 0.1)
            tail = range(max(1, round(done / 19)))
            distance = stopping.history[-1][1]
            label = f"stopped early at step {done} (held-out distance {distance:.3f}); final steps at lr / 10"
            for _ in (progress(tail, label, meter.status) if progress else tail):
                train_step()
                done += 1
        for module in (self.student, self.autoencoder, self.teacher):
            module.to(memory_format=torch.contiguous_format)
        self.student.eval()
        self.autoencoder.eval()
        self._fit_map_quantiles(validation)
        self.last_loss = meter.loss
        self.steps_trained = done
        self.validation_distances = stopping.history if stopping is not None else []
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

    def views_per_image(self, images: int) -> int:
        """How many views of each of ``images`` training images are cached (the first unaugmented)."""
        c = self.config
        return max(1, min(c.cached_views, c.cached_views_at_most // images)) if c.cached_views_at_most else c.cached_views

    def _cached_views(self, train: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, progress=None):
        """Each training image and ``views_per_image - 1`` augmented copies, with the teacher's outputs on them."""
        views, view_targets = [train], [targets.bfloat16()]
        self.cached_views_per_image = self.views_per_image(len(train))
        extra = range(self.cached_views_per_image - 1)
        label = f"teacher on {len(extra)} augmented view{'s' * (len(extra) != 1)} of each image"
        for _ in (progress(extra, label) if progress else extra):
            augmented = torch.cat([self._turn(_augment(chunk, generator), generator) for chunk in train.split(1)])
            views.append(augmented)
            view_targets.append(torch.cat([self._teacher(chunk.to(self.device)).cpu().bfloat16()
                                           for chunk in augmented.split(8)]))
        return torch.cat(views), torch.cat(view_targets)

    def _turn(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.config.turn_views:
            return x
        turns, mirror = (int(v) for v in torch.randint(4, (2,), generator=generator))
        x = torch.rot90(x, turns, dims=(2, 3))
        return x.flip(3) if mirror % 2 else x

    def _loss(self, x: torch.Tensor, target: torch.Tensor, x_ae: torch.Tensor, target_ae: torch.Tensor) -> torch.Tensor:
        """Hard-feature student loss on x, autoencoder and student-autoencoder losses on x_ae (one student pass
        when x_ae is x)."""
        c, channels = self.config, self.channels
        out = self.student(normalise(x))
        distance = ((target - out[:, :channels].float()) ** 2).flatten()
        # The hard-feature loss: the distances at or above their hard_quantile (top-k: a sort costs 6x more).
        hard = torch.topk(distance, max(1, round((1 - c.hard_quantile) * distance.numel())), sorted=False).values
        ae = self.autoencoder(normalise(x_ae)).float()
        student_ae = (out if x_ae is x else self.student(normalise(x_ae)))[:, channels:].float()
        return hard.mean() + ((target_ae - ae) ** 2).mean() + ((ae - student_ae) ** 2).mean()

    # ----------------------------------------------------------------- scoring

    def _raw_maps(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local, global) maps of a network input (from ``_batch01``), before normalisation."""
        with torch.no_grad():
            return EfficientADScorer(self).raw_maps(x01)

    def _fit_map_quantiles(self, validation: torch.Tensor) -> None:
        locals_, globals_ = [], []
        for chunk in validation.split(8):
            local, global_ = self._raw_maps(chunk.to(self.device))
            locals_.append(local.flatten())
            globals_.append(global_.flatten())
        local, global_ = torch.cat(locals_), torch.cat(globals_)
        q = torch.tensor([0.9, 0.995], device=local.device)
        self.buffers["quantiles"] = torch.cat([torch.quantile(local, q), torch.quantile(global_, q)])

    def scoring_module(self):
        """The scoring module; on the CPU in channels-last layout, weights included (measured on the 2-core AMD
        EPYC, published PDN-S at 256 x 256: the whole path about a fifth faster; the arithmetic is the same)."""
        module = super().scoring_module()
        if self.device.type == "cpu":
            module.to(memory_format=torch.channels_last)
            module.channels_last = True
        return module

    def prepare_untrained(self):
        self.buffers["teacher_mean"].zero_()
        self.buffers["teacher_std"].fill_(1.0)
        self.buffers["quantiles"] = torch.tensor([0.0, 1.0, 0.0, 1.0], device=self.device)
        for module in (self.teacher, self.student, self.autoencoder):
            module.eval()
        self.fitted = True

    # ----------------------------------------------------------------- persistence

    def _teacher_state(self) -> dict[str, torch.Tensor]:
        """What a saved detector must hold of its teacher (a feature teacher's backbone is rebuilt from its name)."""
        return self.teacher.learnt_state() if self.teacher_kind == "features" else self.teacher.state_dict()

    def state_dict(self):
        state = {f"teacher.{k}": v for k, v in self._teacher_state().items()}
        state |= {f"student.{k}": v for k, v in self.student.state_dict().items()}
        state |= {f"autoencoder.{k}": v for k, v in self.autoencoder.state_dict().items()}
        return state | {f"buffer.{k}": v for k, v in self.buffers.items()}

    def load_state_dict(self, state):
        teacher = {k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")}
        if self.teacher_kind == "features":
            self.teacher.offset, self.teacher.projection = teacher["offset"], teacher["projection"]
        else:
            self.teacher.load_state_dict(teacher)
        for prefix, module in (("student.", self.student), ("autoencoder.", self.autoencoder)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.buffers = {k[len("buffer."):]: v for k, v in state.items() if k.startswith("buffer.")}
        self._to_device()
        for module in (self.teacher, self.student, self.autoencoder):
            module.eval()

    def teacher_label(self) -> str:
        """How the teacher was made, in words, for meta.json and every table."""
        c = self.config
        if self.teacher_kind == "features":
            return f"{c.teacher} features {'+'.join(self.teacher.layers)} (frozen, ImageNet)"
        if self.teacher_kind == "file":
            return f"pretrained PDN file {c.teacher}"
        if self.teacher_kind == "distilled":
            from ..distill import distilled_label

            return distilled_label(c.teacher, c.pdn)
        return f"random (seeded, untrained: seed {c.seed})"

    def describe(self):
        weights = str(weights_path(self.config.teacher)) if self.teacher_kind == "features" else (
            self.config.teacher if self.teacher_kind == "file" else None)
        return super().describe() | {
            "teacher": self.teacher_label(),
            "teacher_weights": weights,
            "penalty": "none (no penalty images given)",
            "training_precision": self.training_precision,
        } | ({"steps_trained": self.steps_trained, "held_out_distances": self.validation_distances}
             if hasattr(self, "steps_trained") else {}) | (
            {"cached_views_per_image": self.cached_views_per_image} if hasattr(self, "cached_views_per_image") else {})


@register("ours")
class Ours(EfficientAD):
    """EfficientAD whose autoencoder decodes with transposed convolutions, without dropout."""

    config_class = OursConfig
