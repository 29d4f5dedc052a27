"""ONNX export of fitted detectors: one graph from the image to the image score and the anomaly map.

The graph is the detector's own scoring module (``scoring_module()``, the code
``score_images`` runs), traced by torch's TorchScript-based exporter:

- input ``image``: float32, N x 3 x S x S (N dynamic), RGB in [0, 1] (grey
  images: the value in all three channels), resized to the model's input side
  S as ``impeller_bench.backbones.images01`` does (bilinear, antialiased);
- outputs ``score`` (N; higher = more anomalous) and ``map`` (N x S x S: the
  anomaly map at the model's input size; resize it bilinearly to the image's
  own size).

For images of size S the graph's outputs are the detector's ``score_images``
outputs (in float32: a detector configured to score in bfloat16 exports its
float32 arithmetic). At another size the detector makes its map at that size directly
(grid upsampled, then smoothed), while the graph's S x S map is resized
afterwards: the two differ by that order of interpolation.

The exported methods: EfficientAD and ours, PaDiM, PatchCore (whatever
registered detector has a ``scoring_module``). PatchCore's graph measures a
whole batch's patches against the whole memory bank at once (N x P x B
floats; torch splits that into blocks): give it a few images per run. Needs
the ``export`` extra (onnx, onnxruntime).
"""
from __future__ import annotations

import dataclasses
import io
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import detectors
from ..common.backbones import images01
from ..common.errors import ImpellerBenchError
from ..common.files import atomic_write_bytes
from ..common.version import __version__

INPUT = "image"
OUTPUTS = ("score", "map")
INSTALL_HINT = "pip install impeller-bench[export] (from a clone: pip install -e '.[export]')"
BATCH = 8  # images per torch or ONNX Runtime call in check_export and OnnxScorer.score_images


def require_onnx():
    """The onnx and onnxruntime modules, or one error saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ImpellerBenchError(f"ONNX export needs onnx and onnxruntime ({exc.name} is missing): {INSTALL_HINT}") from None
    return onnx, onnxruntime


def exportable_methods() -> list[str]:
    """The registered detector names that export to ONNX."""
    return [name for name in detectors.available() if hasattr(detectors.detector_class(name), "scoring_module")]


def require_exportable(method: str) -> None:
    """One error unless the registered method ``method`` exports to ONNX."""
    if method not in exportable_methods():
        raise ImpellerBenchError(f"{method} cannot be exported to ONNX; exportable methods: "
                                 f"{', '.join(exportable_methods())}")


def scoring_module(detector: detectors.Detector) -> torch.nn.Module:
    """The detector's scoring module, or one error: a method that does not export, or an unfitted detector."""
    require_exportable(detector.name)
    module = detector.scoring_module()
    if getattr(module, "bfloat16", False):  # ONNX Runtime's CPU kernels are float32: the graph always is
        module.bfloat16 = False
    return module


