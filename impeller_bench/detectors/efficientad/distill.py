"""Pretrain an EfficientAD teacher by distillation from a pretrained backbone: offline, on a CPU budget.

A PDN learns to regress a frozen ImageNet backbone's patch features reduced to 384 channels:

- backbone: EfficientNet-Lite0 by default (a substitute for the paper's
  WideResNet-101, which needs a user-supplied checkpoint), or another of
  ``DISTILL_STAGES``, fed the image at twice the PDN's input size;
- features: the backbone's stride 8 to 32 maps (``DISTILL_STAGES``),
  upsampled to the stride-8 grid, concatenated, averaged over 3 x 3
  neighbourhoods (locally aware patches) and sampled at the centres of the
  PDN's receptive fields (``FeatureTeacher``'s arithmetic: target cell i and
  the PDN's output cell i describe the same patch), projected to 384 channels
  by PCA (fitted once, on a seeded sample) and normalised per channel;
- training (``DISTILL_RECIPE``): the targets are computed once per image and
  mirror image; each step trains on random crops at offsets that are
  multiples of the PDN's stride (a PDN has no padding, so its output on such
  a crop is exactly its output on the whole image over the crop's cells);
  mean squared error, Adam with weight decay 1e-5, cosine learning-rate
  decay, bfloat16 where it measures faster.

Images must be free to use, since a teacher distilled on images is a
derivative of them: the default (``free_images``) is scikit-image's bundled
photos that are public domain or CC0 plus impellers drawn by
``impeller_bench.data.synth``, never a dataset's images (the casting photos are
CC BY-NC-ND). ``cached_teacher`` distils once per machine and keeps the
result in the cache folder, keyed by backbone, recipe and seed; the teacher
spec ``distilled[:BACKBONE]`` of EfficientAD takes it from there.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...common.backbones import images01, normalise
from ...common.errors import ImpellerBenchError
from ...common.files import atomic_write_bytes
from ...common.imageio import is_image_file, read_image
from ...common.progress import TrainingMeter
from ..base import pick_device
from .networks import TEACHER_CHANNELS, pdn, teacher_size
from .teachers import FeatureTeacher, pca_projection, teacher_state_from_file
from .training import fastest_precision

DISTILL_VERSION = 2  # bumped whenever the distillation's arithmetic changes: cached teachers are then made anew

# Each backbone's feature maps the PDN regresses: its stride 8 to 32 stages. MobileNetV2's stages 3 to 6 have
# only 352 channels, so its stride-32 stage 7 comes along (384 are needed). ResNets: the paper's layer2 + layer3.
_LITE_STAGES = ("stage3", "stage4", "stage5", "stage6")
DISTILL_STAGES = {
    "efficientnet_lite0": _LITE_STAGES,
    "efficientnet_lite2": _LITE_STAGES,
    "mobilenet_v2": _LITE_STAGES + ("stage7",),
    "resnet18": ("layer2", "layer3"),
    "wide_resnet50_2": ("layer2", "layer3"),
    "wide_resnet101_2": ("layer2", "layer3"),
}
PAPER_BACKBONE = "wide_resnet101_2"

# The CPU recipe. The published one trains on whole 256 px images for 60,000 steps (batch 16, lr 1e-4): days on
# a CPU. Measured on a 2-core AMD EPYC with one thread, a small PDN's float32 training step costs 1.8 s on 8 crops
# of 128 px and 0.87 s on 8 crops of 96 px (16 x 16 output cells each: larger crops give barely more cells per
# second, 96 px twice the steps), and bfloat16, where it measures faster, 0.43 s. Here 600 steps of 8 crops of
# 96 px, lr 1e-3 (a short schedule, as the quick profile's student's) with cosine decay, take ~4.3 min on one
# thread in bfloat16 (~9 min in float32), plus ~30 s of backbone features: a few minutes, once per machine.
# The targets keep the published 256 px (the backbone sees 512 px), computed once per image and mirror image.
DISTILL_RECIPE = {
    "pdn": "small",
    "image_size": 256,  # images are resized to this; their targets are computed once, at this size
    "crop": 96,  # the PDN trains on random crops of this side (a multiple of 4; None: whole images)
    "batch_size": 8,
    "steps": 600,
    "lr": 1e-3,
    "precision": "auto",  # float32, bfloat16, or auto: whichever trains faster here
    "synthetic_images": 16,  # impellers drawn by impeller_bench.data.synth among the free images
}

# scikit-image's bundled photos whose docstrings state them free to use (public domain or CC0); a sample that
# needs a download, or is missing from the installed scikit-image, is skipped.
SAMPLE_PHOTOS = {
    "astronaut": "public domain", "chelsea": "CC0", "coffee": "CC0", "rocket": "public domain", "camera": "CC0",
    "text": "public domain", "clock": "public domain", "horse": "CC0", "hubble_deep_field": "public domain",
    "retina": "CC0", "brick": "CC0", "grass": "CC0", "gravel": "CC0", "cell": "CC0",
}
# impeller_bench.data.synth draws image k of a split from the stream (seed, split key, k), split keys 0 to 2; the
# free images take key 3, so they are never among any synthetic dataset's images (its test images included).
SYNTHETIC_STREAM = 3
FREE_IMAGES_LICENCE = ("free to use: scikit-image sample photos that are public domain or CC0 (per skimage.data's "
                       "docstrings) and impellers drawn by impeller_bench.data.synth; no dataset's images")
USER_IMAGES_LICENCE = "the user's own images (given with --images; they must be free to use)"
# Every detector with the teacher "distilled" takes the teacher of this seed, so one teacher per machine serves all.
SHARED_TEACHER_SEED = 0


def sample_photos() -> list[np.ndarray]:
    """scikit-image's bundled photos that are public domain or CC0 (``SAMPLE_PHOTOS``): generic, offline."""
    return list(named_sample_photos().values())


