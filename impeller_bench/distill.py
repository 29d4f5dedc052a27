"""Pretrain an EfficientAD teacher by distillation from a pretrained backbone (the published recipe, offline).

The PDN regresses normalised backbone patch features reduced to 384 channels:

- backbone: EfficientNet-Lite0 with its ImageNet weights (a substitute for the
  paper's WideResNet-101, which needs a user-supplied checkpoint), fed the
  image at twice the PDN's input size;
- features: stages 3 to 6 (strides 8 to 32 at the backbone's input), each
  upsampled to the stride-8 grid, concatenated (424 channels), averaged over
  3 x 3 neighbourhoods (locally aware patches), pooled to the PDN's output
  size, projected to 384 channels by PCA (fitted once, on a seeded sample),
  and normalised per channel;
- loss: mean squared error; Adam, lr 1e-4 (published), weight decay 1e-5.

Images: whatever folder(s) the user gives, else the training images of a
dataset plus scikit-image's sample photos (all offline). The teacher is
labelled as distilled from a substitute backbone in its sidecar JSON.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import images01, load_backbone, normalise
from .detectors.base import pick_device
from .detectors.efficientad import TEACHER_CHANNELS, pca_projection, pdn, teacher_size
from .errors import ImpellerBenchError
from .imageio import atomic_write_bytes, is_image_file, read_image
from .progress import TrainingMeter

FEATURE_STAGES = ("stage3", "stage4", "stage5", "stage6")


def sample_photos() -> list[np.ndarray]:
    """scikit-image's bundled photos: generic images that ship offline."""
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "page", "text", "clock",
             "horse", "hubble_deep_field", "immunohistochemistry", "retina", "brick", "grass", "gravel")
    photos = []
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        try:
            image = np.asarray(loader())
        except Exception:  # a sample that needs a download (pooch) is skipped
            continue
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[..., :3]
        photos.append(image.astype(np.uint8))
    return photos


def images_from_folders(folders) -> list[np.ndarray]:
    images = []
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if is_image_file(p)):
            images.append(read_image(path))
    return images


class FeatureTarget:
    """Backbone patch features -> 384 normalised channels at the PDN's output size."""

    def __init__(self, image_size: int, device: torch.device, backbone_weights=None):
        self.backbone = load_backbone("efficientnet_lite0", backbone_weights).to(device)
        self.image_size, self.out_size, self.device = image_size, teacher_size(image_size), device
        self.projection = self.mean = self.std = None

    def raw(self, batch01: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(batch01, scale_factor=2, mode="bilinear", align_corners=False)
        with torch.no_grad():
            return F.adaptive_avg_pool2d(self.backbone.patch_features(normalise(x), FEATURE_STAGES), self.out_size)

    def fit(self, batch01: torch.Tensor, seed: int) -> torch.Tensor:
        """Fits the projection on these images; returns their projected targets (so they are not computed twice)."""
        features = torch.cat([self.raw(chunk.to(self.device)) for chunk in batch01.split(8)])
        vectors = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        self.offset, self.projection = pca_projection(vectors, TEACHER_CHANNELS, seed)
        projected = (vectors - self.offset) @ self.projection
        self.mean, self.std = projected.mean(0), projected.std(0) + 1e-6
        return self.project(features)

    def __call__(self, batch01: torch.Tensor) -> torch.Tensor:
        return self.project(self.raw(batch01))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        n, c, h, w = features.shape
        vectors = features.permute(0, 2, 3, 1).reshape(-1, c)
        projected = ((vectors - self.offset) @ self.projection - self.mean) / self.std
        return projected.reshape(n, h, w, TEACHER_CHANNELS).permute(0, 3, 1, 2)


def distill_teacher(images: list[np.ndarray], out, *, pdn_size: str = "small", image_size: int = 256,
                    steps: int = 2000, batch_size: int = 8, lr: float = 1e-4, seed: int = 0,
                    device: str | None = None, backbone_weights=None, progress=None, sources: str = "") -> dict:
    """Train a PDN teacher; writes its state dict (published key layout) and a sidecar JSON; returns the latter.

    The backbone is frozen, so its targets are computed once per image and
    mirror image (the only augmentation) and cached in bfloat16 (float32 range, half the memory).
    """
    if len(images) < 2:
        raise ImpellerBenchError("distillation needs at least two images")
    device = pick_device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = images01(images, image_size)
    target = FeatureTarget(image_size, device, backbone_weights)
    views = torch.cat([data, data.flip(-1)])
    chunks = data.flip(-1).split(8)
    targets = torch.cat([target.fit(data, seed).bfloat16().cpu()]
                        + [target(chunk.to(device)).bfloat16().cpu()
                           for chunk in (progress(chunks, "mirrored images' features") if progress else chunks)])

    teacher = pdn(TEACHER_CHANNELS, pdn_size).to(device)
    optimiser = torch.optim.Adam(teacher.parameters(), lr=lr, weight_decay=1e-5)
    meter = TrainingMeter()
    for _ in (progress(range(steps), "distilling", meter.status) if progress else range(steps)):
        meter.tick()
        pick = torch.randint(len(views), (batch_size,), generator=generator)
        x, y = views[pick].to(device), targets[pick].to(device).float()
        loss = ((teacher(normalise(x)) - y) ** 2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        meter.loss = float(loss.detach())
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in teacher.state_dict().items()}, buffer)
    atomic_write_bytes(out, buffer.getvalue())
    meta = {"pdn": pdn_size, "image_size": image_size, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "images": len(images), "image_sources": sources, "final_loss": meter.loss,
            "backbone": "efficientnet_lite0 (ImageNet), a substitute for the paper's WideResNet-101",
            "feature_stages": list(FEATURE_STAGES)}
    atomic_write_bytes(Path(str(out) + ".json"), (json.dumps(meta, indent=1) + "\n").encode())
    return meta
