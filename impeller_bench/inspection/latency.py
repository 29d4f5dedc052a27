"""Latency in the paper's protocol: batch 1, 256 x 256, from a host array to the device and the result back.

Each method is timed on a fresh detector with untrained weights and neutral
normalisation (the cost of a forward pass does not depend on the weights),
after warm-up runs; the median and 90th percentile are reported. Methods timed
together are timed interleaved (one call of each in turn, every round after
the first in a fresh random order), so that a drifting machine load does not
favour the first or the last, and no method always follows the same one. With ``runtimes=(True,)``
the same path (image resized to the model's input size, scored, map back at
the image's size) runs through ONNX Runtime on the CPU instead of torch, from
the detector exported to a temporary file.

Each result row says how it was timed: ``interleaved_with`` is the number of
rows timed in the same rounds, its own included (a method timed on torch and
ONNX Runtime alone reads 2), and a method that searches a memory of its
training images (PatchCore, SPADE, Patch SVDD) is timed with the memory a fit
on ``TRAINING_IMAGES_FOR_TIMING`` (400) images keeps, recorded as ``memory``
(bank sizes) and ``memory_of_training_images``.
"""
from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import detectors
from ..common.errors import ImpellerBenchError
from ..detectors.base import TRAINING_IMAGES_FOR_TIMING, parse_device


def measure_latencies(methods: Sequence[str], device: str | None = None, runs: int = 50, warmup: int = 5,
                      image_size: int = 256, seed: int = 0, profile: str | None = None,
                      runtimes: Sequence[bool] = (False,), options: dict | None = None) -> list[dict]:
    """One result per method (and runtime), timed interleaved: run k of every method, then run k + 1, so that
    a machine's drifting load (turbo, other processes) weighs on every method alike.

    ``profile``: time the model a run with that profile trains (its own input size; the image stays
    ``image_size``); None: the method's configuration at ``image_size``. ``runtimes``: False for torch, True for
    ONNX Runtime (CPU execution provider, torch's thread count) on the exported detector. ``options``:
    configuration overrides for every method (e.g. the anomaly map). All the models are held at once (memory:
    their sum), and each call runs after the others' (caches as a line running several models would have them)."""
    twice = sorted(m for m, count in Counter(methods).items() if count > 1)
    if twice:
        raise ImpellerBenchError(f"method(s) named twice: {', '.join(twice)}")
    with tempfile.TemporaryDirectory() as folder:
        timed = timed_scorers(methods, Path(folder), device, image_size, seed, profile, runtimes, options)
        return finish_rows(timed, time_interleaved([score for _, score in timed], test_image(image_size, seed),
                                                   runs, warmup), runs, warmup)


def test_image(image_size: int = 256, seed: int = 0) -> np.ndarray:
    """The grey uint8 image every latency is timed on (content does not change a forward pass's cost)."""
    return np.random.default_rng(seed).integers(0, 256, (image_size, image_size), dtype=np.uint8)


def timed_scorers(methods: Sequence[str], folder: Path, device: str | None = None, image_size: int = 256,
                  seed: int = 0, profile: str | None = None, runtimes: Sequence[bool] = (False,),
                  options: dict | None = None) -> list[tuple[dict, Callable]]:
    """(row describing the timing, ``score_images``) per method and runtime, on untrained, timing-prepared
    detectors; exported graphs are written under ``folder``. Every refusal comes before any model is built."""
    for method in methods:
        detectors.check_options(method, options or {})
        if True in runtimes:
            _require_onnx_timing(method, device)
    timed = []
    for method in methods:
        config = ({"image_size": image_size} | (detectors.detector_class(method).profiles[profile] if profile else {})
                  | (options or {}))
        for on_onnx in runtimes:
            detector = detectors.create(method, device="cpu" if on_onnx else device, seed=seed, **config)
            detector.prepare_untrained()
            memory = detector.memory_size()
            score = (_onnx_scoring(detector, folder / f"{method}-{len(list(folder.iterdir()))}.onnx") if on_onnx
                     else detector.score_images)
            row = {
                "method": method, "runtime": "onnxruntime" if on_onnx else "torch",
                "device": str(detector.device), "threads": torch.get_num_threads(), "image_size": image_size,
                "profile": profile, "model_image_size": detector.config.image_size, "options": options or {},
                "batch_size": 1,
            } | ({"anomaly_map": detector.config.anomaly_map} if hasattr(detector.config, "anomaly_map") else {}) \
              | ({"memory": memory, "memory_of_training_images": TRAINING_IMAGES_FOR_TIMING} if memory else {})
            timed.append((row, score))
    return timed


