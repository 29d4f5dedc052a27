"""Shared fixtures: the synthetic dataset (runs anywhere) and the shared real data.

Tests that need ``../shared/data`` are marked ``needs_shared_data``: on a
fresh machine without it they skip with the reason; when CI sets
IMPELLER_BENCH_REQUIRE_DATA=1 a missing folder fails them instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from impeller_bench.data import scanning

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("IMPELLER_BENCH_SHARED_DATA", REPO.parent / "shared" / "data"))
SUPERVISELY = SHARED_DATA / "casting-supervisely"
KAGGLE = SHARED_DATA / "casting-kaggle-300"
MAGNETIC_TILE = SHARED_DATA / "magnetic-tile"
REQUIRE_DATA = os.environ.get("IMPELLER_BENCH_REQUIRE_DATA") == "1"
HAVE_DATA = SUPERVISELY.is_dir() and KAGGLE.is_dir() and MAGNETIC_TILE.is_dir()

needs_shared_data = pytest.mark.skipif(
    not HAVE_DATA and not REQUIRE_DATA,
    reason=f"shared data not found at {SHARED_DATA} (set IMPELLER_BENCH_SHARED_DATA)",
)


# The thread count the trained-detector tests' bars were measured with (a 2-core CPU).
TORCH_THREADS = 2


@pytest.fixture(scope="module")
def fixed_torch_threads():
    """One torch thread count for a module's trained detectors on every machine, restored after.

    A float32 sum split over another number of threads adds in another order; a short training is chaotic
    enough that this ends in another model. Modules that train take it with
    ``pytestmark = pytest.mark.usefixtures("fixed_torch_threads")`` (set up before their module fixtures)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    yield TORCH_THREADS
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not HAVE_DATA:
        pytest.fail(f"IMPELLER_BENCH_REQUIRE_DATA=1 but the shared data is missing at {SHARED_DATA}")
    return SHARED_DATA


# build-split's source options for each published split.
PUBLISHED_SOURCES = {
    "impeller-v1": ["--supervisely", SUPERVISELY, "--kaggle", KAGGLE],
    "impeller-v2-native": ["--supervisely", SUPERVISELY],
    "impeller-v2-localization": ["--supervisely", SUPERVISELY],
    "mtd": ["--mtd", MAGNETIC_TILE],
}


@pytest.fixture(scope="session")
def published_builds(shared_data, tmp_path_factory):
    """build(split) -> (folder, result): ``impeller-bench build-split --split annotations/<split>.json`` from the
    shared sources, shortcut audit included, as a user runs it. Each split is built once a session (minutes
    for all), all under one root, ``folder.parent``: the rebuild tests judge the build, the leaderboard's
    score the committed entries on it. Nothing may write into a built folder."""
    from click.testing import CliRunner

    from impeller_bench.cli import main

    root = tmp_path_factory.mktemp("published")
    built = {}

    def build(split):
        if split not in built:
            args = ["build-split", *PUBLISHED_SOURCES[split], "--out", root / split,
                    "--split", REPO / "annotations" / f"{split}.json"]
            built[split] = root / split, CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        return built[split]

    return build


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    from impeller_bench.data.synth import write_synthetic

    out = tmp_path_factory.mktemp("synthetic") / "dataset"
    write_synthetic(out, train_good=12, test_good=6, test_defect=8, size=128, seed=3)
    return out


@pytest.fixture(scope="session")
def both_scanned(shared_data):
    """Records, findings, scans and photo groups of both shared sources, grouped as impeller-v1 was
    (fingerprints only; about a minute and a half: every image fingerprinted once)."""
    from impeller_bench.data import build

    records, findings = build.read_sources(supervisely=[SUPERVISELY], kaggle=[KAGGLE])
    scans, scan_findings = scanning.scan(records)
    groups = scanning.group_photos(records, scans, register=False)
    return records, findings + scan_findings, scans, groups


@pytest.fixture(scope="session")
def draw_impellers():
    """In-memory synthetic impellers: draw(seed, size, train_good, test_good, defect_kinds) -> (train images,
    test images with the good ones first, test masks); one defect image per entry of defect_kinds."""
    import numpy as np

    from impeller_bench.data import synth

    def draw(seed, size, train_good, test_good, defect_kinds):
        def one(key, k, defects=()):
            return synth.impeller(np.random.default_rng([seed, key, k]), size, defects)

        train = [one(0, k)[0] for k in range(train_good)]
        bad = [one(2, k, (kind,)) for k, kind in enumerate(defect_kinds)]
        test = [one(1, k)[0] for k in range(test_good)] + [b[0] for b in bad]
        masks = np.concatenate([np.zeros((test_good, size, size), bool), np.stack([b[1] for b in bad])])
        return train, test, masks

    return draw
