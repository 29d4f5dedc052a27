import numpy as np
import pytest
from click.testing import CliRunner

from impeller_bench.cli import main
from impeller_bench.data import synth
from impeller_bench.data.dataset import load_dataset


@pytest.mark.parametrize("kind", synth.DEFECT_KINDS)
def test_each_defect_mask_is_exactly_the_pixels_it_changed(kind):
    for k in range(5):
        rng = np.random.default_rng([7, k])
        size = 128
        base, _, _, _ = synth.impeller(np.random.default_rng([8, k]), size)
        image = base.astype(float) / 255
        yy, xx = np.mgrid[0:size, 0:size].astype(float)
        cy = cx = size / 2
        radius = 0.42 * size
        rho = np.hypot(yy - cy, xx - cx) / radius
        theta = np.arctan2(yy - cy, xx - cx)
        table = np.full((size, size), 0.5)
        painted, mask = synth._add_defect(kind, rng, image, rho, theta, radius, yy, xx, cy, cx, table)
        assert mask.any()
        np.testing.assert_array_equal(painted != image, mask)


def test_generator_is_deterministic_per_seed_and_index():
    a = synth.generate("test", "defect", 3, seed=5, size=96)
    b = synth.generate("test", "defect", 3, seed=5, size=96)
    c = synth.generate("test", "defect", 3, seed=6, size=96)
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    good = synth.generate("train", "good", 0, seed=5, size=96)
    assert not good[1].any() and good[3] == {}


def test_defects_cover_every_kind_and_pose_and_lighting_vary():
    images = [synth.generate("test", "defect", k, seed=0, size=96) for k in range(30)]
    kinds = {kind for *_, class_masks in images for kind in class_masks}
    assert kinds == set(synth.DEFECT_KINDS)
    assert all(mask.any() for _, mask, _, _ in images)
    for _, mask, _, class_masks in images:  # the union of the class masks is the defect mask
        np.testing.assert_array_equal(np.logical_or.reduce(list(class_masks.values())), mask)
    brightness = [image.mean() for image, *_ in images]
    assert np.ptp(brightness) > 15  # lighting and gain vary visibly


def test_synth_command_writes_a_valid_dataset(tmp_path):
    out = tmp_path / "s"
    runner = CliRunner()
    result = runner.invoke(main, ["synth", str(out), "--train-good", "5", "--test-good", "3", "--test-defect", "4",
                                  "--size", "96"])
    assert result.exit_code == 0, result.output
    dataset = load_dataset(out)
    assert (len(dataset.train), len(dataset.test)) == (5, 7)
    defect = next(s for s in dataset.test if s.is_defect)
    assert defect.load_image().shape == defect.load_mask().shape == (96, 96) and defect.load_mask().any()
    assert runner.invoke(main, ["validate", str(out)]).exit_code == 0
    again = runner.invoke(main, ["synth", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
