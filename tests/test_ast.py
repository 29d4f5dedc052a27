"""AST: the flow teacher is invertible with the log-determinant it reports; the interface contract; detection."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from impeller_bench import detectors
from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.detectors.ast import FlowTeacher, positional_encoding

SIZE = 256
# A small student and few steps keep this quick; measured on this set: pixel AUROC 0.956.
OPTIONS = {"image_size": SIZE, "steps": 100, "student_hidden": 64, "seed": 1, "device": "cpu"}

# Same model on every machine: CPU, float32, a fixed thread count (conftest.fixed_torch_threads).
pytestmark = pytest.mark.usefixtures("fixed_torch_threads")


@pytest.fixture(scope="module")
def impellers(draw_impellers):
    return draw_impellers(13, SIZE, 16, 8, [("holes", "chipping", "spots")[k % 3] for k in range(8)])


@pytest.fixture(scope="module")
def fitted(impellers):
    detector = detectors.create("ast", **OPTIONS).fit(impellers[0])
    return detector, *detector.score_images(impellers[1])


def test_flow_log_determinant_matches_its_jacobian():
    torch.manual_seed(0)
    flow = FlowTeacher(channels=10, condition=4, hidden=8, blocks=3, clamp=3.0, seed=0)
    with torch.no_grad():
        for parameter in flow.parameters():  # couplings start as the identity: move them off it
            parameter.add_(0.2 * torch.randn_like(parameter))
    condition = positional_encoding(4, 1, 1)[None]
    x = torch.randn(1, 10, 1, 1)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v.view(1, 10, 1, 1), condition)[0].flatten(), x.flatten())
    with torch.no_grad():
        log_det = float(flow(x, condition)[1])
    assert log_det == pytest.approx(float(torch.linalg.slogdet(jacobian)[1]), abs=1e-4)
    assert abs(log_det) > 0.01  # not the identity any more


def test_positional_encoding_distinguishes_positions():
    encoding = positional_encoding(32, 6, 7)
    assert encoding.shape == (32, 6, 7)
    vectors = encoding.flatten(1).T
    assert torch.cdist(vectors, vectors).add(torch.eye(42) * 1e3).min() > 0.1  # no two positions alike


def test_contract_shapes_determinism_save_load(fitted, impellers, tmp_path):
    detector, scores, maps = fitted
    assert scores.shape == (16,) and maps.shape == (16, SIZE, SIZE) and np.isfinite(maps).all()
    assert detector.describe()["backbone"] == "efficientnet_lite2" and detector.layers == ["stage5"]
    again = detectors.create("ast", **OPTIONS).fit(impellers[0]).score_images(impellers[1])
    np.testing.assert_array_equal(again[0], scores)
    detector.save(tmp_path / "ast.pt")
    loaded = detectors.load(tmp_path / "ast.pt", device="cpu").score_images(impellers[1])
    np.testing.assert_array_equal(loaded[0], scores)
    np.testing.assert_array_equal(loaded[1], maps)


def test_detects_synthetic_defects(fitted, impellers):
    _, _, maps = fitted
    assert roc_auc_score(impellers[2].ravel(), maps.ravel()) > 0.9


def test_clear_errors():
    with pytest.raises(ImpellerBenchError, match="has not been fitted"):
        detectors.create("ast", **OPTIONS).score_images([np.zeros((SIZE, SIZE), np.uint8)])
    with pytest.raises(ImpellerBenchError, match="needs at least 2"):
        detectors.create("ast", **OPTIONS).fit([np.zeros((SIZE, SIZE), np.uint8)])