def finish_rows(timed: Sequence[tuple[dict, Callable]], times: Sequence[Sequence[float]], runs: int,
                warmup: int) -> list[dict]:
    """Each row with its protocol and its median and 90th percentile of ``times`` (ms), in order."""
    return [row | {"runs": runs, "warmup": warmup, "interleaved_with": len(timed),
                   "median_ms": float(np.median(own)), "p90_ms": float(np.percentile(own, 90))}
            for (row, _), own in zip(timed, times)]


def measure_latency(method: str, device: str | None = None, runs: int = 50, warmup: int = 5,
                    image_size: int = 256, seed: int = 0, profile: str | None = None, onnx: bool = False) -> dict:
    """One method's latency, alone (see ``measure_latencies``)."""
    return measure_latencies([method], device, runs, warmup, image_size, seed, profile, runtimes=(onnx,))[0]


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


def time_interleaved(scorers: Sequence[Callable], image: np.ndarray, runs: int, warmup: int) -> list[list[float]]:
    """Milliseconds of each of ``runs`` calls of each scorer on ``[image]``, after ``warmup`` untimed rounds; one
    round calls every scorer once, in turn: the first round in the given order, every later one in a fresh
    random order (seed 0), so that what a call leaves behind (threads still spinning, ONNX Runtime's or OpenMP's;
    a cache full of its weights) weighs on every scorer alike rather than on the one that always follows it."""
    times = [[] for _ in scorers]
    orders = np.random.default_rng(0)
    with torch.inference_mode():
        for k in range(warmup + runs):
            for which in (range(len(scorers)) if k == 0 else orders.permutation(len(scorers))):
                start = time.perf_counter()
                scorers[which]([image])  # ends with the map back on the host
                if k >= warmup:
                    times[which].append(1000 * (time.perf_counter() - start))
    return times


def latency_plot(results: list[dict], path) -> None:
    """A bar per method: median latency, with the 90th percentile marked."""
    import io

    from ..common.files import atomic_write_bytes
    from ..evaluation.plots import plt

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


def multiply_adds(module: torch.nn.Module, *inputs: torch.Tensor) -> dict[str, int]:
    """The multiply-adds one call of ``module(*inputs)`` runs in each of its convolutions, transposed
    convolutions and linear layers, by qualified name (a layer called twice counts twice).

    A convolution does (in_channels / groups) x kernel area per output element; a transposed convolution
    (out_channels / groups) x kernel area per input element; a linear layer in_features per output element."""
    counts: dict[str, int] = Counter()

    def count(name):
        def hook(layer, args, output):
            if isinstance(layer, torch.nn.ConvTranspose2d):
                per = layer.out_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
                counts[name] += args[0].numel() * per
            elif isinstance(layer, torch.nn.Conv2d):
                per = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
                counts[name] += output.numel() * per
            else:
                counts[name] += output.numel() * layer.in_features
        return hook

    handles = [layer.register_forward_hook(count(name)) for name, layer in module.named_modules()
               if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]
    try:
        with torch.inference_mode():
            module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return dict(counts)


def convolution_floor(module: torch.nn.Module, x: torch.Tensor, runs: int = 20,
                      bfloat16: bool = False) -> dict:
    """The least time ``module(x)`` could take on this machine if every layer ran at the rate the heaviest
    convolution reaches alone: its multiply-adds over that rate (the heaviest layer's own median of ``runs``
    calls on its real input, after 3 untimed ones, in ``x``'s layout; bfloat16 autocast with ``bfloat16``).
    Returns the total and the heaviest layer's multiply-adds, the rate (multiply-adds per second) and the floor
    in ms."""
    counts = multiply_adds(module, x)
    heaviest_name = max(counts, key=counts.get)
    heaviest = module.get_submodule(heaviest_name)
    seen = []
    handle = heaviest.register_forward_pre_hook(lambda layer, args: seen.append(args[0].clone()))
    try:
        with torch.inference_mode():
            module(x)
    finally:
        handle.remove()
    layer_input, ms = seen[0], []
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bfloat16):
        for k in range(3 + runs):
            start = time.perf_counter()
            heaviest(layer_input)
            if k >= 3:
                ms.append(1000 * (time.perf_counter() - start))
    rate = counts[heaviest_name] / len(seen) / (float(np.median(ms)) / 1000)  # per call of the layer
    total = sum(counts.values())
    return {"multiply_adds": total, "heaviest_layer": heaviest_name, "heaviest_multiply_adds": counts[heaviest_name],
            "rate_per_s": rate, "floor_ms": 1000 * total / rate}
