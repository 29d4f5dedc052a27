"""The pretrained-feature baselines (PatchCore, PaDiM, SPADE) through the one detector interface."""
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from impeller_bench import detectors
from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.data.dataset import load_dataset
from impeller_bench.detectors.neighbours import greedy_coreset, nearest

BASELINES = ["patchcore", "padim", "spade"]
# SPADE searches the pixels of its k nearest training images; 5 instead of 50 keeps these tests quick.
OPTIONS = {"patchcore": {"seed": 1, "device": "cpu"}, "padim": {"seed": 1, "device": "cpu"},
           "spade": {"seed": 1, "neighbours": 5, "device": "cpu"}}
# Measured on this set (20 training images): image AUROC PatchCore 0.91, PaDiM 0.78, SPADE 0.51 (its pooled
# global feature does not see small defects); pixel AUROC 0.98-0.998 for all three. A broken method scores ~0.5.
IMAGE_AUROC_BAR = {"patchcore": 0.85, "padim": 0.7}

# Same model on every machine: CPU, a fixed thread count (conftest.fixed_torch_threads).
pytestmark = pytest.mark.usefixtures("fixed_torch_threads")


@pytest.fixture(scope="module")
def impellers(tmp_path_factory):
    from impeller_bench.data.synth import write_synthetic

    out = tmp_path_factory.mktemp("baselines") / "dataset"
    write_synthetic(out, train_good=20, test_good=10, test_defect=10, size=256, seed=5)
    dataset = load_dataset(out)
    train = [s.load_image() for s in dataset.train]
    test = [s.load_image() for s in dataset.test]
    labels = np.array([s.is_defect for s in dataset.test])
    masks = np.stack([s.load_mask() if s.is_defect else np.zeros((256, 256), bool) for s in dataset.test])
    return train, test, labels, masks


@pytest.fixture(scope="module", params=BASELINES)
def fitted(request, impellers):
    train, test, _, _ = impellers
    detector = detectors.create(request.param, **OPTIONS[request.param]).fit(train)
    scores, maps = detector.score_images(test)
    return request.param, detector, scores, maps


def test_scores_and_maps_have_the_input_shape_and_are_finite(fitted, impellers):
    _, detector, scores, maps = fitted
    assert scores.shape == (20,) and maps.shape == (20, 256, 256)
    assert np.isfinite(scores).all() and np.isfinite(maps).all()
    smaller = [np.asarray(Image.fromarray(image).resize((160, 160))) for image in impellers[1][:3]]
    scores, maps = detector.score_images(smaller)
    assert scores.shape == (3,) and maps.shape == (3, 160, 160)


def test_detects_synthetic_defects(fitted, impellers):
    name, _, scores, maps = fitted
    _, _, labels, masks = impellers
    assert roc_auc_score(masks.ravel(), maps.ravel()) > 0.95
    if name in IMAGE_AUROC_BAR:
        assert roc_auc_score(labels, scores) > IMAGE_AUROC_BAR[name]


def test_same_seed_same_scores_and_save_load(fitted, impellers, tmp_path):
    name, detector, scores, maps = fitted
    train, test, _, _ = impellers
    again_scores, again_maps = detectors.create(name, **OPTIONS[name]).fit(train).score_images(test)
    np.testing.assert_array_equal(again_scores, scores)
    np.testing.assert_array_equal(again_maps, maps)
    detector.save(tmp_path / "model.pt")
    loaded_scores, loaded_maps = detectors.load(tmp_path / "model.pt", device="cpu").score_images(test)
    np.testing.assert_array_equal(loaded_scores, scores)
    np.testing.assert_array_equal(loaded_maps, maps)


@pytest.mark.parametrize("name", BASELINES)
def test_clear_errors_unfitted_unknown_backbone_bad_layer(name):
    image = np.zeros((64, 64), np.uint8)
    with pytest.raises(ImpellerBenchError, match="has not been fitted"):
        detectors.create(name).score_images([image])
    with pytest.raises(ImpellerBenchError, match="unknown backbone 'vgg16'"):
        detectors.create(name, backbone="vgg16")
    with pytest.raises(ImpellerBenchError, match=r"has no layer\(s\) \['layer2'\]"):
        detectors.create(name, layers=["layer2"])


def test_describe_names_backbone_and_layers():
    described = detectors.create("patchcore").describe()
    assert described["backbone"] == "efficientnet_lite0" and described["layers"] == ["stage3", "stage5"]
    assert described["backbone_weights"].endswith("efficientnet-lite0-57934424.pth")
    assert detectors.create("padim").describe()["layers"] == ["stage2", "stage3", "stage5"]


def test_nearest_matches_brute_force_with_ties():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randint(0, 3, (40, 4), generator=generator).float()  # small integers: many tied distances
    bank = torch.randint(0, 3, (30, 4), generator=generator).float()
    distances, rows = nearest(queries, bank, k=3)
    brute = torch.sqrt(((queries[:, None] - bank[None]) ** 2).sum(-1))
    np.testing.assert_allclose(distances, brute.sort(dim=1).values[:, :3], atol=1e-5)
    np.testing.assert_allclose(brute.gather(1, rows), distances, atol=1e-5)  # the rows hold those distances