def export_metadata(detector: detectors.Detector, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The ONNX model's metadata_props: method, input size and layout, outputs, configuration, plus ``extra``
    (string keys and values; the keys written here cannot be replaced)."""
    size = detector.model_input_size
    props = {
        "producer": f"impeller-bench {__version__}",
        "method": detector.name,
        "model_input_size": str(size),
        "input": f"{INPUT}: RGB float32 in [0,1], N x 3 x {size} x {size}, resized to {size}x{size} "
                 "(bilinear, antialiased; a grey image repeated in the three channels)",
        "outputs": f"{OUTPUTS[0]}: N image scores (higher = more anomalous); {OUTPUTS[1]}: N x {size} x {size} "
                   "anomaly maps at the input size (resize bilinearly to the image's own size)",
        "config": json.dumps(dataclasses.asdict(detector.config), sort_keys=True),
    }
    extra = dict(extra or {})
    wrong = [k for k, v in extra.items() if not isinstance(k, str) or not isinstance(v, str)]
    if wrong:
        raise ImpellerBenchError(f"ONNX metadata keys and values must be strings: {', '.join(map(repr, wrong))}")
    taken = sorted(set(extra) & set(props))
    if taken:
        raise ImpellerBenchError(f"ONNX metadata key(s) {', '.join(taken)} are written by the export itself")
    return props | extra


def export_onnx(detector: detectors.Detector, path: str | Path, opset: int = 17,
                metadata: dict[str, str] | None = None) -> dict:
    """Write the fitted detector's scoring as an ONNX graph at ``path`` (atomically); returns what was written:
    path, method, model_input_size, opset, bytes, input, outputs, metadata."""
    onnx, _ = require_onnx()
    module = scoring_module(detector)
    props = export_metadata(detector, metadata)
    size = detector.model_input_size
    # Two images: a batch of one could let the tracer fold the batch axis into constants.
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(detector.device)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # Shape arithmetic on the fixed S x S input (padding, grid sizes) is traced as constants, as intended.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")  # a strided slice left unfolded: still correct
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), buffer, input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUTS[0]: {0: "batch"}, OUTPUTS[1]: {0: "batch"}},
                          opset_version=opset, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    declare_output_shapes(model, size)
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    atomic_write_bytes(path, data)
    return {"path": str(path), "method": detector.name, "model_input_size": size, "opset": opset, "bytes": len(data),
            "input": INPUT, "outputs": list(OUTPUTS), "metadata": props}


def declare_output_shapes(model, size: int) -> None:
    """Declare score as (batch) and map as (batch, size, size): the tracer leaves the map's sides symbolic
    (its resize takes sizes computed in the graph), and consumers read these declarations."""
    for output, dims in zip(model.graph.output, (["batch"], ["batch", size, size])):
        shape = output.type.tensor_type.shape
        del shape.dim[:]
        for value in dims:
            dim = shape.dim.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value


class OnnxScorer:
    """An exported detector under ONNX Runtime, with the detector's scoring contract.

    ``score_batch``: x01 (N x 3 x S x S float32 in [0, 1]) -> (scores N, maps N x S x S), the graph as is;
    ``score_images``: uint8 images of one size -> (scores N, maps N x H x W at their own size)."""

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None):
        _, onnxruntime = require_onnx()
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=list(providers))
        except Exception as exc:  # ONNX Runtime raises its own types for a missing or unreadable file
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise ImpellerBenchError(f"not a loadable ONNX model ({first_line})", path) from exc
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if "model_input_size" not in self.metadata:
            raise ImpellerBenchError("not an impeller-bench ONNX export (no model_input_size metadata)", path)
        self.model_input_size = int(self.metadata["model_input_size"])
        self.method = self.metadata.get("method")

    def score_batch(self, x01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's (scores N, maps N x S x S) for a float batch N x 3 x S x S in [0, 1]."""
        size = self.model_input_size
        if np.ndim(x01) != 4 or tuple(np.shape(x01)[1:]) != (3, size, size):
            raise ImpellerBenchError(f"the ONNX model takes N x 3 x {size} x {size} images, got {tuple(np.shape(x01))}")
        scores, maps = self.session.run(list(OUTPUTS), {INPUT: np.ascontiguousarray(x01, dtype=np.float32)})
        return scores, maps

    def score_images(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (H x W or H x W x 3, one size) -> (scores N, maps N x H x W): resized to S, scored,
        the maps resized back bilinearly."""
        height, width = np.asarray(images[0]).shape[:2]
        scores, maps = [], []
        for start in range(0, len(images), BATCH):
            chunk_scores, chunk_maps = self.score_batch(images01(images[start:start + BATCH], self.model_input_size).numpy())
            scores.append(chunk_scores)
            maps.append(chunk_maps)
        maps = torch.from_numpy(np.concatenate(maps))
        if maps.shape[1:] != (height, width):
            maps = F.interpolate(maps[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        return np.concatenate(scores), maps.numpy()


def onnx_scorer(path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                threads: int | None = None) -> OnnxScorer:
    """An ``OnnxScorer`` for the graph at ``path`` (ONNX Runtime's CPU provider unless told)."""
    return OnnxScorer(path, providers, threads)


def graph_thresholds(calibration) -> dict[str, str]:
    """The thresholds an exported graph is judged by, as ONNX metadata: the model's own where its held-out
    images were S x S (the graph's input); else those recalibrated on the same images resized to S
    (``Calibration.graph_*``): at another size the map, and so its maximum, is made differently."""
    recalibrated = calibration.graph_image_threshold is not None
    image, pixel = ((calibration.graph_image_threshold, calibration.graph_pixel_threshold) if recalibrated
                    else (calibration.image_threshold, calibration.pixel_threshold))
    sizes = (" and ".join("x".join(map(str, size)) for size in calibration.image_sizes)
             if calibration.image_sizes else None)
    return {"image_threshold": repr(image), "pixel_threshold": repr(pixel),
            "false_alarm_rate": repr(calibration.false_alarm_rate),
            "thresholds_calibrated_on": (f"the held-out normal images ({sizes} px) resized to the graph's input"
                                         if recalibrated else "the held-out normal images, at the graph's input size"
                                         if sizes else "the held-out normal images, of sizes not recorded")}


def check_export(detector: detectors.Detector, path: str | Path, images: Sequence[np.ndarray],
                 atol: float = 1e-4, rtol: float = 1e-4) -> float:
    """The largest absolute difference between torch's and ONNX Runtime's scores and maps on ``images``
    resized to the model's input size; an error where a difference is above ``atol + rtol * |torch's value|``
    (float32 keeps about 7 digits, and a long sum loses some: PaDiM's Mahalanobis maps, values near 5, differ by
    up to ~5e-4 on real photos from rounding alone)."""
    module = scoring_module(detector)
    scorer = onnx_scorer(path)
    if scorer.model_input_size != detector.model_input_size:
        raise ImpellerBenchError(f"the ONNX model takes {scorer.model_input_size} px images, the detector "
                                 f"{detector.model_input_size} px: not this detector's export", path)
    worst, within = 0.0, True
    for x01 in images01(images, detector.model_input_size).split(BATCH):
        with torch.no_grad():
            expected = [t.cpu().numpy() for t in module(x01.to(detector.device))]
        for e, g in zip(expected, scorer.score_batch(x01.numpy())):
            difference = np.abs(e - g)
            worst = max(worst, float(difference.max()))
            within &= bool(np.all(difference <= atol + rtol * np.abs(e)))  # False for NaN too
    if not within:
        raise ImpellerBenchError(f"the ONNX graph's scores or maps differ from torch's by up to {worst:.3g} "
                                 f"(more than {atol:g} + {rtol:g} x the value) on {len(images)} image(s)", path)
    return worst
