"""The two registered detectors, their configurations and profiles, and the training loop."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ...common.backbones import images01, normalise, weights_path
from ...common.errors import ImpellerBenchError
from ...common.progress import TrainingMeter
from ..base import Detector, register
from ..features import ScoredByModule
from .networks import PDN_BORDER, TEACHER_CHANNELS, AutoEncoder, pdn
from .scoring import ANOMALY_MAPS, MAP_PADDINGS, EfficientADScorer, mirror_border
from .teachers import FeatureTeacher, teacher_kind, teacher_state_from_file
from .training import EarlyStop, augment, fastest_precision, validation_split


@dataclass
class EfficientADConfig:
    decoder: str = "bilinear"
    dropout: float = 0.2
    pdn: str = "small"
    student_width: float = 1.0  # hidden channels of the student relative to the published PDN
    image_size: int = 256
    steps: int = 1000  # with stop_check_every, the most steps
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-5
    hard_quantile: float = 0.999
    validation_fraction: float = 0.1
    # A backbone's name (a frozen ImageNet feature teacher, offline), a pretrained PDN teacher file, or "random".
    teacher: str = "efficientnet_lite2"
    teacher_layers: list[str] | None = None  # feature teacher only; None: the backbone's middle layers
    teacher_scale: float = 1.0  # feature teacher only: the backbone sees the input enlarged by this factor
    # "minimum": the 4-pixel frame around the map takes each map's minimum (ranks as normal);
    # "zero": the published zero padding after normalisation (most normalised values are negative: a bright frame).
    map_padding: str = "minimum"
    # "combined" (published): the mean of the normalised student-teacher (local) and autoencoder (global) maps.
    # "local": the normalised local map alone (the autoencoder still trains the student's second half).
    anomaly_map: str = "combined"
    # The image score (an ablation): the mean of this share of the anomaly map's cells, the highest (at the PDN's
    # stride, before resizing and framing; at least one cell); 0: the map's maximum, as published (without border
    # cover: the maximum of the framed, resized map, which bilinear resizing makes a little lower than the
    # highest cell's). The idea: single cells of normal parts may score high by chance, a defect raises a patch.
    image_score_share: float = 0.0
    # True: the input is mirrored outwards by 16 pixels per side first, so the maps cover the whole image at the
    # PDN's stride and need no frame (image_size + 32 must then be a multiple of 32).
    cover_border: bool = False
    # 0: the published loop (a fresh augmentation and a teacher pass per step, two student passes). N > 0: the
    # teacher's outputs on N colour-augmented views per training image (the first unaugmented) are computed once
    # and each step trains one student pass on a batch of views against them (the CPU profile's economy).
    cached_views: int = 0
    # Cached views only, 0: no limit. N > 0: at most N views in all, so fewer per image on a large training set
    # (at least the unaugmented one): the teacher's passes before the first step stop growing with the set
    # (Magnetic Tile Defects, 673 images: 3 views each took 3.5 minutes on 2 cores; 8 would take about 12).
    cached_views_at_most: int = 0
    # Cached views only: each augmented view is also turned by a random multiple of 90 degrees and maybe mirrored
    # (for parts photographed in any orientation, as impellers are; more normal appearance from few photos).
    turn_views: bool = False
    # Training arithmetic: "float32" (published), "bfloat16" mixed precision (weights, loss and scoring stay
    # float32), or "auto": whichever of the two trains faster on this device, measured once per process.
    precision: str = "float32"
    # Scoring arithmetic: "float32" (published; every profile's default, so that scores do not depend on the CPU)
    # or "bfloat16": the networks under bfloat16 autocast, the maps and their statistics in float32 (for a line
    # whose CPU has bfloat16 units: about half the latency on this project's 2-core AMD EPYC, see the README).
    scoring_precision: str = "float32"
    # Early stopping on held-out normal images: every stop_check_every steps (0: never), the student's mean
    # squared distance to the (per-channel standardised) teacher on the validation images; training stops at the
    # first check where it is at most stop_distance (the student reproduces that much of the teacher's variance
    # on unseen normal images: 0.2 = 80%) or, with stop_min_improvement (a fraction; None: never), improved on
    # the previous check by less than that, then trains a final tail of 1/19 of the steps done at lr x 0.1 (so
    # the published decay still covers the last 5%). Checks stop where a full-length run would decay. A feature
    # teacher's only: with a PDN teacher (file, distilled, random) every step is trained.
    stop_check_every: int = 0
    stop_distance: float = 0.0
    stop_min_improvement: float | None = None
    seed: int = 0


@dataclass
class OursConfig(EfficientADConfig):
    decoder: str = "transposed"
    dropout: float = 0.0


@register("efficientad")
class EfficientAD(ScoredByModule, Detector):
    config_class = EfficientADConfig
    scorer_class = EfficientADScorer
    scoring_batch = 8
    # "quick" is the CPU default, chosen from the quality-against-time curve of benchmarks/efficientad_budget.py
    # (figures in the README's EfficientAD section): the frozen feature teacher (the configuration's default,
    # EfficientNet-Lite2: 3 image-AUROC points over Lite0 on impeller-v2-native, 5 on impeller-v2-300) seeing the
    # image at twice the size, 128 x 128 inputs mirrored to cover the border, a half-width student, teacher outputs
    # cached on eight views per image (colour-augmented, turned and mirrored), one student pass per step, lr 1e-3
    # and the top 10% as hard features (for a short schedule), and bfloat16 where it measures faster. Training stops
    # once the student reproduces 80% of the teacher's variance on held-out normals (the built-in impellers: 500
    # steps), else after 2,000 (real photos); not on a plateau: the distance on a few held-out photos is too noisy
    # for that (a 2% rule stopped v2-native's seed 1 at 1,053 steps, Lite0 teacher: image AUROC 71.95 against 77.01
    # at 2,000). Every profile scores with the published combined map (the method's definition); the local map
    # alone is an ablation (anomaly_map="local"; benchmarks/efficientad_budget.py reports both maps of one fit).
    profiles = {
        "paper": {"steps": 70_000, "batch_size": 1, "image_size": 256, "precision": "float32"},
        "quick": {"steps": 2000, "stop_check_every": 250, "stop_distance": 0.2,
                  "batch_size": 4, "image_size": 128, "precision": "auto", "lr": 1e-3,
                  "hard_quantile": 0.9, "teacher_scale": 2.0, "cover_border": True, "student_width": 0.5,
                  "cached_views": 8, "cached_views_at_most": 2048, "turn_views": True},
    }

    def __init__(self, config, name, device=None):
        super().__init__(config, name, device)
        c = config
        if c.precision not in ("float32", "bfloat16", "auto"):
            raise ImpellerBenchError(f"unknown precision {c.precision!r} (float32, bfloat16 or auto)")
        if c.scoring_precision not in ("float32", "bfloat16"):
            raise ImpellerBenchError(f"unknown scoring precision {c.scoring_precision!r} (float32 or bfloat16)")
        if c.map_padding not in MAP_PADDINGS:
            raise ImpellerBenchError(f"unknown map padding {c.map_padding!r} ({' or '.join(MAP_PADDINGS)})")
        if c.anomaly_map not in ANOMALY_MAPS:
            raise ImpellerBenchError(f"unknown anomaly map {c.anomaly_map!r} ({' or '.join(ANOMALY_MAPS)})")
        if not 0 <= c.image_score_share <= 1:
            raise ImpellerBenchError(f"image_score_share is a share of the map's cells, from 0 to 1, not {c.image_score_share}")
        self.teacher_kind = teacher_kind(c.teacher)
        torch.manual_seed(c.seed)
        self.input_size = c.image_size + (2 * PDN_BORDER if c.cover_border else 0)
        if self.teacher_kind == "features":
            self.teacher = FeatureTeacher(c.teacher, self.input_size, c.teacher_layers, c.teacher_scale)
            channels = self.teacher.out_channels
        else:
            if c.teacher_layers:  # (teacher_scale, a profile's setting, simply has nothing to scale here)
                raise ImpellerBenchError("teacher_layers applies to a backbone feature teacher only")
            self.teacher, channels = pdn(TEACHER_CHANNELS, c.pdn), TEACHER_CHANNELS
            if self.teacher_kind == "file":
                c.teacher = str(Path(c.teacher).resolve())  # a saved detector finds it from any folder
                try:
                    self.teacher.load_state_dict(teacher_state_from_file(c.teacher, c.pdn))
                except RuntimeError as exc:
                    raise ImpellerBenchError(f"not a {c.pdn} PDN teacher: {str(exc).splitlines()[0]}", c.teacher) from exc
            elif self.teacher_kind == "distilled":
                from .distill import distilled_backbone, load_on_first_use

                c.teacher = f"distilled:{distilled_backbone(c.teacher)}"  # the backbone on record
                # Loaded from the cache (seed 0 for every detector: one teacher per machine serves all) when the
                # teacher first runs, unless a saved detector's own teacher weights are loaded first.
                load_on_first_use(self.teacher, c.teacher, c.pdn)
        if (c.turn_views or c.cached_views_at_most) and not c.cached_views:
            raise ImpellerBenchError("turn_views and cached_views_at_most apply to cached views only (cached_views > 0)")
        self.channels = channels
        self.student = pdn(2 * channels, c.pdn, c.student_width)
        self.autoencoder = AutoEncoder(self.input_size, c.decoder, c.dropout, channels)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.buffers = {name: torch.zeros(shape) for name, shape in (
            ("teacher_mean", (1, channels, 1, 1)), ("teacher_std", (1, channels, 1, 1)), ("quantiles", (4,)))}
        self._to_device()

    @property
    def model_input_size(self) -> int:
        """The side of the square image the networks are given (before any mirrored border)."""
        return self.config.image_size

    @property
    def training_precision(self) -> str:
        """The configured precision, with "auto" resolved by measurement on this device."""
        return self.config.precision if self.config.precision != "auto" else fastest_precision(self.device)

    def _to_device(self):
        for module in (self.teacher, self.student, self.autoencoder):
            module.to(self.device)
        self.buffers = {k: v.to(self.device) for k, v in self.buffers.items()}

    # ----------------------------------------------------------------- data

    def _batch01(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 images -> float [0, 1] at the model's size (mirrored borders added), on the CPU."""
        return mirror_border(images01(images, self.config.image_size), self.config.cover_border)

    def _teacher(self, x01: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return EfficientADScorer(self).teacher_output(x01)

    # ----------------------------------------------------------------- training

    def fit(self, images, progress=None, groups=None):
        c = self.config
        if len(images) < 2:
            raise ImpellerBenchError("EfficientAD needs at least two training images")
        generator = torch.Generator().manual_seed(c.seed)
        data = self._batch01(images)
        order = torch.randperm(len(data), generator=generator).tolist()
        held = validation_split(order, max(1, int(round(c.validation_fraction * len(data)))), groups)
        # Never trained on: the maps' quantiles are fitted on them, and a model file's thresholds calibrated.
        self.validation_indices = held
        held_set = set(held)
        kept = [k for k in order if k not in held_set]
        validation, train = data[held], data[kept]
        self.teacher.eval()
        if self.teacher_kind == "features":
            self.teacher.fit_projection((normalise(chunk.to(self.device)) for chunk in train.split(8)), c.seed)
        # The teacher is frozen and sees the unaugmented images in the student loss: its outputs are computed once.
        train_targets = self._fit_teacher_statistics(train)
        if c.cached_views:
            train, train_targets = self._cached_views(train, train_targets, generator, progress)
        self.student.train()
        self.autoencoder.train()
        parameters = list(self.student.parameters()) + list(self.autoencoder.parameters())
        optimiser = torch.optim.Adam(parameters, lr=c.lr, weight_decay=c.weight_decay)
        meter = TrainingMeter()
        bfloat16 = self.training_precision == "bfloat16"
        layout = torch.channels_last if bfloat16 else torch.contiguous_format  # what oneDNN's bf16 kernels want
        for module in (self.student, self.autoencoder, self.teacher):
            module.to(memory_format=layout)

        def train_step():
            meter.tick()
            pick = torch.randint(len(train), (c.batch_size,), generator=generator)
            x = train[pick].to(self.device).contiguous(memory_format=layout)
            target = train_targets[pick].to(self.device).float()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bfloat16):
                if c.cached_views:
                    loss = self._loss(x, target, x, target)
                else:
                    x_aug = augment(x, generator)
                    loss = self._loss(x, target, x_aug, self._teacher(x_aug).float())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            meter.loss = float(loss.detach())

        def set_lr(lr):
            for group in optimiser.param_groups:
                group["lr"] = lr

        decay_at = max(1, int(0.95 * c.steps))
        # The held-out distance tracks quality for a feature teacher only: a student of a PDN teacher's own
        # architecture imitates it at once (built-in data, distilled teacher: distance 0.018 at the first check,
        # image AUROC 69.5 stopped there against 80.3 after 2,000 steps), so a PDN teacher trains every step.
        stopping = EarlyStop(self, validation) if c.stop_check_every and self.teacher_kind == "features" else None
        done, stopped = 0, False
        steps = range(c.steps)
        for step in (progress(steps, "training", meter.status) if progress else steps):
            if step == decay_at:
                set_lr(c.lr * 0.1)
            train_step()
            done = step + 1
            if stopping is not None and done < decay_at and stopping.should_stop(done):
                stopped = True
                break
        if stopped:
            set_lr(c.lr * 0.1)
            tail = range(max(1, round(done / 19)))
            distance = stopping.history[-1][1]
            label = f"stopped early at step {done} (held-out distance {distance:.3f}); final steps at lr / 10"
            for _ in (progress(tail, label, meter.status) if progress else tail):
                train_step()
                done += 1
        for module in (self.student, self.autoencoder, self.teacher):
            module.to(memory_format=torch.contiguous_format)
        self.student.eval()
        self.autoencoder.eval()
        self._fit_map_quantiles(validation)
        self.last_loss = meter.loss
        self.steps_trained = done
        self.validation_distances = stopping.history if stopping is not None else []
        self.fitted = True
        return self

    def _fit_teacher_statistics(self, train: torch.Tensor) -> torch.Tensor:
        """Sets the per-channel mean and std; returns the normalised teacher outputs (on the CPU)."""
        outputs = []
        with torch.no_grad():
            for chunk in train.split(8):
                outputs.append(self.teacher(normalise(chunk.to(self.device))).cpu())
        stacked = torch.cat(outputs)
        mean = stacked.mean(dim=(0, 2, 3), keepdim=True)
        std = stacked.std(dim=(0, 2, 3), keepdim=True) + 1e-6
        self.buffers["teacher_mean"], self.buffers["teacher_std"] = mean.to(self.device), std.to(self.device)
        return (stacked - mean) / std

    def views_per_image(self, images: int) -> int:
        """How many views of each of ``images`` training images are cached (the first unaugmented)."""
        c = self.config
        return max(1, min(c.cached_views, c.cached_views_at_most // images)) if c.cached_views_at_most else c.cached_views

    def _cached_views(self, train: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, progress=None):
        """Each training image and ``views_per_image - 1`` augmented copies, with the teacher's outputs on them."""
        views, view_targets = [train], [targets.bfloat16()]
        self.cached_views_per_image = self.views_per_image(len(train))
        extra = range(self.cached_views_per_image - 1)
        label = f"teacher on {len(extra)} augmented view{'s' * (len(extra) != 1)} of each image"
        for _ in (progress(extra, label) if progress else extra):
            augmented = torch.cat([self._turn(augment(chunk, generator), generator) for chunk in train.split(1)])
            views.append(augmented)
            view_targets.append(torch.cat([self._teacher(chunk.to(self.device)).cpu().bfloat16()
                                           for chunk in augmented.split(8)]))
        return torch.cat(views), torch.cat(view_targets)

    def _turn(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.config.turn_views:
            return x
        turns, mirror = (int(v) for v in torch.randint(4, (2,), generator=generator))
        x = torch.rot90(x, turns, dims=(2, 3))
        return x.flip(3) if mirror % 2 else x

    def _loss(self, x: torch.Tensor, target: torch.Tensor, x_ae: torch.Tensor, target_ae: torch.Tensor) -> torch.Tensor:
        """Hard-feature student loss on x, autoencoder and student-autoencoder losses on x_ae (one student pass
        when x_ae is x)."""
        c, channels = self.config, self.channels
        out = self.student(normalise(x))
        distance = ((target - out[:, :channels].float()) ** 2).flatten()
        # The hard-feature loss: the distances at or above their hard_quantile (top-k: a sort costs 6x more).
        hard = torch.topk(distance, max(1, round((1 - c.hard_quantile) * distance.numel())), sorted=False).values
        ae = self.autoencoder(normalise(x_ae)).float()
        student_ae = (out if x_ae is x else self.student(normalise(x_ae)))[:, channels:].float()
        return hard.mean() + ((target_ae - ae) ** 2).mean() + ((ae - student_ae) ** 2).mean()

    # ----------------------------------------------------------------- scoring

    def _raw_maps(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local, global) maps of a network input (from ``_batch01``), before normalisation."""
        with torch.no_grad():
            return EfficientADScorer(self).raw_maps(x01)

    def _fit_map_quantiles(self, validation: torch.Tensor) -> None:
        locals_, globals_ = [], []
        for chunk in validation.split(8):
            local, global_ = self._raw_maps(chunk.to(self.device))
            locals_.append(local.flatten())
            globals_.append(global_.flatten())
        local, global_ = torch.cat(locals_), torch.cat(globals_)
        q = torch.tensor([0.9, 0.995], device=local.device)
        self.buffers["quantiles"] = torch.cat([torch.quantile(local, q), torch.quantile(global_, q)])

    def scoring_module(self):
        """The scoring module; on the CPU in channels-last layout, weights included (measured on the 2-core AMD
        EPYC, published PDN-S at 256 x 256: the whole path about a fifth faster; the arithmetic is the same)."""
        module = super().scoring_module()
        if self.device.type == "cpu":
            module.to(memory_format=torch.channels_last)
            module.channels_last = True
        return module

    def prepare_untrained(self):
        self.buffers["teacher_mean"].zero_()
        self.buffers["teacher_std"].fill_(1.0)
        self.buffers["quantiles"] = torch.tensor([0.0, 1.0, 0.0, 1.0], device=self.device)
        for module in (self.teacher, self.student, self.autoencoder):
            module.eval()
        self.fitted = True

    # ----------------------------------------------------------------- persistence

    def _teacher_state(self) -> dict[str, torch.Tensor]:
        """What a saved detector must hold of its teacher (a feature teacher's backbone is rebuilt from its name)."""
        return self.teacher.learnt_state() if self.teacher_kind == "features" else self.teacher.state_dict()

    def state_dict(self):
        state = {f"teacher.{k}": v for k, v in self._teacher_state().items()}
        state |= {f"student.{k}": v for k, v in self.student.state_dict().items()}
        state |= {f"autoencoder.{k}": v for k, v in self.autoencoder.state_dict().items()}
        return state | {f"buffer.{k}": v for k, v in self.buffers.items()}

    def load_state_dict(self, state):
        teacher = {k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")}
        if self.teacher_kind == "features":
            self.teacher.offset, self.teacher.projection = teacher["offset"], teacher["projection"]
        else:
            self.teacher.load_state_dict(teacher)
        for prefix, module in (("student.", self.student), ("autoencoder.", self.autoencoder)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.buffers = {k[len("buffer."):]: v for k, v in state.items() if k.startswith("buffer.")}
        self._to_device()
        for module in (self.teacher, self.student, self.autoencoder):
            module.eval()

    def teacher_label(self) -> str:
        """How the teacher was made, in words, for meta.json and every table."""
        c = self.config
        if self.teacher_kind == "features":
            return f"{c.teacher} features {'+'.join(self.teacher.layers)} (frozen, ImageNet)"
        if self.teacher_kind == "file":
            return f"pretrained PDN file {c.teacher}"
        if self.teacher_kind == "distilled":
            from .distill import distilled_label

            return distilled_label(c.teacher, c.pdn)
        return f"random (seeded, untrained: seed {c.seed})"

    def describe(self):
        weights = str(weights_path(self.config.teacher)) if self.teacher_kind == "features" else (
            self.config.teacher if self.teacher_kind == "file" else None)
        return super().describe() | {
            "teacher": self.teacher_label(),
            "teacher_weights": weights,
            "penalty": "none (no penalty images given)",
            "training_precision": self.training_precision,
        } | ({"steps_trained": self.steps_trained, "held_out_distances": self.validation_distances}
             if hasattr(self, "steps_trained") else {}) | (
            {"cached_views_per_image": self.cached_views_per_image} if hasattr(self, "cached_views_per_image") else {})


@register("ours")
class Ours(EfficientAD):
    """EfficientAD whose autoencoder decodes with transposed convolutions, without dropout."""

    config_class = OursConfig
