"""The networks: the patch description network (PDN) of teacher and student, the autoencoder and its
two decoders (bilinear upsampling, as published; transposed convolutions, ours)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ...common.errors import ImpellerBenchError

TEACHER_CHANNELS = 384


LATENT_CHANNELS = 64


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


def relu() -> nn.ReLU:
    """ReLU in place: a convolution's output is not needed after it, and a fresh buffer per call is what
    costs on the CPU: with PDN-S's first map at 256 x 256 (31.25 MiB), a conv and a ReLU out of place fault
    in 15,970 fresh pages per call (both buffers are handed back to the system when freed), in place none
    (minor page faults over 10 calls, 2-core AMD EPYC: 26.2 ms against 2.7 ms); the arithmetic is the same."""
    return nn.ReLU(inplace=True)


def pdn(out_channels: int, size: str = "small", width: float = 1.0) -> nn.Sequential:
    """Patch description network; module indices follow the published EfficientAD files.

    ``width`` scales the hidden channels (1: published; a CPU budget may take a narrower student)."""
    a, b = (max(8, round(c * width)) for c in ((128, 256) if size == "small" else (256, 512)))
    if size == "small":
        return nn.Sequential(
            nn.Conv2d(3, a, 4), relu(), nn.AvgPool2d(2, 2),
            nn.Conv2d(a, b, 4), relu(), nn.AvgPool2d(2, 2),
            nn.Conv2d(b, b, 3), relu(),
            nn.Conv2d(b, out_channels, 4),
        )
    if size == "medium":
        return nn.Sequential(
            nn.Conv2d(3, a, 4), relu(), nn.AvgPool2d(2, 2),
            nn.Conv2d(a, b, 4), relu(), nn.AvgPool2d(2, 2),
            nn.Conv2d(b, b, 1), relu(),
            nn.Conv2d(b, b, 3), relu(),
            nn.Conv2d(b, out_channels, 4), relu(),
            nn.Conv2d(out_channels, out_channels, 1),
        )
    raise ImpellerBenchError(f"unknown PDN size {size!r} (small or medium)")


# anomalib names its PDN convolutions conv1, conv2, ...; the published files use Sequential indices.
CONV_INDICES = {"small": (0, 3, 6, 8), "medium": (0, 3, 6, 8, 10, 12)}


class AutoEncoder(nn.Module):
    def __init__(self, image_size: int = 256, decoder: str = "bilinear", dropout: float = 0.2,
                 out_channels: int = TEACHER_CHANNELS):
        super().__init__()
        if image_size % 32:
            raise ImpellerBenchError(f"image size {image_size} must be a multiple of 32")
        self.out_size = teacher_size(image_size)
        layers, channels = [], (3, 32, 32, 64, 64, 64)
        for cin, cout in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), relu()]
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
            nn.Conv2d(LATENT_CHANNELS, LATENT_CHANNELS, 3, padding=1), relu(),
            nn.Conv2d(LATENT_CHANNELS, out_channels, 3, padding=1),
        )

    def forward(self, z):
        for size, conv in zip(self.sizes, self.convs):
            z = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
            z = self.dropout(F.relu(conv(z), inplace=True))
        return self.tail(F.interpolate(z, size=self.out_size, mode="bilinear", align_corners=False))


class TransposedDecoder(nn.Module):
    """Ours: learnable upsampling mirroring the encoder (see the module docstring for the arithmetic)."""

    def __init__(self, out_size: int, dropout: float = 0.0, out_channels: int = TEACHER_CHANNELS):
        super().__init__()
        if out_size % 8:
            raise ImpellerBenchError(f"teacher output size {out_size} is not divisible by 8")
        c = LATENT_CHANNELS
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(c, c, out_size // 8, stride=1), relu(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), relu(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), relu(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), relu(),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.tail = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), relu(),
            nn.Conv2d(c, out_channels, 3, padding=1),
        )

    def forward(self, z):
        return self.tail(self.dropout(self.upsample(z)))
