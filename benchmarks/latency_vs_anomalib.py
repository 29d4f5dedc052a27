"""The paper's latency claim (Table 4) on this machine: ours against efficientad, and both against anomalib.

Times, interleaved in one run (one call of each in turn, batch 1, a 256 x 256 image, the whole path from the
host array to the map back on the host): ours and efficientad with the published architecture (PDN-S teacher,
untrained weights: the cost does not depend on them) and the published combined map, in float32 on torch, in
float32 under ONNX Runtime, and with bfloat16 scoring on torch; and anomalib's ``EfficientAdModel`` (small, its
defaults, eval mode: ImageNet normalisation, both maps, quantile normalisation, the map resized to the input),
in float32 and under bfloat16 autocast.

anomalib needs torchvision, which does not import beside this project's CPU torch, so it runs in its own
virtual environment, as a worker process that times one call whenever the parent asks (same rounds, same
image, each process with the same thread count). Make that environment once, anywhere:

    python -m venv ~/anomalib-venv && ~/anomalib-venv/bin/pip install anomalib torch torchvision

then:

    python benchmarks/latency_vs_anomalib.py --anomalib-python ~/anomalib-venv/bin/python --runs 30 \\
        --json runs/latency-vs-anomalib.json

Without ``--anomalib-python`` only this project's rows are timed.

Beside each of this project's torch rows: its convolution floor (``latency.convolution_floor``), the time its
multiply-adds would take if every layer ran at the rate its heaviest convolution reaches alone, in the row's
layout and precision: what direct convolution cannot go below on this CPU, whatever the runtime.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import numpy as np
import torch

from impeller_bench import detectors
from impeller_bench.common.files import atomic_write_bytes
from impeller_bench.inspection.latency import (
    convolution_floor,
    finish_rows,
    test_image,
    time_interleaved,
    timed_scorers,
)

PUBLISHED = {"teacher": "random"}  # the PDN-S teacher (untrained: timing only)

# Run by the anomalib environment's python: reads one line per call ("<precision>"), times one whole-path call
# of the model in that precision on the same image, answers the milliseconds.
WORKER = r"""
import sys, time, numpy as np, torch
import torch.nn.functional as F
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel
torch.set_num_threads(int(sys.argv[1]))
model = EfficientAdModel(teacher_out_channels=384, model_size="small").eval()
image = np.random.default_rng(int(sys.argv[3])).integers(0, 256, (int(sys.argv[2]),) * 2, dtype=np.uint8)
print(f"anomalib {__import__('anomalib').__version__} torch {torch.__version__}", flush=True)
with torch.inference_mode():
    for line in sys.stdin:
        start = time.perf_counter()
        x = torch.from_numpy(image).float().div(255).expand(1, 3, -1, -1)  # grey -> RGB, [0, 1], as ours
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=line.strip() == "bfloat16"):
            result = model(x)
        result.anomaly_map.float().numpy(), result.pred_score.float().numpy()
        print(1000 * (time.perf_counter() - start), flush=True)
