"""Detectors behind one interface, registered by name.

Every detector is fitted on normal images only and then scores images::

    detector = create("ours", seed=0)
    detector.fit(train_images)
    scores, maps = detector.score_images(test_images)   # (N,), (N, H, W) at the input size
    detector.save("ours.pt"); detector = load("ours.pt")

Images are uint8 numpy arrays, H x W (grey) or H x W x 3, all of one size.
"""
from __future__ import annotations

# Importing a detector module registers it.
from . import ast, padim, patchcore, patchsvdd, spade
from .base import (
    Detector,
    available,
    check_options,
    create,
    detector_class,
    load,
    option_names,
    register,
)
from .efficientad import detector as efficientad  # noqa: E402,F401

__all__ = ["Detector", "available", "create", "detector_class", "load", "register"]
