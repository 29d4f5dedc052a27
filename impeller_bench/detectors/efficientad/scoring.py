"""Scoring: the local (student-teacher) and global (autoencoder) maps, each normalised by its quantiles
on held-out normals, combined as the paper's eqs. 5-7."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ...common.backbones import normalise
from .networks import PDN_BORDER, teacher_size

if TYPE_CHECKING:  # the detector imports this module
    from .detector import EfficientAD

MAP_PADDING = 4


MAP_PADDINGS = ("minimum", "zero")


ANOMALY_MAPS = ("combined", "local")


def mirror_border(x01: torch.Tensor, cover_border: bool) -> torch.Tensor:
    """With ``cover_border``, the input mirrored outwards by ``PDN_BORDER`` pixels per side (else unchanged)."""
    return F.pad(x01, [PDN_BORDER] * 4, mode="reflect") if cover_border else x01


class EfficientADScorer(nn.Module):
    """EfficientAD's scoring as one module (the detector's networks and statistics, shared, not copied).

    x01 (N x 3 x S x S in [0, 1], S = the configured image size) -> (scores N, maps N x S x S, or at ``size``):
    the border mirrored outwards when covered, the local and global maps normalised by their quantiles and
    averaged, framed unless the border is covered, resized bilinearly."""

    def __init__(self, detector: EfficientAD):
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
