import json

import numpy as np
import pytest

from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.data.dataset import load_dataset


def test_load_dataset_gives_samples_and_loads_on_demand(synthetic_dataset):
    dataset = load_dataset(synthetic_dataset)
    assert (len(dataset.train), len(dataset.test)) == (12, 14)
    assert dataset.manifest_sha256 and dataset.has_pixel_masks
    sample = next(s for s in dataset.test if s.is_defect)
    assert sample.id.startswith("test/defect/") and sample.defect_classes
    image, mask = sample.load_image(), sample.load_mask()
    assert image.dtype == np.uint8 and mask.dtype == bool and mask.shape == image.shape[:2] and mask.any()
    good = next(s for s in dataset.test if not s.is_defect)
    assert not good.load_mask().any()


def test_plain_mvtec_layout_loads_without_manifest(synthetic_dataset, tmp_path):
    import shutil

    root = tmp_path / "bottle"
    shutil.copytree(synthetic_dataset, root)
    (root / "manifest.json").unlink()
    dataset = load_dataset(root)
    assert dataset.manifest is None and len(dataset.train) == 12
    assert {s.label for s in dataset.test} == {"good", "defect"}


def test_manifest_with_unsafe_path_is_refused(synthetic_dataset, tmp_path):
    import shutil

    root = tmp_path / "evil"
    shutil.copytree(synthetic_dataset, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["entries"][0]["file"] = "../../etc/passwd"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ImpellerBenchError, match="unsafe path"):
        load_dataset(root)
