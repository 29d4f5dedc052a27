"""validate on built datasets: every kind of breakage gets one error naming the file."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from impeller_bench.cli import main
from impeller_bench.common.imageio import encode_png
from impeller_bench.data.validate import validate


@pytest.fixture
def dataset(synthetic_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(synthetic_dataset, root)
    return root


def first(root, pattern):
    return sorted(root.glob(pattern))[0]


def errors(report):
    return [(f.code, f.path) for f in report.errors]


def test_clean_dataset_passes_and_its_shortcut_audit_is_reported(dataset):
    report = validate(dataset)
    assert report.ok, report.text()
    audit = [f for f in report.findings if f.code.startswith("shortcut-")]
    assert [f.code for f in audit] == ["shortcut-audit"] + ["shortcut-check"] * 7
    assert audit[0].message == "shortcut audit: PASS" and all(f.severity == "info" for f in audit)
    assert report.details["shortcut_audit"]["passed"] and len(report.details["shortcut_audit"]["separability"]) == 6


def test_a_source_mixed_test_set_fails_the_audit(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    for entry in manifest["entries"]:
        if entry["split"] == "test" and entry["label"] == "good":
            entry["source"] = "another-camera"
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    report = validate(dataset)
    failed = [f for f in report.errors if f.code == "shortcut-source-mix"]
    assert len(failed) == 1 and "another-camera" in failed[0].message and "FAIL" in failed[0].message
    assert any(f.code == "shortcut-audit" and f.message.startswith("shortcut audit: FAIL") for f in report.errors)
    assert validate(dataset, audit=False).ok
    output = CliRunner().invoke(main, ["validate", str(dataset), "--json"]).output
    as_json = json.loads(output[output.index("{"):])
    assert as_json["ok"] is False and as_json["shortcut_audit"]["source_mix"]["passed"] is False


def test_truncated_image(dataset):
    victim = first(dataset, "test/good/*.png")
    victim.write_bytes(victim.read_bytes()[:100])
    found = errors(validate(dataset))
    rel = victim.relative_to(dataset).as_posix()
    assert ("unreadable-image", rel) in found and ("checksum-mismatch", rel) in found


def test_wrong_size_mask(dataset):
    mask = first(dataset, "ground_truth/defect/*_mask.png")
    mask.write_bytes(encode_png(np.zeros((10, 12), bool) | (np.arange(12) < 3)))
    rel = mask.relative_to(dataset).as_posix()
    report = validate(dataset)
    assert ("mask-size-mismatch", rel) in errors(report)
    line = next(f.line() for f in report.errors if f.code == "mask-size-mismatch")
    assert rel in line and "12x10" in line and "\n" not in line


def test_non_binary_and_empty_masks(dataset):
    masks = sorted(dataset.glob("ground_truth/defect/*_mask.png"))
    masks[0].write_bytes(encode_png(np.full((128, 128), 7, np.uint8)))
    masks[1].write_bytes(encode_png(np.zeros((128, 128), bool)))
    found = {code for code, _ in errors(validate(dataset))}
    assert {"mask-not-binary", "empty-mask"} <= found


def test_missing_mask_and_mask_on_good_image(dataset):
    mask = first(dataset, "ground_truth/defect/*_mask.png")
    mask.unlink()
    good = first(dataset, "test/good/*.png")
    (dataset / "ground_truth" / "good").mkdir()
    (dataset / "ground_truth" / "good" / f"{good.stem}_mask.png").write_bytes(encode_png(np.ones((128, 128), bool)))
    found = {code for code, _ in errors(validate(dataset))}
    assert {"missing-mask", "mask-on-good-image"} <= found


def test_tiny_regions_are_warnings_with_their_size(dataset):
    mask = first(dataset, "ground_truth/defect/*_mask.png")
    speck = np.zeros((128, 128), bool)
    speck[5:7, 5:7] = True
    speck[60:80, 60:80] = True
    mask.write_bytes(encode_png(speck))
    report = validate(dataset, audit=False)
    rel = mask.relative_to(dataset).as_posix()
    tiny = [f for f in report.findings if f.code == "tiny-region" and f.path == rel]
    assert len(tiny) == 1 and "4 pixel" in tiny[0].message and tiny[0].severity == "warning"


def test_cli_exit_codes(dataset, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["validate", str(dataset)]).exit_code == 0
    first(dataset, "train/good/*.png").write_bytes(b"garbage")
    result = runner.invoke(main, ["validate", str(dataset), "--json"])
    assert result.exit_code == 1 and '"unreadable-image"' in result.output
    assert "shortcut audit not run: fix the errors above first" in result.output
    not_a_dataset = tmp_path / "empty"
    not_a_dataset.mkdir()
    result = runner.invoke(main, ["validate", str(not_a_dataset)])
    assert result.exit_code == 2 and "not a dataset" in result.output


def test_audit_findings_point_at_the_manifest_or_at_a_plain_folder(dataset):
    """A plain MVTec folder has no manifest.json: the audit's findings must not name a file that is not there."""
    with_manifest = [f.path for f in validate(dataset, audit=True).findings if f.code.startswith("shortcut-")]
    assert set(with_manifest) == {"manifest.json"}
    (dataset / "manifest.json").unlink()
    shutil.rmtree(dataset / "test" / "defect")
    shutil.rmtree(dataset / "ground_truth")
    plain = [f for f in validate(dataset, audit=True).findings if f.code == "shortcut-audit"]
    assert [f.path for f in plain] == ["."] and "not run" in plain[0].message


def test_a_refused_defect_image_keeps_its_mask(dataset):
    victim = first(dataset, "test/defect/*.png")
    victim.write_bytes(victim.read_bytes()[:100])
    report = validate(dataset, audit=False)
    assert ("unreadable-image", victim.relative_to(dataset).as_posix()) in errors(report)
    assert not [f for f in report.findings if f.code == "unlisted-file"]  # its mask is not an orphan