def named_sample_photos() -> dict[str, np.ndarray]:
    """``sample_photos`` by name, the names being what a teacher's sidecar lists."""
    from skimage import data

    photos = {}
    for name in SAMPLE_PHOTOS:
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
        photos[name] = image.astype(np.uint8)
    return photos


def synthetic_impellers(count: int, seed: int, size: int) -> list[np.ndarray]:
    """``count`` normal impellers drawn in memory from a stream no synthetic dataset uses (``SYNTHETIC_STREAM``)."""
    from ...data.synth import impeller

    return [impeller(np.random.default_rng([seed, SYNTHETIC_STREAM, k]), size)[0] for k in range(count)]


def free_images(seed: int) -> tuple[list[np.ndarray], str]:
    """(images, where they come from): the default distillation images, all free to use and made here, offline:
    scikit-image's public-domain and CC0 photos plus ``DISTILL_RECIPE["synthetic_images"]`` synthetic impellers of
    this seed. No dataset is read: the casting photos are CC BY-NC-ND, and a teacher distilled on them would be a
    derivative of them."""
    photos = named_sample_photos()
    count, size = DISTILL_RECIPE["synthetic_images"], DISTILL_RECIPE["image_size"]
    drawn = synthetic_impellers(count, seed, size)
    named = ", ".join(f"{name} ({SAMPLE_PHOTOS[name]})" for name in photos)
    description = (f"{len(photos)} scikit-image sample photos: {named}; + {count} synthetic impellers "
                   f"(impeller_bench.data.synth, seed {seed}, drawn for distillation only)")
    return list(photos.values()) + drawn, description


def images_from_folders(folders) -> list[np.ndarray]:
    images = []
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if is_image_file(p)):
            images.append(read_image(path))
    return images


def distill_stages(backbone: str) -> tuple[str, ...]:
    """The feature maps a teacher distilled from ``backbone`` regresses; one error for a backbone without them."""
    if backbone not in DISTILL_STAGES:
        raise ImpellerBenchError(f"no distillation recipe for backbone {backbone!r}; known: {', '.join(DISTILL_STAGES)}")
    return DISTILL_STAGES[backbone]


