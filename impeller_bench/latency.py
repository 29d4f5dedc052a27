"""Latency in the paper's protocol: batch 1, 256 x 256, from a host array to the device and the result back.

Each method is timed on a fresh detector with untrained weights and neutral
normalisation (the cost of a forward pass does not depend on the weights),
after warm-up runs; the median and 90th percentile are reported. With
``onnx=True`` the same path (image resized to the model's input size, scored,
map back at the image's size) runs through ONNX Runtime on the CPU instead of
torch, from the detector exported to a temporary file.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import detectors
from .detectors.base import parse_device
from .errors import ImpellerBenchError


def measure_latency(method: str, device: str | None = None, runs: int = 50, warmup: int = 5,
                    image_size: int = 256, seed: int = 0, profile: str | None = None, onnx: bool = False) -> dict:
    """``profile``: time the model a run with that profile trains (its own input size; the image stays
    ``image_size``); None: the method's configuration at ``image_size``. ``onnx``: time ONNX Runtime (CPU
    execution provider, torch's thread count) on the exported detector instead of torch."""
    if onnx:
        _require_onnx_timing(method, device)
    config = {"image_size": image_size} | (detectors.detector_class(method).profiles[profile] if profile else {})
    detector = detectors.create(method, device="cpu" if onnx else device, seed=seed, **config)
    detector.prepare_untrained()
    image = np.random.default_rng(seed).integers(0, 256, (image_size, image_size), dtype=np.uint8)
    if onnx:
        with tempfile.TemporaryDirectory() as folder:
            times = _timings(_onnx_scoring(detector, Path(folder) / "model.onnx"), image, runs, warmup)
    else:
        times = _timings(detector.score_images, image, runs, warmup)
    return {
        "method": method,
        "runtime": "onnxruntime" if onnx else "torch",
        "device": str(detector.device),
        "threads": torch.get_num_threads(),
        "image_size": image_size,
        "profile": profile,
        "model_image_size": detector.config.image_size,
        "batch_size": 1,
        "runs": runs,
        "warmup": warmup,
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
    }


def _require_onnx_timing(method: str, device: str | None) -> None:
    """One error, before any model is built, unless ``method`` exports and runs on the CPU here."""
    from .export import require_exportable, require_onnx

    require_exportable(method)
    require_onnx()
    if device and parse_device(device).type != "cpu":
        raise ImpellerBenchError(f"ONNX Runtime latency is measured on the CPU; device {device} does not apply")


def _onnx_scoring(detector: detectors.Detector, path: Path) -> Callable:
    """The detector exported to ``path``, as an ONNX Runtime ``score_images`` with torch's thread count."""
    from .export import export_onnx, onnx_scorer

    export_onnx(detector, path)
    return onnx_scorer(path, threads=torch.get_num_threads()).score_images


def _timings(score_images: Callable, image: np.ndarray, runs: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``runs`` calls on ``[image]``, after ``warmup`` untimed ones."""
    times = []
    with torch.inference_mode():
        for k in range(warmup + runs):
            start = time.perf_counter()
            score_images([image])  # ends with the map back on the host
            if k >= warmup:
                times.append(1000 * (time.perf_counter() - start))
    return times


def latency_plot(results: list[dict], path) -> None:
    """A bar per method: median latency, with the 90th percentile marked."""
    import io

    from .imageio import atomic_write_bytes
    from .plots import plt

    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(results), 3.5))
    names = [r["method"] + (" (ONNX)" if r.get("runtime") == "onnxruntime" else "") for r in results]
    ax.bar(names, [r["median_ms"] for r in results], color="tab:blue", label="median")
    ax.scatter(names, [r["p90_ms"] for r in results], color="black", marker="_", s=400, label="90th percentile")
    ax.set(ylabel="ms per image", title=f"Latency, batch 1, {results[0]['image_size']}px, {results[0]['device']}")
    medians = [r["median_ms"] for r in results]
    if max(medians) > 20 * min(medians):  # methods a hundredfold apart stay readable
        ax.set_yscale("log")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # outside: never over a bar
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
