"""What training shares: the augmentation of the autoencoder's inputs, the held-out validation split,
early stopping on the student's held-out distance, and the fastest arithmetic on the machine."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...common.backbones import normalise
from .networks import pdn

if TYPE_CHECKING:  # the detector imports this module
    from .detector import EfficientAD


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
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

    def __init__(self, detector: EfficientAD, validation: torch.Tensor):
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