class FeatureTarget:
    """Backbone patch features -> 384 normalised channels, one vector per output cell of a PDN on the same image."""

    def __init__(self, image_size: int, device: torch.device, backbone: str = "efficientnet_lite0",
                 backbone_weights=None):
        self.features = FeatureTeacher(backbone, image_size, distill_stages(backbone), scale=2.0,
                                       weights=backbone_weights).to(device)
        if self.features.out_channels != TEACHER_CHANNELS:
            raise ImpellerBenchError(f"{backbone}'s maps {DISTILL_STAGES[backbone]} have fewer than "
                                     f"{TEACHER_CHANNELS} channels")
        self.device = device
        self.mean = self.std = None

    def patch_features(self, batch01: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.features.patch_features(normalise(chunk.to(self.device))).cpu()
                              for chunk in batch01.split(8)])

    def fit(self, batch01: torch.Tensor, seed: int) -> torch.Tensor:
        """Fits the projection and the normalisation on these images; returns their targets (so that their
        features are not computed twice)."""
        features = self.patch_features(batch01)
        vectors = features.permute(0, 2, 3, 1).flatten(0, 2)
        offset, projection = pca_projection(vectors, TEACHER_CHANNELS, seed)
        self.features.offset, self.features.projection = offset.to(self.device), projection.to(self.device)
        projected = self._project(features)
        self.mean, self.std = projected.mean((0, 2, 3), keepdim=True), projected.std((0, 2, 3), keepdim=True) + 1e-6
        return (projected - self.mean) / self.std

    def __call__(self, batch01: torch.Tensor) -> torch.Tensor:
        return (self._project(self.patch_features(batch01)) - self.mean) / self.std

    def _project(self, features: torch.Tensor) -> torch.Tensor:
        offset, projection = self.features.offset.cpu(), self.features.projection.cpu()
        return ((features.permute(0, 2, 3, 1) - offset) @ projection).permute(0, 3, 1, 2)


def recipe_with(settings: dict) -> dict:
    """``DISTILL_RECIPE`` with some settings changed; one error for a setting it does not have."""
    unknown = set(settings) - set(DISTILL_RECIPE)
    if unknown:
        raise ImpellerBenchError(f"unknown distillation setting(s) {sorted(unknown)}; known: {', '.join(DISTILL_RECIPE)}")
    recipe = DISTILL_RECIPE | settings
    crop = recipe["crop"]
    if recipe["image_size"] % 4 or (crop is not None and (crop % 4 or crop < 36)):
        raise ImpellerBenchError("the distillation's image size and crop must be multiples of 4 (the PDN's stride), "
                                 "the crop at least 36 px (one output cell)")
    if recipe["precision"] not in ("float32", "bfloat16", "auto"):
        raise ImpellerBenchError(f"unknown precision {recipe['precision']!r} (float32, bfloat16 or auto)")
    return recipe


