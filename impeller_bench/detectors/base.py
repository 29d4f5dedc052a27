"""The detector interface and registry."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch

from ..common.errors import ImpellerBenchError
from ..common.files import atomic_write_bytes
from ..common.version import __version__

_REGISTRY: dict[str, type["Detector"]] = {}
# 2: EfficientAD's teacher_weights became teacher (a backbone, a file or random).
# 3: the header names the package version that wrote it and holds a sha256 digest of header and tensors.
CHECKPOINT_FORMAT = 3
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


def option_names(name: str) -> set[str]:
    """The fields of detector ``name``'s configuration."""
    return {f.name for f in dataclasses.fields(detector_class(name).config_class)}


def check_options(name: str, options) -> None:
    """One error unless detector ``name``'s configuration has every field named in ``options``."""
    fields = option_names(name)
    unknown = set(options) - fields
    if unknown:
        raise ImpellerBenchError(f"{name} has no option(s) {', '.join(sorted(unknown))}; options: {', '.join(sorted(fields))}")


def create(name: str, device: str | None = None, **config) -> "Detector":
    """A new, unfitted detector; ``config`` overrides fields of its config dataclass."""
    check_options(name, config)
    cls = detector_class(name)
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
    def fit(self, images: Sequence[np.ndarray], progress: Callable | None = None,
            groups: Sequence | None = None) -> "Detector":
        """Learn from normal images only. ``groups``, where known, is each image's photo group (variants of
        one photo share one): a detector that holds images out of its fit holds out whole groups."""

    @abstractmethod
    def score_images(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(scores of shape N, maps of shape N x H x W at the input size); higher = more anomalous."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor the fitted detector needs (weights and normalisation statistics)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        ...

    def state_spec(self) -> dict[str, tuple[tuple, torch.dtype]]:
        """Every tensor a fitted state of this configuration holds: name -> (shape, dtype). A dimension is a
        number, or a letter for a size the training data set (a memory bank's rows), equal wherever the same
        letter stands. By default the shapes of this (unfitted) detector's own state."""
        return {k: (tuple(v.shape), v.dtype) for k, v in self.state_dict().items()}

    def require_fitted(self) -> None:
        if not self.fitted:
            raise ImpellerBenchError(f"{self.name} has not been fitted: call fit() on normal images first")

    def prepare_untrained(self) -> None:
        """Neutral statistics on untrained weights, so that ``score_images`` runs: for timing only."""
        raise NotImplementedError(f"{self.name} cannot be timed untrained")

    def memory_size(self) -> dict[str, int]:
        """How much of its training images the fitted (or timing-prepared) detector keeps and searches when
        scoring, by memory bank; its scoring time grows with it. Empty for a method that keeps none (fitted or not)."""
        return {}

    def describe(self) -> dict:
        """What goes into meta.json: the method, its configuration, and anything a table must show."""
        return {"method": self.name, "config": dataclasses.asdict(self.config)}

    def save(self, path: str | Path, extra: dict | None = None, extra_tensors: dict | None = None) -> None:
        """One file: tensors plus a JSON header (method, config, the writing version, ``extra`` under "model",
        a sha256 digest of it all), loadable with ``weights_only=True``; see :func:`read_checkpoint`.
        ``extra_tensors`` (a model file's check images, say) are kept beside the state, under the digest."""
        self.require_fitted()
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        extras = {k: v.detach().cpu() for k, v in (extra_tensors or {}).items()}
        header = {"format": CHECKPOINT_FORMAT, "package_version": __version__, "name": self.name,
                  "config": dataclasses.asdict(self.config)} | ({"model": extra} if extra else {})
        header["sha256"] = checkpoint_digest(header, state, extras)
        payload = {"header": torch.tensor(list(json.dumps(header).encode()), dtype=torch.uint8)}
        payload |= {f"state.{k}": v for k, v in state.items()} | {f"extra.{k}": v for k, v in extras.items()}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(path, buffer.getvalue())


def checkpoint_digest(header: dict, state: dict[str, torch.Tensor], extras: dict[str, torch.Tensor] | None = None) -> str:
    """sha256 of the header (without its own digest) and of every tensor's name, type, shape and bytes (the
    state's, then the extra tensors', named ``extra.NAME``).

    It detects a file changed after it was written (an edit, a damaged copy); it is not a signature (whoever
    edits the file can recompute it): safety against malicious files comes from loading tensors only."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "sha256"}, sort_keys=True).encode())
    tensors = state | {f"extra.{k}": v for k, v in (extras or {}).items()}
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(header, state, extra tensors) of a file written by ``Detector.save``, refused with one line when it is
    not one, was written by another version of impeller-bench, or was changed after it was written."""
    from ..common.backbones import load_state_dict

    payload = load_state_dict(path)
    try:
        header = json.loads(bytes(payload["header"].tolist()).decode())
        header["name"], header["config"]
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ImpellerBenchError("not an impeller-bench detector or model file", path) from exc
    written_by = header.get("package_version")
    if header.get("format") != CHECKPOINT_FORMAT or written_by != __version__:
        by = f"impeller-bench {written_by}" if written_by else "an earlier impeller-bench"
        raise ImpellerBenchError(f"written by {by} (file format {header.get('format')}); this is impeller-bench "
                                 f"{__version__} (format {CHECKPOINT_FORMAT}): train it again with this version",
                                 path)
    state = {k[len("state."):]: v for k, v in payload.items() if k.startswith("state.")}
    extras = {k[len("extra."):]: v for k, v in payload.items() if k.startswith("extra.")}
    if header.get("sha256") != checkpoint_digest(header, state, extras):
        raise ImpellerBenchError("contents do not match the digest written with them: the file was changed after "
                                 "it was saved, or is damaged; train it again", path)
    return header, state, extras


def load(path: str | Path, device: str | None = None) -> Detector:
    """A fitted detector from ``save`` (checked by :func:`read_checkpoint`); only tensors are unpickled."""
    header, state, _ = read_checkpoint(path)
    return detector_from_checkpoint(header, state, device, path)


def check_state(detector: Detector, state: dict[str, torch.Tensor], path: str | Path | None = None) -> None:
    """One ImpellerBenchError unless ``state`` holds exactly the tensors ``detector`` needs, each of its shape
    and dtype (a file whose digest was recomputed after an edit is intact, not right)."""
    spec = detector.state_spec()
    if set(state) != set(spec):
        holder = _method_holding(state, detector.name)
        missing, unexpected = sorted(set(spec) - set(state)), sorted(set(state) - set(spec))
        raise ImpellerBenchError(
            f"not a {model_name(detector.name)} model " + (f"(it holds {model_name(holder)}'s tensors)" if holder else
            f"(missing {', '.join(missing[:3]) or 'nothing'}; unexpected {', '.join(unexpected[:3]) or 'nothing'})"),
            path)
    sizes: dict[str, int] = {}
    for name, (shape, dtype) in spec.items():
        tensor = state[name]
        found = f"found {tuple(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}"
        expected = f"expected ({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''}) " \
                   f"{str(dtype).replace('torch.', '')}"
        fits = tensor.dtype == dtype and tensor.ndim == len(shape)
        for want, size in zip(shape, tensor.shape) if fits else ():
            if isinstance(want, str):  # (an empty memory bank fits no detector)
                fits = fits and size >= 1 and sizes.setdefault(want, size) == size
            else:
                fits = fits and want == size
        if not fits:
            raise ImpellerBenchError(f"tensor {name}: {expected}, {found}", path)


# The names the published tables give each method.
MODEL_NAMES = {"patchsvdd": "Patch SVDD", "spade": "SPADE", "padim": "PaDiM", "patchcore": "PatchCore",
               "ast": "AST", "efficientad": "EfficientAD", "ours": "Ours"}


def model_name(method: str) -> str:
    """A method's name as tables show it ("Ours", "PaDiM"); its registered name where it has none."""
    return MODEL_NAMES.get(method, method)


def _method_holding(state: dict[str, torch.Tensor], other_than: str) -> str | None:
    """The registered method whose default fitted state has exactly these tensor names, if one has."""
    for name in available():
        if name == other_than:
            continue
        try:
            if set(create(name, device="cpu").state_spec()) == set(state):
                return name
        except Exception:  # noqa: BLE001 - a hint only: a registered detector that cannot say is not the one
            continue
    return None


def detector_from_checkpoint(header: dict, state: dict[str, torch.Tensor], device: str | None = None,
                             path: str | Path | None = None) -> Detector:
    """The fitted detector a checkpoint's header and tensors describe, its tensors checked against the
    detector's :meth:`Detector.state_spec` first (one line naming the tensor, or whose tensors these are)."""
    detector = create(header["name"], device=device, **header["config"])
    check_state(detector, state, path)
    detector.load_state_dict(state)
    detector.fitted = True
    return detector
