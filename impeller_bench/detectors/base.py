"""The detector interface and registry."""
from __future__ import annotations

import dataclasses
import io
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch

from ..errors import ImpellerBenchError
from ..imageio import atomic_write_bytes

_REGISTRY: dict[str, type["Detector"]] = {}
CHECKPOINT_FORMAT = 2  # 2: EfficientAD's teacher_weights became teacher (a backbone, a file or random)
TRAINING_IMAGES_FOR_TIMING = 400  # untrained detectors get memory of the size a 400-image fit gives


def register(name: str):
    """Class decorator: make a detector reachable by ``name``."""

    def add(cls):
        if name in _REGISTRY:
            raise ValueError(f"detector {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return add


def available() -> list[str]:
    """The registered detector names."""
    return sorted(_REGISTRY)


def detector_class(name: str) -> type["Detector"]:
    """The class registered as ``name`` (a clear error for unknown names)."""
    if name not in _REGISTRY:
        raise ImpellerBenchError(f"unknown detector {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def create(name: str, device: str | None = None, **config) -> "Detector":
    """A new, unfitted detector; ``config`` overrides fields of its config dataclass."""
    cls = detector_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = set(config) - fields
    if unknown:
        raise ImpellerBenchError(f"{name} has no option(s) {', '.join(sorted(unknown))}; options: {', '.join(sorted(fields))}")
    return cls(cls.config_class(**config), name=name, device=device)


def pick_device(device: str | None) -> torch.device:
    """The requested device (checked: ``parse_device``), else CUDA when present, else the CPU."""
    if device:
        return parse_device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_devices() -> list[str]:
    """The devices this machine can compute on: cpu, each CUDA device, Apple's mps where present."""
    cuda = [f"cuda:{k}" for k in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return ["cpu"] + cuda + (["mps"] if torch.backends.mps.is_available() else [])


def parse_device(text: str, name: str = "device") -> torch.device:
    """``text`` (cpu, cuda, cuda:1, mps) as a device this machine has, or one line naming the ones it has.

    Checked here, before any work: torch accepts 'cuda' on a machine without CUDA and fails only at the first
    tensor moved there, deep in a traceback. ``name`` starts the message (the CLI passes '--device')."""
    here = f"devices: {', '.join(available_devices())}"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ImpellerBenchError(f"{name} {text}: not a device name; {here}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ImpellerBenchError(f"{name} {text}: CUDA is not available here; {here}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ImpellerBenchError(f"{name} {text}: there is no CUDA device {device.index} here; {here}")
    if device.type not in ("cpu", "cuda") and device.type not in available_devices():
        raise ImpellerBenchError(f"{name} {text}: {device.type} is not available here; {here}")
    return device


class Detector(ABC):
    """Fit on normal images, then score images: image scores and pixel anomaly maps."""

    config_class: ClassVar[type]
    # Configuration overrides per run profile: "paper" is the published recipe, "quick" the CPU default.
    profiles: ClassVar[dict[str, dict]] = {"quick": {}, "paper": {}}

    def __init__(self, config, name: str, device: str | None = None):
        self.config = config
        self.name = name
        self.device = pick_device(device)
        self.fitted = False

    @abstractmethod
    def fit(self, images: Sequence[np.ndarray], progress: Callable | None = None) -> "Detector":
        """Learn from normal images only."""

    @abstractmethod
    def score_images(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(scores of shape N, maps of shape N x H x W at the input size); higher = more anomalous."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor the fitted detector needs (weights and normalisation statistics)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        ...

    def require_fitted(self) -> None:
        if not self.fitted:
            raise ImpellerBenchError(f"{self.name} has not been fitted: call fit() on normal images first")

    def prepare_untrained(self) -> None:
        """Neutral statistics on untrained weights, so that ``score_images`` runs: for timing only."""
        raise NotImplementedError(f"{self.name} cannot be timed untrained")

    def describe(self) -> dict:
        """What goes into meta.json: the method, its configuration, and anything a table must show."""
        return {"method": self.name, "config": dataclasses.asdict(self.config)}

    def save(self, path: str | Path) -> None:
        """One file: tensors plus the JSON description, loadable with ``weights_only=True``."""
        self.require_fitted()
        header = json.dumps({"format": CHECKPOINT_FORMAT, "name": self.name, "config": dataclasses.asdict(self.config)})
        payload = {"header": torch.tensor(list(header.encode()), dtype=torch.uint8)}
        payload |= {f"state.{k}": v.detach().cpu() for k, v in self.state_dict().items()}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(path, buffer.getvalue())


def load(path: str | Path, device: str | None = None) -> Detector:
    """A fitted detector from ``save``; only tensors are unpickled."""
    from ..backbones import load_state_dict

    payload = load_state_dict(path)
    try:
        header = json.loads(bytes(payload["header"].tolist()).decode())
    except (KeyError, ValueError) as exc:
        raise ImpellerBenchError("not an impeller-bench detector checkpoint", path) from exc
    if header.get("format") != CHECKPOINT_FORMAT:
        raise ImpellerBenchError(f"checkpoint format {header.get('format')!r} is not {CHECKPOINT_FORMAT}", path)
    detector = create(header["name"], device=device, **header["config"])
    detector.load_state_dict({k[len("state."):]: v for k, v in payload.items() if k.startswith("state.")})
    detector.fitted = True
    return detector