"""


ANOMALIB = "anomalib EfficientAdModel (small)"


class AnomalibWorker:
    """anomalib's EfficientAD-S in its own environment's process, as a ``score_images`` the timing loop calls."""

    def __init__(self, python: Path, threads: int, image_size: int, seed: int):
        script = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
        script.write(WORKER)
        script.close()
        self.script = Path(script.name)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.process = subprocess.Popen([str(python), str(self.script), str(threads), str(image_size), str(seed)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        try:
            self.versions = self._line()
        except click.ClickException:
            self.script.unlink()
            raise
        self.own_ms = {}  # precision -> the worker's own clock per call (the pipe's round trip excluded)

    def _line(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise click.ClickException(f"the anomalib worker stopped (exit code {self.process.wait()}); "
                                       "run its python with `-c 'import anomalib'` to see why")
        return line.strip()

    def scorer(self, precision: str):
        def score_images(images):
            self.process.stdin.write(precision + "\n")
            self.process.stdin.flush()
            self.own_ms.setdefault(precision, []).append(float(self._line()))
        return score_images

    def close(self):
        self.process.stdin.close()
        self.process.wait()
        self.script.unlink()


@click.command()
@click.option("--anomalib-python", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The python of a virtual environment with anomalib (see the module's docstring).")
@click.option("--runs", default=30, show_default=True, type=click.IntRange(1))
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(0))
@click.option("--image-size", default=256, show_default=True, type=int,
              help="A multiple of 32 (the autoencoder halves it five times).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--no-onnx", is_flag=True, help="Leave out the ONNX Runtime rows.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the rows here.")
def main(anomalib_python, runs, warmup, image_size, seed, no_onnx, json_path):
    if image_size < 32 or image_size % 32:
        raise click.BadParameter(f"{image_size} is not a positive multiple of 32", param_hint="--image-size")
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        timed = []
        for precision, runtimes in (("float32", (False,) if no_onnx else (False, True)), ("bfloat16", (False,))):
            timed += timed_scorers(["ours", "efficientad"], Path(folder), "cpu", image_size, seed,
                                   runtimes=runtimes, options=PUBLISHED | {"scoring_precision": precision})
        worker = AnomalibWorker(anomalib_python, threads, image_size, seed) if anomalib_python else None
        try:
            if worker:
                for precision in ("float32", "bfloat16"):
                    timed.append(({"method": ANOMALIB, "runtime": "torch",
                                   "versions": worker.versions, "device": "cpu", "threads": threads,
                                   "image_size": image_size, "batch_size": 1,
                                   "options": {"scoring_precision": precision}}, worker.scorer(precision)))
            times = time_interleaved([score for _, score in timed], test_image(image_size, seed), runs, warmup)
        finally:
            if worker:
                worker.close()
    rows = finish_rows(timed, times, runs, warmup)
    for row in rows:  # the rows' times include the pipe's round trip; the worker's own median beside them
        if row["method"] == ANOMALIB:
            row["median_ms_in_worker"] = float(np.median(worker.own_ms[row["options"]["scoring_precision"]][warmup:]))
    for row in rows:
        if row["runtime"] == "torch" and row["method"] != ANOMALIB:
            row["convolution_floor"] = floor(row["method"], row["options"], image_size, seed)
    for row in rows:
        precision = row["options"].get("scoring_precision", "float32")
        floor_ms = row.get("convolution_floor", {}).get("floor_ms")
        click.echo(f"{row['method']:<34} {row['runtime']:<12} {precision:<9} median {row['median_ms']:7.1f} ms  "
                   f"p90 {row['p90_ms']:7.1f} ms" + (f"  convolution floor {floor_ms:6.1f} ms" if floor_ms else ""))
    if not worker:
        click.echo("anomalib not timed (give --anomalib-python; see the module's docstring)")
        return write(rows, json_path)
    click.echo(f"anomalib worker: {worker.versions}")
    anomalib = {row["options"]["scoring_precision"]: row["median_ms"] for row in rows
                if row["method"] == ANOMALIB}
    for row in rows:
        if row["method"] == ANOMALIB:
            continue
        precision = row["options"]["scoring_precision"]
        row["of_anomalib_float32"] = row["median_ms"] / anomalib["float32"]
        row[f"of_anomalib_{precision}"] = row["median_ms"] / anomalib[precision]
        line = (f"{row['method']} {row['runtime']} {precision}: {row['of_anomalib_float32']:.2f} of anomalib's "
                f"float32 (half: {anomalib['float32'] / 2:.1f} ms)")
        if precision != "float32":
            line += (f", {row[f'of_anomalib_{precision}']:.2f} of its {precision} "
                     f"(half: {anomalib[precision] / 2:.1f} ms)")
        if "convolution_floor" in row:
            cost = row["convolution_floor"]
            line += (f"; floor {cost['floor_ms']:.1f} ms ({cost['multiply_adds'] / 1e9:.2f} G multiply-adds at "
                     f"{cost['rate_per_s'] / 1e9:.0f} G/s, {cost['heaviest_layer']})")
        click.echo(line)
    write(rows, json_path)


def write(rows: list[dict], json_path: Path | None) -> None:
    """The rows as JSON at ``json_path``, atomically (nothing without a path)."""
    if json_path:
        atomic_write_bytes(json_path, (json.dumps(rows, indent=1) + "\n").encode())


def floor(method: str, options: dict, image_size: int, seed: int) -> dict:
    """``convolution_floor`` of ``method``'s scoring module as timed (untrained, CPU, its precision)."""
    detector = detectors.create(method, device="cpu", seed=seed, image_size=image_size, **options)
    detector.prepare_untrained()
    module = detector.scoring_module().eval()
    x = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    return convolution_floor(module, x, bfloat16=options.get("scoring_precision") == "bfloat16")


if __name__ == "__main__":
    sys.exit(main())
