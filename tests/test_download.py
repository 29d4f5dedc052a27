"""Downloading the public sources, tested with local archives laid out as GitHub and Kaggle serve them."""
from __future__ import annotations

import sys
import types
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import KAGGLE, MAGNETIC_TILE, REPO, SUPERVISELY, needs_shared_data

from impeller_bench.cli import main
from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.common.files import sha256_file
from impeller_bench.data import download
from impeller_bench.data.sources.references import KNOWN_SOURCES

ANNOTATIONS = REPO / "annotations"
GITHUB_TOP = "Mask-RCNN-training-with-docker-containers-on-Sagemaker-9b0dce34b3f774ffc7b4b39e6e424e121383f174"


def zip_folder(source: Path, archive: Path, inside: str, replace: dict[str, bytes] | None = None,
               leave_out: str | None = None, extra: dict[str, bytes] | None = None) -> Path:
    """Zip every file of ``source`` under ``inside/``, with optional changes."""
    replace = replace or {}
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as handle:
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            name = path.relative_to(source).as_posix()
            if name == leave_out:
                continue
            handle.writestr(f"{inside}/{name}", replace.get(name, path.read_bytes()))
        for name, data in (extra or {}).items():
            handle.writestr(name, data)
    return archive


@pytest.fixture(scope="module")
def supervisely_zip(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("archives")
    top = f"{GITHUB_TOP}/datasets/cast_dataset_polish/training"
    return zip_folder(SUPERVISELY, folder / "repo.zip", top, extra={f"{GITHUB_TOP}/README.md": b"readme",
                                                                      "../outside.txt": b"escape attempt"})


@needs_shared_data
def test_checksum_lists_describe_the_public_sources(shared_data):
    for name, folder in (("casting-supervisely", SUPERVISELY), ("casting-kaggle-300", KAGGLE),
                         ("magnetic-tile", MAGNETIC_TILE)):
        listed = download.checksums_for(name, ANNOTATIONS)
        present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert set(listed) <= present and len(listed) >= 440
        for relpath in sorted(listed)[::97]:
            assert sha256_file(folder / relpath) == listed[relpath]


@needs_shared_data
def test_download_unpacks_exactly_the_listed_files(supervisely_zip, tmp_path):
    to = tmp_path / "sources"
    result = CliRunner().invoke(main, ["download", "--to", str(to), "--source", "casting-supervisely",
                                       "--archive", f"casting-supervisely=file://{supervisely_zip}",
                                       "--annotations", str(ANNOTATIONS)])
    assert result.exit_code == 0, result.output
    assert "440 files verified" in result.output and "build-split" in result.output
    listed = download.checksums_for("casting-supervisely", ANNOTATIONS)
    written = {p.relative_to(to / "casting-supervisely").as_posix() for p in (to / "casting-supervisely").rglob("*") if p.is_file()}
    assert written == set(listed)
    assert all(sha256_file(to / "casting-supervisely" / name) == digest for name, digest in listed.items())
    assert not (tmp_path / "outside.txt").exists() and not (to / "outside.txt").exists()
    assert sorted(p.name for p in to.iterdir()) == ["casting-supervisely", "casting-supervisely.download.json"]


@needs_shared_data
def test_magnetic_tile_defects_download_from_their_pinned_commit(tmp_path, monkeypatch):
    """The repository's archive at the pinned commit (its name ends with a dot, so does the archive's folder)."""
    reference = KNOWN_SOURCES["magnetic-tile"]
    assert reference["commit"] == "cc4eb530b57b9cb7225bf76023873043ffd50655" and reference["kind"] == "mtd"
    archive = zip_folder(MAGNETIC_TILE, tmp_path / "mtd.zip", f"Magnetic-tile-defect-datasets.-{reference['commit']}")
    fetched = []
    monkeypatch.setattr(download, "fetch", lambda url, dest: fetched.append(url) or Path(archive))
    receipt = download.download_source("magnetic-tile", tmp_path / "to", ANNOTATIONS, say=lambda text: None)
    assert fetched == [reference["archive"]] and receipt["files"] == 2688
    from impeller_bench.data.sources import detect_kind

    assert detect_kind(tmp_path / "to" / "magnetic-tile") == "mtd"
    assert sha256_file(tmp_path / "to" / "magnetic-tile" / "MT_Free/Imgs/exp1_num_10181.jpg") == \
        download.checksums_for("magnetic-tile", ANNOTATIONS)["MT_Free/Imgs/exp1_num_10181.jpg"]


@needs_shared_data
def test_a_changed_file_stops_everything(tmp_path):
    name = "img/cast_def_0_1087.jpeg"
    archive = zip_folder(SUPERVISELY, tmp_path / "bad.zip", "top", replace={name: (SUPERVISELY / name).read_bytes()[:-1]})
    with pytest.raises(ImpellerBenchError, match=r"1 file\(s\) with a different sha256: img/cast_def_0_1087.jpeg.*nothing was unpacked"):
        download.download_source("casting-supervisely", tmp_path / "to", ANNOTATIONS, str(archive))
    assert not (tmp_path / "to").exists()  # nothing created, not even the folder


@needs_shared_data
def test_a_missing_file_stops_everything(tmp_path):
    archive = zip_folder(SUPERVISELY, tmp_path / "short.zip", "top", leave_out="ann/cast_ok_0_1559.jpeg.json")
    listed = download.checksums_for("casting-supervisely", ANNOTATIONS)
    assert "ann/cast_ok_0_1559.jpeg.json" in listed
    with pytest.raises(ImpellerBenchError, match="1 listed file.s. missing: ann/cast_ok_0_1559.jpeg.json"):
        download.unpack_verified(archive, listed, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_a_zip_is_one_clear_error(tmp_path):
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ImpellerBenchError, match="bogus.zip: not a readable zip archive"):
        download.verify_archive(bogus, {"a.txt": "0" * 64})


def test_checksum_list_rejects_unsafe_names(tmp_path):
    listing = tmp_path / "x.sha256"
    listing.write_text("0" * 64 + "  ../etc/passwd\n")
    with pytest.raises(ImpellerBenchError, match="unsafe image id"):
        download.read_checksums(listing)


def test_fetch_reads_urls(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(b"x" * 3_000_000)
    fetched = download.fetch(source.as_uri(), tmp_path / "dl" / "b.bin")
    assert fetched.read_bytes() == source.read_bytes()
    with pytest.raises(ImpellerBenchError, match="cannot download"):
        download.fetch((tmp_path / "missing").as_uri(), tmp_path / "dl" / "c.bin")
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["b.bin"]


@needs_shared_data
def test_kaggle_is_used_when_configured(tmp_path, monkeypatch):
    """The Kaggle zip (casting_data/casting_data/...) through the kaggle package's API."""
    archive = zip_folder(KAGGLE, tmp_path / "kaggle.zip", "casting_data/casting_data",
                         extra={"casting_512x512/casting_512x512/ok_front/x.jpeg": b"other set"})
    calls = []

    class FakeApi:
        def authenticate(self):
            calls.append("authenticate")

        def dataset_download_files(self, dataset, path, unzip, quiet):
            calls.append(dataset)
            assert unzip is False
            (Path(path) / "real-life-industrial-dataset-of-casting-product.zip").write_bytes(archive.read_bytes())

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = FakeApi
    for name in ("kaggle", "kaggle.api"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)
    receipt = download.download_source("casting-kaggle-300", tmp_path / "to", ANNOTATIONS)
    assert calls == ["authenticate", KNOWN_SOURCES["casting-kaggle-300"]["kaggle_dataset"]]
    assert receipt["files"] == 7348 and receipt["origin"].startswith("kaggle:")
    assert sha256_file(tmp_path / "to" / "casting-kaggle-300" / "train/ok_front/cast_ok_0_1092.jpeg") == \
        sha256_file(KAGGLE / "train/ok_front/cast_ok_0_1092.jpeg")


def test_without_kaggle_the_pinned_github_archive_is_fetched(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaggle", None)  # import fails
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", None)
    asked = []

    def refuse(url, dest):
        asked.append(url)
        raise ImpellerBenchError(f"cannot download {url} (offline)")

    monkeypatch.setattr(download, "fetch", refuse)
    with pytest.raises(ImpellerBenchError, match="offline"):
        download.download_source("casting-kaggle-300", tmp_path / "to", ANNOTATIONS, say=lambda _text: None)
    reference = KNOWN_SOURCES["casting-kaggle-300"]
    assert asked == [f"{reference['repository']}/archive/{reference['commit']}.zip"]
    assert not (tmp_path / "to" / "casting-kaggle-300").exists()