def random_crops(views: torch.Tensor, targets: torch.Tensor, batch_size: int, crop: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random crops of ``crop`` px with their target cells. Offsets are multiples of 4: a PDN (no
    padding) gives on the crop at pixel 4k exactly its output on the whole image from cell k on."""
    cells, last = teacher_size(crop), (views.shape[-1] - crop) // 4
    picks = torch.randint(len(views), (batch_size,), generator=generator).tolist()
    offsets = torch.randint(last + 1, (batch_size, 2), generator=generator).tolist()
    x = torch.stack([views[i, :, 4 * a:4 * a + crop, 4 * b:4 * b + crop] for i, (a, b) in zip(picks, offsets)])
    y = torch.stack([targets[i, :, a:a + cells, b:b + cells] for i, (a, b) in zip(picks, offsets)])
    return x, y


def views_and_targets(images, image_size: int, device: torch.device, backbone: str, backbone_weights, seed: int,
                      progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and their mirror images at ``image_size`` (in [0, 1]), and their targets (bfloat16, on the CPU)."""
    data = images01(images, image_size)
    target = FeatureTarget(image_size, device, backbone, backbone_weights)
    mirrored = data.flip(-1).split(8)
    targets = torch.cat([target.fit(data, seed).bfloat16()]
                        + [target(chunk).bfloat16()
                           for chunk in (progress(mirrored, "mirrored images' features") if progress else mirrored)])
    return torch.cat([data, data.flip(-1)]), targets


def backbone_note(backbone: str) -> str:
    role = "the paper's backbone" if backbone == PAPER_BACKBONE else "a substitute for the paper's WideResNet-101"
    return f"{backbone} (ImageNet), {role}"


def distill_teacher(images: list[np.ndarray], out, *, backbone: str = "efficientnet_lite0", seed: int = 0,
                    device: str | None = None, backbone_weights=None, progress=None, sources: str = "",
                    licence: str = USER_IMAGES_LICENCE, **settings) -> dict:
    """Train a PDN teacher with ``DISTILL_RECIPE`` (``settings`` change it: image_size=64, steps=3, ...); writes
    its state dict (published key layout) and, first, a sidecar JSON, which it returns.

    The backbone is frozen, so its targets are computed once per image and mirror image (the only
    augmentation besides the crops) and kept in bfloat16 (float32's range, half the memory). The caller's
    random state is left as it was, since a detector may distil its teacher in the middle of its own training."""
    recipe, _ = recipe_with(settings), distill_stages(backbone)  # errors before any work
    if len(images) < 2:
        raise ImpellerBenchError("distillation needs at least two images")
    image_size, device = recipe["image_size"], pick_device(device)
    with torch.random.fork_rng(devices=[]):  # building the backbone and the PDN draws from it
        torch.manual_seed(seed)
        views, targets = views_and_targets(images, image_size, device, backbone, backbone_weights, seed, progress)
        teacher = pdn(TEACHER_CHANNELS, recipe["pdn"]).to(device)
        precision = fastest_precision(device) if recipe["precision"] == "auto" else recipe["precision"]
    crop = min(recipe["crop"] or image_size, image_size)
    generator = torch.Generator().manual_seed(seed)
    loss = _train(teacher, views, targets, recipe | {"crop": crop, "precision": precision}, generator, progress)
    meta = recipe | {"crop": crop, "seed": seed, "training_precision": precision, "images": len(images),
                     "image_sources": sources, "image_licence": licence, "final_loss": loss,
                     "backbone": backbone_note(backbone), "feature_stages": list(distill_stages(backbone)),
                     "distill_version": DISTILL_VERSION}
    # The sidecar first: a teacher file that exists always has its sidecar (the cache takes the file as done).
    atomic_write_bytes(Path(str(out) + ".json"), (json.dumps(meta, indent=1) + "\n").encode())
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()}, buffer)
    atomic_write_bytes(out, buffer.getvalue())
    return meta


