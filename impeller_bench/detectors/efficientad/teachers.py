"""The teachers: a PDN loaded from a file, a pretrained backbone's features projected to the PDN's
channels, or random (for timing)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...common.backbones import BACKBONES, backbone_spec, load_backbone, load_state_dict
from ...common.errors import ImpellerBenchError
from .networks import CONV_INDICES, TEACHER_CHANNELS, teacher_size


def teacher_state_from_file(path, size: str) -> dict[str, torch.Tensor]:
    """A pretrained teacher's state dict, from the published layout or anomalib's (keys mapped)."""
    state = load_state_dict(path)
    state = {k.removeprefix("module.").removeprefix("teacher."): v for k, v in state.items()}
    if any(k.startswith("conv") for k in state):
        indices = CONV_INDICES[size]
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


def teacher_kind(teacher: str) -> str:
    """"random", "features" (a backbone's name), "distilled" (``distilled`` or ``distilled:BACKBONE``: a PDN
    distilled on free images, cached per machine, see ``impeller_bench.detectors.efficientad.distill``) or "file" (a pretrained PDN
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
