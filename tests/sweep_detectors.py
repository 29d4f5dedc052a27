"""Detectors for the sweep tests, registered when this file is imported (``sweep --preload`` on every worker).

- ``mean-diff``: distance to the mean training image; deterministic and fast; ``delay`` seconds of sleep in
  its fit keep a cell running long enough to be interrupted.
- ``crash-once``: the same, except that its first fit for a given ``crash_marker`` file kills the process it
  runs in (a worker dying mid-cell) after creating the marker; later fits succeed.
- ``always-fails``: its fit raises.
"""
import dataclasses
import os
import time

import numpy as np
import torch

from impeller_bench.detectors import Detector, available, register


@dataclasses.dataclass
class MeanDiffConfig:
    seed: int = 0
    delay: float = 0.0
    crash_marker: str = ""


class MeanDiff(Detector):
    config_class = MeanDiffConfig

    def fit(self, images, progress=None, groups=None):
        time.sleep(self.config.delay)
        stack = np.stack([np.asarray(i, np.float64) for i in images])
        self.mean = stack.mean(axis=0) + self.config.seed * 1e-3  # seeds differ, as trained methods' do
        self.fitted = True
        return self

    def score_images(self, images):
        maps = np.stack([np.abs(np.asarray(i, np.float64) - self.mean) for i in images])
        maps = maps.mean(axis=-1) if maps.ndim == 4 else maps
        return maps.reshape(len(images), -1).max(axis=1), maps.astype(np.float32)

    def state_dict(self):
        return {"mean": torch.from_numpy(self.mean)}

    def load_state_dict(self, state):
        self.mean = state["mean"].numpy()


class CrashOnce(MeanDiff):
    def fit(self, images, progress=None, groups=None):
        marker = self.config.crash_marker
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker dies mid-cell, leaving no trace but the marker
        return super().fit(images, progress, groups)


class AlwaysFails(MeanDiff):
    def fit(self, images, progress=None, groups=None):
        raise ValueError("this detector always fails\n(on purpose)")


for _name, _cls in (("mean-diff", MeanDiff), ("crash-once", CrashOnce), ("always-fails", AlwaysFails)):
    if _name not in available():
        register(_name)(_cls)