@torch.enable_grad()  # a detector's first teacher pass, which may distil, runs under no_grad
def _train(teacher: nn.Module, views: torch.Tensor, targets: torch.Tensor, recipe: dict, generator: torch.Generator,
           progress=None) -> float:
    """Fits ``teacher`` to the targets on random crops of the views (a resolved ``recipe``); returns the last loss."""
    device = next(teacher.parameters()).device
    steps, bfloat16 = recipe["steps"], recipe["precision"] == "bfloat16"
    optimiser = torch.optim.Adam(teacher.parameters(), lr=recipe["lr"], weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    layout = torch.channels_last if bfloat16 else torch.contiguous_format  # what oneDNN's bf16 kernels want
    teacher.to(memory_format=layout)
    meter = TrainingMeter()
    for _ in (progress(range(steps), "distilling", meter.status) if progress else range(steps)):
        meter.tick()
        x, y = random_crops(views, targets, recipe["batch_size"], recipe["crop"], generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
            output = teacher(normalise(x.to(device)).contiguous(memory_format=layout))
        loss = ((output.float() - y.to(device).float()) ** 2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        meter.loss = float(loss.detach())
    teacher.to(memory_format=torch.contiguous_format)
    return meter.loss


# ----------------------------------------------------------------- the per-machine cache


def recipe_key(pdn_size: str | None = None) -> str:
    """A short sha256 of what makes a cached teacher: the recipe (with this PDN size), the distillation's version,
    the synthetic generator's version and the sample photos' names. A teacher made any other way has another key."""
    from ...data.synth import GENERATOR_VERSION

    recipe = DISTILL_RECIPE | ({"pdn": pdn_size} if pdn_size else {})
    material = {"recipe": recipe, "distill_version": DISTILL_VERSION, "generator_version": GENERATOR_VERSION,
                "sample_photos": list(SAMPLE_PHOTOS)}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:12]


def cached_teacher_path(backbone: str, seed: int, cache_dir: Path | None = None, pdn_size: str | None = None) -> Path:
    """Where the cached teacher of (backbone, recipe, seed) is, made or not: ``teachers/`` in the cache folder."""
    from ...common.files import cache_folder

    root = Path(cache_dir) if cache_dir is not None else cache_folder()
    return root / "teachers" / f"distilled-{backbone}-{recipe_key(pdn_size)}-seed{seed}.pt"


def cached_teacher(backbone: str = "efficientnet_lite0", seed: int = 0, cache_dir: Path | None = None, progress=None,
                   pdn_size: str | None = None) -> Path:
    """The file of a PDN teacher distilled from ``backbone`` on ``free_images(seed)`` with ``DISTILL_RECIPE``
    (``pdn_size`` None: the recipe's), distilled on first use (minutes on a CPU) and kept in the cache folder
    (``$IMPELLER_BENCH_CACHE``, else ``~/.cache/impeller-bench``), so that the cost is paid once per machine."""
    distill_stages(backbone)  # an unknown backbone: one error, before any work
    path = cached_teacher_path(backbone, seed, cache_dir, pdn_size)
    if path.is_file():
        return path
    images, sources = free_images(seed)
    settings = {"pdn": pdn_size} if pdn_size else {}
    distill_teacher(images, path, backbone=backbone, seed=seed, progress=progress, sources=sources,
                    licence=FREE_IMAGES_LICENCE, **settings)
    return path


# ----------------------------------------------------------------- the teacher spec "distilled[:BACKBONE]"


def distilled_backbone(spec: str) -> str:
    """The backbone of a teacher spec ``distilled`` (EfficientNet-Lite0) or ``distilled:BACKBONE``."""
    name, colon, backbone = spec.partition(":")
    if colon and not backbone:
        raise ImpellerBenchError(f"teacher {spec!r} names no backbone: 'distilled' or 'distilled:BACKBONE'")
    backbone = backbone or "efficientnet_lite0"
    distill_stages(backbone)
    return backbone


def distilled_label(spec: str, pdn_size: str) -> str:
    """How a detector's distilled teacher was made, in words (meta.json, tables)."""
    backbone = distilled_backbone(spec)
    path = cached_teacher_path(backbone, SHARED_TEACHER_SEED, pdn_size=pdn_size)
    return f"PDN distilled from {backbone} features on free images (cached {path}, recipe {recipe_key(pdn_size)})"


def load_on_first_use(teacher: nn.Module, spec: str, pdn_size: str) -> None:
    """Fill ``teacher`` (a PDN) with this machine's cached distilled teacher when it first runs (distilling it
    first where there is none), unless weights are loaded into it before: a saved detector holds its teacher's
    weights, so loading one needs no cache and never distils. The hooks stay; once done they only read a flag
    (kept on the module, so that a copy of it behaves the same)."""
    teacher._distilled_pending = (distilled_backbone(spec), pdn_size)
    teacher.register_forward_pre_hook(_load_pending_teacher)
    teacher.register_load_state_dict_post_hook(_forget_pending_teacher)


def _load_pending_teacher(module: nn.Module, _inputs) -> None:
    pending = getattr(module, "_distilled_pending", None)
    if pending is not None:
        backbone, pdn_size = pending
        path = cached_teacher(backbone, SHARED_TEACHER_SEED, pdn_size=pdn_size)
        module.load_state_dict(teacher_state_from_file(path, pdn_size))  # which clears the flag


def _forget_pending_teacher(module: nn.Module, _incompatible_keys) -> None:
    module._distilled_pending = None