def test_a_long_bank_searched_a_slice_at_a_time_gives_the_same_nearest_rows(monkeypatch):
    """The sliced path (a bank longer than BANK_SLICE) against the one-block path, ties included: equal
    distances, and the first of equally near rows, as ``min`` picks it."""
    from impeller_bench.detectors import neighbours

    generator = torch.Generator().manual_seed(2)
    queries = torch.randint(0, 3, (37, 4), generator=generator).float()
    bank = torch.randint(0, 3, (101, 4), generator=generator).float()  # many exact ties, across slices too
    whole = nearest(queries, bank)
    monkeypatch.setattr(neighbours, "BANK_SLICE", 8)
    sliced = nearest(queries, bank)
    assert torch.equal(sliced[1], whole[1]) and torch.equal(sliced[0], whole[0])
    brute = torch.cdist(queries, bank)
    assert torch.equal(sliced[1][:, 0], torch.argmin(brute, dim=1))  # argmin: the first of the tied rows


def test_greedy_coreset_is_the_k_center_greedy_choice():
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(200, 5, generator=generator)
    chosen = greedy_coreset(points, 12, projection_dim=None, seed=4)
    # Brute force: each next point is the one farthest from all chosen so far.
    for step in range(1, 12):
        distance_to_chosen = torch.cdist(points, points[chosen[:step]]).min(dim=1).values
        assert distance_to_chosen[chosen[step]] == pytest.approx(float(distance_to_chosen.max()), abs=1e-4)
    assert len(set(chosen.tolist())) == 12
    assert torch.equal(chosen, greedy_coreset(points, 12, projection_dim=None, seed=4))


def test_run_and_latency_commands_reach_the_baselines(synthetic_dataset, tmp_path):
    import json

    from click.testing import CliRunner

    from impeller_bench.cli import main

    out = tmp_path / "pred"
    result = CliRunner().invoke(main, ["run", "padim", "--dataset", str(synthetic_dataset), "--out", str(out),
                                       "--layers", "stage2,stage3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["method"], meta["backbone"], meta["layers"]) == ("padim", "efficientnet_lite0", ["stage2", "stage3"])
    assert "pixel_pro_30" in result.output
    refused = CliRunner().invoke(main, ["run", "padim", "--dataset", str(synthetic_dataset), "--out", str(tmp_path / "x"),
                                        "--steps", "5"])
    assert refused.exit_code == 2 and "padim has no option(s) steps" in refused.output
    assert not (tmp_path / "x").exists()
    timed = CliRunner().invoke(main, ["latency", "patchcore", "padim", "--runs", "2", "--warmup", "1", "--device", "cpu",
                                      "--json", str(tmp_path / "lat.json")])
    assert timed.exit_code == 0, timed.output
    figures = json.loads((tmp_path / "lat.json").read_text())
    assert [f["method"] for f in figures] == ["patchcore", "padim"] and all(f["median_ms"] > 0 for f in figures)
    # PatchCore is timed with the bank a 400-image fit keeps (10% of 400 x 32 x 32 patches), and says so
    assert (figures[0]["memory"], figures[0]["memory_of_training_images"]) == ({"bank_patches": 40_960}, 400)
    assert "memory" not in figures[1]  # PaDiM keeps Gaussians, not images' patches


def test_memory_size_counts_what_a_fit_keeps_of_its_training_images(fitted, impellers):
    name, detector, _, _ = fitted
    assert len(impellers[0]) == 20
    # PatchCore: 10% of 20 images' 32 x 32 patches; SPADE: every training image; PaDiM keeps Gaussians
    expected = {"patchcore": {"bank_patches": 2048}, "spade": {"bank_images": 20}, "padim": {}}[name]
    assert detector.memory_size() == expected
    unfitted = detectors.create(name, **OPTIONS[name])
    if expected:  # a memory that is not there yet is an error, not an empty memory
        with pytest.raises(ImpellerBenchError, match="has not been fitted"):
            unfitted.memory_size()
    else:
        assert unfitted.memory_size() == {}


def test_scoring_in_chunks_reports_progress_and_equals_one_call(fitted, impellers):
    from impeller_bench.inspection.runner import SCORING_CHUNK, score_in_chunks

    name, detector, scores, maps = fitted
    _, test, _, _ = impellers
    assert len(test) > SCORING_CHUNK  # more than one chunk
    seen = []

    def progress(items, label, status=None):
        items = list(items)
        seen.append((label, len(items)))
        return items

    chunked_scores, chunked_maps = score_in_chunks(detector, test, progress)
    assert seen == [("scoring", -(-len(test) // SCORING_CHUNK))]
    np.testing.assert_allclose(chunked_scores, scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack(chunked_maps), maps, rtol=1e-5, atol=1e-5)
