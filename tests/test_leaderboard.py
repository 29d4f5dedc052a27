"""Leaderboard: submissions are checked file by file and number by number; the board's files are current.

The rule tests use a synthetic split registered as "published" in a
temporary annotations folder (they run anywhere, in seconds); the committed
board is validated against the real split built from ../shared/data.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO, REQUIRE_DATA, needs_shared_data
from scipy import ndimage as ndi

from impeller_bench.cli import main
from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.data.dataset import load_dataset
from impeller_bench.detectors.base import model_name
from impeller_bench.evaluation.evaluate import evaluate
from impeller_bench.evaluation.predictions import load_predictions, write_predictions
from impeller_bench.leaderboard import board as leaderboard
from impeller_bench.leaderboard import checks, outputs, plots, submission
from impeller_bench.leaderboard import site as site_module

BOARD = REPO / "leaderboard"
ANNOTATIONS = REPO / "annotations"
SEVEN_METHODS = {"ours", "efficientad", "patchcore", "padim", "spade", "patchsvdd", "ast"}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="session")
def synthetic_registry(synthetic_dataset, tmp_path_factory):
    """(data root, annotations folder, a submission folder) for the synthetic split, made with the CLI."""
    root = tmp_path_factory.mktemp("registry")
    dataset = load_dataset(synthetic_dataset)
    data_root, annotations = root / "data", root / "annotations"
    shutil.copytree(synthetic_dataset, data_root / dataset.name)
    annotations.mkdir()
    shutil.copy(synthetic_dataset / "manifest.json", annotations / f"{dataset.name}.json")
    # A cheap, deterministic detector: distance from the median training image, smoothed.
    median = np.median([s.load_image().astype(np.float32) for s in dataset.train], axis=0)
    maps, scores = {}, {}
    for sample in dataset.test:
        difference = ndi.gaussian_filter(np.abs(sample.load_image().astype(np.float32) - median), 2)
        maps[sample.id], scores[sample.id] = difference, float(difference.max())
    run_dir = write_predictions(root / "run", scores, maps, {"method": "median-difference", "dataset": str(data_root / dataset.name)})
    result = run("leaderboard", "submit", run_dir, "--name", "median-diff", "--command", "a test fixture",
                 "--author", "tests", "--code", "tests/test_leaderboard.py", "--hardware", "CI", "--map-size", 32,
                 "--bootstrap", 20, "--board", root / "board")
    assert result.exit_code == 0, result.output
    return data_root, annotations, root / "board" / "submissions" / "median-diff"


@pytest.fixture
def entry(synthetic_registry, tmp_path):
    """A fresh copy of the synthetic submission, and a validate function for it."""
    data_root, annotations, original = synthetic_registry
    folder = tmp_path / "board" / "submissions" / original.name
    shutil.copytree(original, folder)
    return folder, lambda: checks.validate_submission(folder, data_root, annotations)


def edit_claims(folder: Path, change) -> None:
    path = folder / submission.SUBMISSION_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1))


def only_problem(check, *needles):
    assert not check.ok
    text = "\n".join(check.problems)
    for needle in needles:
        assert needle in text, text
    return text


def test_a_valid_submission_passes(entry, synthetic_registry):
    folder, validate = entry
    check = validate()
    assert check.ok, check.problems
    # The claims are the evaluator's own numbers on the committed (shrunk) maps.
    data = json.loads((folder / submission.SUBMISSION_FILE).read_text())
    dataset = load_dataset(synthetic_registry[0] / "synthetic-impellers")
    again = evaluate(dataset, load_predictions(folder / "predictions"), 20, 0)
    assert data["metrics"] == {m: again["metrics"][m] for m in submission.METRICS}
    assert max(np.load(p).shape[0] for p in (folder / "predictions" / "maps").rglob("*.npy")) == 32


def test_a_claim_off_by_1e_3_fails(entry):
    folder, validate = entry
    edit_claims(folder, lambda d: d["metrics"].update(image_auroc=d["metrics"]["image_auroc"] - 1e-3))
    text = only_problem(validate(), "image_auroc: claimed", "recomputed", "off by 1.0e-03")
    assert "pixel_auroc" not in text


def test_an_interval_off_fails(entry):
    folder, validate = entry
    edit_claims(folder, lambda d: d["ci95"]["pixel_pro_30"].__setitem__(1, d["ci95"]["pixel_pro_30"][1] + 1e-5))
    only_problem(validate(), "pixel_pro_30 95% interval high")


def test_a_missing_map_fails(entry):
    folder, validate = entry
    victim = sorted((folder / "predictions" / "maps" / "test" / "defect").glob("*.npy"))[0]
    victim.unlink()
    only_problem(validate(), "without a map", f"test/defect/{victim.stem}")


def test_a_name_with_dotdot_fails(entry):
    folder, validate = entry
    (folder / "predictions" / "maps" / "test" / "good" / "x..npy").write_bytes(b"")
    only_problem(validate(), "x..npy: unsafe name")


def test_a_symbolic_link_fails(entry, tmp_path):
    folder, validate = entry
    outside = tmp_path / "secret.npy"
    np.save(outside, np.zeros((4, 4), np.float16))
    maps = folder / "predictions" / "maps" / "test" / "good"
    victim = sorted(maps.glob("*.npy"))[0]
    victim.unlink()
    os.symlink(outside, victim)
    only_problem(validate(), f"{victim.name}: symbolic links are not accepted")


def test_a_linked_submission_folder_fails(entry, tmp_path):
    folder, _ = entry
    link = tmp_path / "linked"
    os.symlink(folder, link)
    only_problem(checks.validate_submission(link, tmp_path, tmp_path), "is a symbolic link")


def test_an_oversized_file_fails(entry):
    folder, validate = entry
    victim = sorted((folder / "predictions" / "maps" / "test" / "good").glob("*.npy"))[0]
    np.save(victim, np.zeros((300, 300), np.float32))  # 360 kB
    only_problem(validate(), f"{victim.name}: 360,128 bytes, over the limit of 262,144 per file")


def test_too_many_bytes_in_all_fail(entry, monkeypatch):
    folder, validate = entry
    monkeypatch.setattr(submission, "MAX_SUBMISSION_BYTES", 10_000)
    only_problem(validate(), "over the limit of 10,000 per submission")


def test_a_wrong_manifest_hash_fails(entry):
    folder, validate = entry
    edit_claims(folder, lambda d: d["dataset"].update(manifest_sha256="0" * 64))
    only_problem(validate(), "wrong manifest hash", "000000000000...")


def test_archives_and_unexpected_files_fail(entry):
    folder, validate = entry
    (folder / "extra.zip").write_bytes(b"PK")
    (folder / "predictions" / "notes.txt").write_text("hi")
    only_problem(validate(), "extra.zip: archives are not accepted", "predictions/notes.txt: unexpected file")


def test_schema_errors_say_what_is_expected(entry):
    folder, validate = entry
    edit_claims(folder, lambda d: (d.pop("hardware"), d["metrics"].pop("pixel_f1_max"), d.update(colour="red")))
    only_problem(validate(), "missing field 'hardware'", "field 'metrics' must be", "pixel_f1_max", "unknown field(s) colour")


def test_an_unknown_split_fails(entry):
    folder, validate = entry
    edit_claims(folder, lambda d: d["dataset"].update(split="impeller-v9"))
    only_problem(validate(), "unknown split 'impeller-v9'", "published: synthetic-impellers")


def test_validate_command_exit_codes(entry, synthetic_registry):
    folder, _ = entry
    data_root, annotations, _ = synthetic_registry
    options = ["--annotations", annotations, "--data", data_root]
    good = run("leaderboard", "validate", folder.parent, *options)
    assert good.exit_code == 0 and "1 of 1 submission(s) hold" in good.output, good.output
    (folder / "predictions" / "scores.csv").write_text("image,score\n")
    bad = run("leaderboard", "validate", folder, *options)
    assert bad.exit_code == 1 and "FAIL" in bad.output and "without a score" in bad.output


def test_validate_loads_each_split_once_for_all_its_entries(entry, synthetic_registry, monkeypatch):
    folder, _ = entry
    data_root, annotations, _ = synthetic_registry
    loaded = []
    real_load = checks.load_published_dataset
    monkeypatch.setattr(checks, "load_published_dataset", lambda *a: loaded.append(a[2]) or real_load(*a))
    datasets = checks.PublishedDatasets(data_root, annotations)
    for _ in range(2):
        assert checks.validate_submission(folder, data_root, annotations, datasets=datasets).ok
    assert len(loaded) == 1
    # The command shares one load over its entries (two here; the copy fails only the cross-entry checks).
    shutil.copytree(folder, folder.parent / "median-diff-copy")
    result = run("leaderboard", "validate", folder.parent, "--annotations", annotations, "--data", data_root)
    assert result.output.count("its maps are identical to entry") == 2 and len(loaded) == 2, result.output
    # A split that is not built is not kept as loaded: every entry on it is told why.
    absent = checks.PublishedDatasets(data_root / "absent", annotations)
    for _ in range(2):
        assert "is not built here" in checks.validate_submission(folder, data_root, annotations,
                                                                 datasets=absent).text()


def test_shrink_map_is_an_area_average():
    rng = np.random.default_rng(0)
    array = rng.random((64, 48)).astype(np.float32)
    shrunk = submission.shrink_map(array, 16)
    assert shrunk.shape == (16, 12)  # the longer side to 16, the aspect ratio kept (MTD's maps are not square)
    brute = np.array([[array[4 * i:4 * i + 4, 4 * j:4 * j + 4].mean() for j in range(12)] for i in range(16)])
    np.testing.assert_allclose(shrunk, brute, rtol=1e-5)
    assert submission.shrink_map(array[:48, :], 16).shape == (16, 16)
    assert submission.shrink_map(array[:10, :10], 16).shape == (10, 10)  # never enlarged


def test_ranks_share_ties_unless_a_paired_interval_separates_them():
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.05, 1000)  # the resamples' common part: paired entries move together
    replicates = [v + shared + rng.normal(0, 0.005, 1000) for v in (0.90, 0.80, 0.895, 0.70)]
    entries = [{"name": f"e{k}", "metrics": {"image_auroc": float(r.mean())}, "_replicates": {"image_auroc": r}}
               for k, r in enumerate(replicates)]
    assert leaderboard.ranks(entries, "image_auroc") == [1, 3, 1, 4]
    assert [e["name"] for _, e in leaderboard.ranked(entries, "image_auroc")] == ["e0", "e2", "e1", "e3"]
    # Unpaired (independent resamples), the same spread hides every difference but the largest.
    loose = [v + rng.normal(0, 0.05, 1000) for v in (0.90, 0.80, 0.895, 0.70)]
    for entry, r in zip(entries, loose):
        entry["_replicates"] = {"image_auroc": r}
    assert leaderboard.ranks(entries, "image_auroc") == [1, 1, 1, 3]


def test_stored_replicates_are_checked_against_the_recomputed_ones(entry):
    folder, validate = entry
    path = folder / submission.BOOTSTRAP_FILE
    table = np.load(path)
    table[3, 0] += 1e-3
    np.save(path, table)
    only_problem(validate(), "bootstrap.npy: image_auroc: replicates differ")
    np.save(path, table[:, :2])
    only_problem(validate(), "bootstrap.npy", "expected a float64 table")
    with open(path, "wb") as handle:  # an archive under the array's name
        np.savez(handle, table)
    only_problem(validate(), "bootstrap.npy", "not a .npy array file")
    path.unlink()
    only_problem(validate(), "no bootstrap.npy")


def test_build_and_check(entry, synthetic_registry, tmp_path, monkeypatch):
    folder, _ = entry
    data_root, annotations, _ = synthetic_registry
    board = folder.parent.parent
    second = folder.parent / "median-diff-copy"
    shutil.copytree(folder, second)
    edit_claims(second, lambda d: d.update(name="median-diff-copy", latency={
        "median_ms": 3.0, "p90_ms": 4.0, "hardware": "CI", "protocol": {"device": "cpu", "threads": 2}}))
    before_build = outputs.outdated(board, annotations)
    assert {n for n in before_build if not n.startswith("site/")} == {"README.md", "results.csv", "latency_vs_pro.png"}
    assert "site/index.html" in before_build and "site/entries/median-diff-copy/index.html" in before_build
    result = run("leaderboard", "build", "--board", board, "--annotations", annotations, "--data", data_root)
    assert result.exit_code == 0, result.output
    assert f"wrote {board / 'site'}/: " in result.output
    assert run("leaderboard", "build", "--check", "--board", board, "--annotations", annotations).exit_code == 0
    readme = (board / "README.md").read_text()
    assert "<code>median-diff</code>" in readme and "<code>median-diff-copy</code>" in readme
    assert "*PatchCore (paper)*" in readme
    assert ("| 1 | median-difference | <code>median-diff</code> |" in readme
            and "| 1 | median-difference | <code>median-diff-copy</code> |" in readme)
    rows = (board / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("split,name,method,rank_image,rank_pixel")
    for png in ("latency_vs_pro.png", "overlays.png"):
        assert plots.png_fingerprint(board / png) is not None
    _check_the_site(board, annotations, data_root, tmp_path, monkeypatch)
    # A changed claim makes the tables, the latency plot and the pages that show it stale.
    edit_claims(second, lambda d: d["latency"].update(median_ms=5.0))
    stale_now = outputs.outdated(board, annotations)
    assert {n for n in stale_now if not n.startswith("site/")} == {"README.md", "results.csv", "latency_vs_pro.png"}
    assert {"site/index.html", "site/entries/median-diff-copy/index.html", "site/latency_vs_pro.png"} <= set(stale_now)
    assert "site/entries/median-diff/index.html" not in stale_now
    stale = run("leaderboard", "build", "--check", "--board", board, "--annotations", annotations)
    assert stale.exit_code == 1 and "out of date: " in stale.output
    # A build without the split built names what to do and leaves the committed files as they were.
    before = (board / "README.md").read_bytes()
    missing = run("leaderboard", "build", "--board", board, "--annotations", annotations, "--data", tmp_path / "nothing")
    assert missing.exit_code == 2 and "is not built here" in missing.output
    assert (board / "README.md").read_bytes() == before


def _check_the_site(board, annotations, data_root, tmp_path, monkeypatch):
    """The site the build wrote: its pages and figures, and that --check catches hand edits, stray files and
    figures of other maps; publish draws the photos, never into the committed site."""
    from PIL import Image

    site = board / "site"
    page = site / "entries" / "median-diff"
    for name in ("index.html", "figures.json", "curves.png", "maps.png"):
        assert (page / name).is_file(), name
    assert (site / "index.html").is_file() and (site / "tracks" / "synthetic-impellers.html").is_file()
    assert sum(p.stat().st_size for p in page.iterdir()) < 300_000  # a light entry page
    figures = json.loads((page / "figures.json").read_text())
    assert {"image_roc", "pixel_roc", "pro"} <= set(figures["curves"]) and figures["examples"]
    rated = [e["pixel_auroc"] for e in figures["examples"]]
    assert rated == sorted(rated, reverse=True)  # best first, worst last
    assert Image.open(page / "maps.png").width == site_module.TILE  # the maps alone: no photo committed
    index = (site / "index.html").read_text()
    assert "median-diff-copy" in index and "<script" in index and "http://" not in index and "https://" not in index

    def check() -> list[str]:
        result = run("leaderboard", "build", "--check", "--board", board, "--annotations", annotations)
        return [line for line in result.output.splitlines() if line.startswith("out of date")]

    original = (site / "index.html").read_text()
    (site / "index.html").write_text(original.replace("median-diff-copy", "median-diff-kopie", 1))
    assert check() == [f"out of date: {site / 'index.html'}"]  # a hand edit
    (site / "index.html").write_text(original)
    (site / "extra.html").write_text("<p>mine</p>")
    assert check() == [f"out of date: {site / 'extra.html'} (not made by the build)"]
    (site / "extra.html").unlink()
    kept = (page / "figures.json").read_text()
    (page / "figures.json").write_text(kept.replace(figures["maps_sha256"], "0" * 64))
    assert f"out of date: {page / 'figures.json'} (missing or made from other maps)" in check()
    (page / "figures.json").write_text(kept)
    assert check() == []

    published_site = tmp_path / "published"
    result = run("leaderboard", "publish", "--out", published_site, "--board", board, "--annotations", annotations,
                 "--data", data_root)
    assert result.exit_code == 0, result.output
    assert Image.open(published_site / "entries" / "median-diff" / "maps.png").width == 2 * site_module.TILE + 4
    assert "outlined in cyan" in (published_site / "entries" / "median-diff" / "index.html").read_text()
    refused = run("leaderboard", "publish", "--out", site, "--board", board, "--annotations", annotations,
                  "--data", data_root)
    assert refused.exit_code != 0 and "holds no photos" in refused.output
    again = run("leaderboard", "publish", "--out", published_site, "--board", board, "--annotations", annotations,
                "--data", data_root)
    assert again.exit_code == 0, again.output  # an earlier publish is replaced
    assert sorted(p.name for p in published_site.parent.iterdir() if p.name.startswith(".published")) == []
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    (tmp_path / "a-file").write_text("keep me too")
    (tmp_path / "linked").symlink_to(published_site)
    for out, says in ((foreign, "is not a site from an earlier publish"), (board.parent, "holds the leaderboard"),
                      (data_root, "holds the built splits"), (board / "submissions" / "new", "inside the leaderboard"),
                      (tmp_path / "a-file", "is a file"), (tmp_path / "linked", "a symbolic link")):
        refused = run("leaderboard", "publish", "--out", out, "--board", board, "--annotations", annotations,
                      "--data", data_root)
        assert refused.exit_code != 0 and says in refused.output, (out, refused.output)
    assert (foreign / "mine.txt").read_text() == "keep me" and board.is_dir()
    assert not (board / "submissions" / "new").exists() and (tmp_path / "a-file").read_text() == "keep me too"
    empty = tmp_path / "empty"
    empty.mkdir()
    with monkeypatch.context() as patch:  # '.', an empty folder: staged beside it, then swapped in
        patch.chdir(empty)
        here = run("leaderboard", "publish", "--out", ".", "--board", board, "--annotations", annotations,
                   "--data", data_root)
    assert here.exit_code == 0, here.output
    assert (empty / "index.html").is_file() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert check() == []


def test_overlays_show_images_spread_over_defect_sizes(synthetic_registry):
    _, annotations, _ = synthetic_registry
    manifest = json.loads((annotations / "synthetic-impellers.json").read_text())
    area = {e["id"]: e["defect_area"] for e in manifest["entries"] if e["label"] == "defect" and e["split"] == "test"}
    shown = plots.overlay_choice(annotations, "synthetic-impellers")
    assert len(shown) == 4 and [area[i] for i in shown] == sorted(area[i] for i in shown)
    assert area[shown[0]] == min(area.values()) and area[shown[-1]] == max(area.values())


PAPER_MD = REPO.parent / "shared" / "PAPER.md"


@pytest.mark.skipif(not PAPER_MD.is_file() and not REQUIRE_DATA, reason=f"{PAPER_MD} not beside the repository")
def test_paper_figures_are_the_papers_tables():
    text = PAPER_MD.read_text()
    for method, figures in leaderboard.PAPER.items():
        name = model_name(method)
        image = next(line for line in text.splitlines() if line.startswith(f"| {name} |") and line.count("|") == 7)
        pixel = next(line for line in text.splitlines() if line.startswith(f"| {name} |") and line.count("|") == 5)
        values = [float(v) for v in image.split("|")[2:7]] + [float(v) for v in pixel.split("|")[2:5]]
        assert values == [figures[m] for m in submission.METRICS]
        section = " ".join(text[text.index("Latency, batch 1"):].split())
        latency = re.search(rf"\b{name} ([0-9.]+)[,.]", section, re.I)
        assert float(latency.group(1)) == figures["latency_ms"], name


# --- the committed board, against the real split ---------------------------------------------

@pytest.fixture(scope="session")
def published_data_root(published_builds):
    """The board's splits, built as the rebuild tests build them (test_shared_data.py judges those builds)."""
    folders = [published_builds(split)[0] for split in sorted({e["dataset"]["split"] for e in leaderboard.load_entries(BOARD)})]
    return folders[0].parent


def test_committed_board_is_up_to_date():
    stale = outputs.outdated(BOARD, ANNOTATIONS)
    assert stale == [], f"run: impeller-bench leaderboard build (stale: {stale})"
    result = run("leaderboard", "build", "--check", "--board", BOARD, "--annotations", ANNOTATIONS)
    assert result.exit_code == 0, result.output


def test_committed_entries_cover_every_method_and_fit_the_limits():
    entries = leaderboard.load_entries(BOARD)
    assert SEVEN_METHODS <= {e["method"] for e in entries}
    for entry in entries:
        files, problems = submission.scan_files(entry["_folder"])
        split = json.loads((ANNOTATIONS / f"{entry['dataset']['split']}.json").read_text())
        tests = sum(e["split"] == "test" for e in split["entries"])
        assert not problems and len(files) == tests + 4, (entry["name"], problems)  # maps, scores, meta, claims, replicates
        assert entry["command"].startswith("impeller-bench run ")


@needs_shared_data
def test_committed_board_validates(published_data_root):
    """Every entry's files, claims and numbers recomputed; its bootstrap intervals and replicates (1,000
    resamples, the costly part) for every entry of the main split and the first entry of each other split but
    mtd (5 minutes per MTD entry on 2 cores: its 41 million pixels). ``impeller-bench leaderboard validate``,
    which the leaderboard workflow runs, checks them all."""
    from impeller_bench.data import published

    entries = leaderboard.load_entries(BOARD)
    datasets = checks.PublishedDatasets(published_data_root, ANNOTATIONS)
    first_of_split = {}
    for entry in sorted(entries, key=lambda e: e["name"]):
        first_of_split.setdefault(entry["dataset"]["split"], entry["name"])
    for entry in entries:
        split = entry["dataset"]["split"]
        intervals = published.status(split) == published.MAIN or (first_of_split[split] == entry["name"]
                                                                    and split != "mtd")
        check = checks.validate_submission(entry["_folder"], published_data_root, ANNOTATIONS, intervals=intervals,
                                           datasets=datasets)
        assert check.ok, check.text()


def test_a_quick_validation_still_recomputes_every_number_but_the_intervals(entry, synthetic_registry):
    folder, _ = entry
    data_root, annotations, _ = synthetic_registry
    edit_claims(folder, lambda d: d["ci95"]["pixel_auroc"].__setitem__(0, 0.01))
    assert checks.validate_submission(folder, data_root, annotations, intervals=False).ok
    assert "pixel_auroc 95% interval low" in checks.validate_submission(folder, data_root, annotations).text()
    edit_claims(folder, lambda d: d["metrics"].__setitem__("pixel_auroc", d["metrics"]["pixel_auroc"] - 0.01))
    assert "pixel_auroc: claimed" in checks.validate_submission(folder, data_root, annotations, intervals=False).text()


def test_deprecated_splits_come_last_under_their_own_heading_and_take_no_entries(entry, synthetic_registry,
                                                                                  monkeypatch, tmp_path):
    from impeller_bench.data import published

    folder, _ = entry
    data_root, annotations, _ = synthetic_registry
    board = folder.parent.parent
    second = folder.parent / "median-diff-v2"
    shutil.copytree(folder, second)
    latency = {"median_ms": 3.0, "p90_ms": 4.0, "hardware": "CI", "protocol": {"device": "cpu", "threads": 2}}
    edit_claims(folder, lambda d: d.update(latency=latency))
    edit_claims(second, lambda d: d.update(name="median-diff-v2", dataset=dict(d["dataset"], split="aa-current"),
                                           latency=latency))
    monkeypatch.setitem(published.SPLITS, "synthetic-impellers", {"status": published.DEPRECATED, "about": "a test",
                                                                  "reason": "a planted shortcut"})
    entries = leaderboard.load_entries(board)
    assert list(leaderboard.by_split(entries)) == ["aa-current", "synthetic-impellers"]  # deprecated last, not by name
    readme = leaderboard.render_readme(entries, annotations)
    deprecated = readme.index("## Deprecated: source shortcut")
    assert readme.index("## aa-current") < deprecated < readme.index("### synthetic-impellers")
    assert "Why `synthetic-impellers` is deprecated: a planted shortcut." in readme
    assert [row[0] for row in plots.latency_payload(entries)] == ["median-diff-v2"]  # the plot: current splits
    # A deprecated split takes no new entries: neither packaged nor passed by validate (CI's gate) ...
    dataset = load_dataset(data_root / "synthetic-impellers")
    with pytest.raises(ImpellerBenchError) as info:
        submission.package_submission(load_predictions(folder / "predictions"), tmp_path / "new-entry", dataset,
                                      authors=["t"], code="c", version="1", hardware="h", command="c")
    assert "deprecated" in str(info.value) and "a planted shortcut" in str(info.value)
    assert not (tmp_path / "new-entry").exists()
    refused = checks.validate_submission(folder, data_root, annotations)
    assert not refused.ok and "takes no new entries" in refused.problems[0]
    # ... but keeps the entries made before it was deprecated.
    published.SPLITS["synthetic-impellers"]["frozen_entries"] = ("median-diff",)
    assert checks.validate_submission(folder, data_root, annotations).ok
    # A board of deprecated entries alone still builds (there are no overlays to draw).
    shutil.rmtree(second)
    built = run("leaderboard", "build", "--board", board, "--annotations", annotations, "--data", data_root)
    assert built.exit_code == 0, built.output
    assert "## Deprecated: source shortcut" in (board / "README.md").read_text()


def test_a_latency_claim_keeps_how_it_was_timed():
    row = {"method": "patchcore", "median_ms": 40.0, "p90_ms": 45.0, "device": "cpu", "threads": 2, "runs": 50,
           "interleaved_with": 2, "memory": {"bank_patches": 40_960}, "memory_of_training_images": 400,
           "unrelated": "dropped"}
    claim = submission.latency_entry([{"method": "ours", "median_ms": 1.0, "p90_ms": 1.0}, row], "patchcore", "CI")
    assert (claim["median_ms"], claim["p90_ms"], claim["hardware"]) == (40.0, 45.0, "CI")
    assert {k: v for k, v in claim["protocol"].items() if k != "timing"} == {
        "device": "cpu", "threads": 2, "runs": 50, "interleaved_with": 2, "memory": {"bank_patches": 40_960},
        "memory_of_training_images": 400}
    with pytest.raises(ImpellerBenchError, match="no latency figures for spade"):
        submission.latency_entry([row], "spade", "CI")


@pytest.fixture(scope="session")
def localization_registry(tmp_path_factory):
    """(data root, annotations, board, the submission) of a synthetic track without good test images."""
    from impeller_bench.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("localization-registry")
    data_root, annotations = root / "data", root / "annotations"
    write_synthetic(data_root / "synthetic-impellers", train_good=4, test_good=0, test_defect=6, size=64, seed=2)
    dataset = load_dataset(data_root / "synthetic-impellers")
    annotations.mkdir()
    shutil.copy(dataset.root / "manifest.json", annotations / "synthetic-impellers.json")
    maps = {s.id: ndi.gaussian_filter(s.load_mask().astype(np.float32) + 0.3 * np.random.default_rng(k).random((64, 64),
                                                                                                           np.float32), 1)
            for k, s in enumerate(dataset.test)}
    run_dir = write_predictions(root / "run", {i: float(m.max()) for i, m in maps.items()}, maps,
                                {"method": "smoothed-mask", "dataset": str(dataset.root)})
    result = run("leaderboard", "submit", run_dir, "--name", "smoothed", "--command", "a test fixture", "--author", "t",
                 "--code", "tests", "--hardware", "CI", "--map-size", 32, "--bootstrap", 20, "--board", root / "board",
                 "--dataset", dataset.root)
    assert result.exit_code == 0, result.output
    assert "image metrics: not defined (no good test images)" in result.output
    return data_root, annotations, root / "board", root / "board" / "submissions" / "smoothed"


def test_a_track_without_good_test_images_takes_entries_with_pixel_metrics_only(localization_registry, tmp_path):
    data_root, annotations, board, folder = localization_registry
    claims = json.loads((folder / submission.SUBMISSION_FILE).read_text())
    assert all(claims["metrics"][m] is None and claims["ci95"][m] is None for m in submission.IMAGE_METRICS)
    assert all(0 < claims["metrics"][m] <= 1 for m in submission.PIXEL_METRICS)
    assert checks.validate_submission(folder, data_root, annotations).ok
    forged = tmp_path / "board" / "submissions" / "smoothed"
    shutil.copytree(folder, forged)
    edit_claims(forged, lambda d: (d["metrics"].update({m: 0.99 for m in submission.IMAGE_METRICS}),
                                   d["ci95"].update({m: [0.9, 1.0] for m in submission.IMAGE_METRICS})))
    only_problem(checks.validate_submission(forged, data_root, annotations),
                 "image_auroc: claimed 0.990000, recomputed null (not defined: the split has no good test images)")
    built = run("leaderboard", "build", "--board", board, "--annotations", annotations, "--data", data_root)
    assert built.exit_code == 0, built.output
    readme = (board / "README.md").read_text()
    assert "Image metrics: not defined (no good test images) on this track" in readme
    assert "Image level (ranked by AUROC)" not in readme and "| 1 | smoothed-mask | <code>smoothed</code> |" in readme
    row = (board / "results.csv").read_text().splitlines()[1].split(",")
    assert row[3] == "" and row[4] == "1" and row[5] == ""  # no image rank, no image AUROC; pixel rank 1
    assert run("leaderboard", "build", "--check", "--board", board, "--annotations", annotations).exit_code == 0


def test_image_metrics_are_null_all_together_and_with_their_intervals(entry):
    folder, validate = entry
    edit_claims(folder, lambda d: (d["metrics"].update(image_auroc=None), d["ci95"].update(image_auroc=None)))
    only_problem(validate(), "the image metrics are null all together", "found null: image_auroc")
    edit_claims(folder, lambda d: (d["metrics"].update(image_auroc=0.5), d["ci95"].update(pixel_pro_30=None)))
    only_problem(validate(), "field 'ci95' must be", "null for an image metric that is null")


# --- untrusted input: one kind per test ------------------------------------------------------------

def _first_map(folder: Path) -> Path:
    return sorted((folder / "predictions" / "maps").rglob("*.npy"))[0]


@pytest.mark.parametrize("forge", ["npz", "object", "huge header", "absurd header", "text"])
def test_a_map_that_is_not_one_plain_array_fails_its_entry_by_content_not_name(entry, forge):
    folder, validate = entry
    path = _first_map(folder)
    array = np.load(path)
    if forge == "npz":  # the reported case: an archive (a zip bomb would be one) under a map's .npy name
        with open(path, "wb") as f:
            np.savez(f, array, array)
    elif forge == "object":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif forge in ("huge header", "absurd header"):  # a header claiming 10^12 (or 10^400) floats, 16 bytes behind
        side = 10 ** 6 if forge == "huge header" else 10 ** 200
        header = {"descr": "<f8", "fortran_order": False, "shape": (side, side)}
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(b"\0" * 16)
    else:
        path.write_text("0.1,0.2\n")
    text = only_problem(validate(), path.name)
    assert {"npz": "not a .npy array file", "object": "object array", "huge header": "claims",
            "absurd header": "claims", "text": "not a .npy array file"}[forge] in text


def test_one_bad_entry_never_stops_the_validation_of_the_others(entry, synthetic_registry, tmp_path):
    folder, _ = entry
    data_root, annotations, _ = synthetic_registry
    other = folder.parent / "second-entry"
    _submit_distinct(synthetic_registry, folder.parent.parent, "second-entry")
    with open(_first_map(folder), "wb") as f:
        np.savez(f, np.zeros((4, 4)))
    result = run("leaderboard", "validate", "--board", folder.parent.parent, "--annotations", annotations,
                 "--data", data_root)
    assert result.exit_code == 1
    assert f"FAIL  {folder}" in result.output and f"ok    {other}" in result.output
    assert "1 of 2 submission(s) hold" in result.output


def test_the_read_npy_rule_holds_for_every_loader(tmp_path):
    from impeller_bench.common.imageio import read_npy

    path = tmp_path / "bootstrap.npy"
    with open(path, "wb") as f:
        np.savez(f, np.zeros(3))
    with pytest.raises(ImpellerBenchError, match="not a .npy array file") as caught:
        submission.load_replicates(tmp_path, {"bootstrap": {"samples": 10}, "metrics": {}})
    assert str(path) in str(caught.value)
    np.save(path, np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(read_npy(path), np.arange(6.0).reshape(2, 3))


def _submit_distinct(synthetic_registry, board: Path, name: str, sigma: float = 4.0, method: str = "median-difference"):
    """A second, honest entry of the synthetic split (other predictions than the fixture's) under ``board``."""
    data_root, _, _ = synthetic_registry
    dataset = load_dataset(data_root / "synthetic-impellers")
    median = np.median([s.load_image().astype(np.float32) for s in dataset.train], axis=0)
    maps = {s.id: ndi.gaussian_filter(np.abs(s.load_image().astype(np.float32) - median), sigma) for s in dataset.test}
    run_dir = write_predictions(board.parent / f"run-{name}", {i: float(m.max()) for i, m in maps.items()}, maps,
                                {"method": method, "dataset": str(data_root / dataset.name)})
    result = run("leaderboard", "submit", run_dir, "--name", name, "--command", "a test fixture", "--author", "t",
                 "--code", "tests", "--hardware", "CI", "--map-size", 32, "--bootstrap", 20, "--board", board)
    assert result.exit_code == 0, result.output
    return board / "submissions" / name


@pytest.mark.parametrize("field, value", [("method", "ours"), ("config", {"profile": "quick"}),
                                          ("backbone", {"name": "efficientnet_lite0", "weights": None})])
def test_a_claim_that_contradicts_its_predictions_provenance_fails(entry, field, value):
    folder, validate = entry
    edit_claims(folder, lambda d: d.update({field: value}))  # numbers untouched: only the label lies
    only_problem(validate(), f"claims {field}", "meta.json records")


def test_entries_alike_in_name_or_identical_in_maps_are_flagged(entry, synthetic_registry):
    from impeller_bench.leaderboard.review import cross_entry_problems

    folder, _ = entry
    entries = folder.parent
    copy = entries / "padim-copy"
    shutil.copytree(folder, copy)  # a byte-identical copy, relabelled: the reported case
    edit_claims(copy, lambda d: d.update(name="padim-copy", method="ours"))
    for name, sigma in (("MEDIAN-DIFF", 3.0), ("rnedian_diff", 5.0), ("honest", 6.0)):
        _submit_distinct(synthetic_registry, entries.parent, name, sigma)
    problems = cross_entry_problems(sorted(entries.iterdir()))
    by_name = {f.name: "\n".join(p) for f, p in problems.items()}
    assert "identical to entry 'padim-copy'" in by_name["median-diff"]
    assert "identical to entry 'median-diff'" in by_name["padim-copy"]
    assert "'MEDIAN-DIFF'" in by_name["median-diff"] and "'median-diff'" in by_name["MEDIAN-DIFF"]
    assert by_name["rnedian_diff"] == ""  # rn is not m: look-alikes are case, 0/o, 1/l/i and separators only
    assert by_name["honest"] == ""
    tails = _submit_distinct(synthetic_registry, entries.parent, "median.d1ff", 7.0)  # 1 for i, '.' for '-'
    assert "'median-diff'" in "\n".join(cross_entry_problems([tails], [folder])[tails])


def test_hidden_and_misnamed_folders_are_visited_and_refused(entry, synthetic_registry):
    folder, _ = entry
    data_root, annotations, _ = synthetic_registry
    hidden = folder.parent / ".x"
    shutil.copytree(folder, hidden)
    edit_claims(hidden, lambda d: d.update(name=".x"))
    (folder.parent / "stray.txt").write_text("not an entry")
    folders = submission.submission_folders([], folder.parent.parent)
    assert {f.name for f in folders} == {".x", "median-diff", "stray.txt"}
    results = {f.name: checks.validate_submission(f, data_root, annotations) for f in folders}
    only_problem(results[".x"], "not an entry name")
    only_problem(results["stray.txt"], "not a folder")
    with pytest.raises(ImpellerBenchError):
        leaderboard.load_entries(folder.parent.parent)


@pytest.mark.parametrize("field, value, problem", [
    ("hardware", "CPU |\n| forged | row |", "control characters"),
    ("command", "run\r\nrm -rf", "control characters"),
    ("authors", ["a\x1b[31m"], "control characters"),
    ("notes", "a\u2028b", "control characters"),
    ("hardware", "CPU \u202egnp.exe", "control characters"),  # a bidirectional override: text shown reversed
])
def test_text_with_control_characters_is_refused(entry, field, value, problem):
    folder, validate = entry
    edit_claims(folder, lambda d: d.update({field: value}))
    only_problem(validate(), f"field '{field}", problem)


def test_text_that_reaches_the_board_is_shown_as_written_never_as_markup(entry, synthetic_registry):
    folder, _ = entry
    _, annotations, _ = synthetic_registry
    hostile = "a | b `c` <img src=x onerror=alert(1)> [link](javascript:x) \\| $x$"
    edit_claims(folder, lambda d: d.update(hardware=hostile, command=hostile, method=hostile,
                                           backbone={"name": hostile, "weights": None},
                                           latency={"median_ms": 3.0, "p90_ms": 4.0, "hardware": hostile,
                                                    "protocol": {"device": hostile, "threads": 2}}))
    readme = leaderboard.render_readme(leaderboard.load_entries(folder.parent.parent), annotations)
    assert "<img" not in readme and "](javascript" not in readme and "`c`" not in readme
    lines = readme.splitlines()
    shown = 0
    for k, line in enumerate(lines):  # every table row has its header's cells: none added, none split
        if line.startswith("|---"):
            cells, row = lines[k - 1].count("|"), k + 1
            while row < len(lines) and lines[row].startswith("|"):
                assert lines[row].count("|") == cells, lines[row]
                shown += "a &#124; b" in lines[row]
                row += 1
    assert shown >= 3  # the latency table, the entries table (and the rank tables' model name)
    assert leaderboard.plot_text("$x$") == r"\$x\$"


def test_a_pull_request_is_judged_by_scope_then_by_the_base_code(entry, synthetic_registry, tmp_path):
    """A simulated pull request: the base board, the request's checkout with its changed files, and the
    base code's `leaderboard check-pr`; a clean new entry passes, each forged one is refused."""
    from impeller_bench.leaderboard.review import parse_name_status, pull_request_scope

    folder, _ = entry
    data_root, annotations, _ = synthetic_registry
    base = folder.parent.parent

    def request(name, make, extra=()):
        pr = tmp_path / f"pr-{len(list(tmp_path.glob('pr-*')))}"
        shutil.copytree(base, pr / "leaderboard")
        new = make(pr / "leaderboard", name)
        changes = [f"A\tleaderboard/submissions/{name}/{p.relative_to(new).as_posix()}"
                   for p in sorted(new.rglob("*")) if p.is_file()] + list(extra)
        (pr / "changes.txt").write_text("\n".join(changes) + "\n")
        return run("leaderboard", "check-pr", "--changes", pr / "changes.txt", "--pr", pr, "--board", base,
                   "--annotations", annotations, "--data", data_root)

    honest = lambda board, name: _submit_distinct(synthetic_registry, board, name)

    def copied(board, name):  # the fixture's predictions, relabelled
        shutil.copytree(board / "submissions" / "median-diff", board / "submissions" / name)
        edit_claims(board / "submissions" / name, lambda d: d.update(name=name))
        return board / "submissions" / name

    def forged(board, name):
        new = honest(board, name)
        edit_claims(new, lambda d: d["metrics"].update(pixel_auroc=0.999))
        return new

    clean = request("new-entry", honest)
    assert clean.exit_code == 0 and "ok    " in clean.output, clean.output
    refused = {
        "with a validator change": request("new-entry", honest, ["M\timpeller_bench/leaderboard/submission.py"]),
        "changing another entry": request("new-entry", honest, ["M\tleaderboard/submissions/median-diff/submission.json"]),
        "a copy": request("copy-entry", copied),
        "alike in name": request("Median_Diff", honest),
        "a forged number": request("forged-entry", forged),
    }
    for what, result in refused.items():
        assert result.exit_code == 1 and "FAIL" in result.output, (what, result.output)
    assert "identical to entry 'median-diff'" in refused["a copy"].output
    assert "pixel_auroc: claimed" in refused["a forged number"].output
    # The scope rule alone, on the kinds a request can take; git's NUL-separated form, odd names unquoted.
    existing = ["median-diff"]
    assert pull_request_scope(parse_name_status("M\tREADME.md\n"), existing) == (None, [])
    odd = "A\0leaderboard/submissions/\u00e9ntry/x\0M\0leaderboard/README.md\0"
    name, problems = pull_request_scope(parse_name_status(odd), existing)
    assert name == "\u00e9ntry" and any("not an entry name" in p for p in problems)
    assert any("outside the new entry" in p for p in problems)
    with pytest.raises(ImpellerBenchError, match="quoted path"):  # git's quoting would hide the path it names
        parse_name_status('A\t"leaderboard/submissions/\\303\\251/x"\n')
    changes = tmp_path / "maintenance.txt"
    changes.write_text("M\0impeller_bench/cli.py\0")
    kind = run("leaderboard", "check-pr", "--changes", changes, "--pr", tmp_path, "--board", base, "--kind")
    assert kind.exit_code == 0 and kind.output.strip() == "maintenance"
    for changes, needle in (("A\tleaderboard/submissions/.x/submission.json\n", "not an entry name"),
                            ("A\tleaderboard/submissions/a/x\nA\tleaderboard/submissions/b/x\n", "one new entry"),
                            ("D\tleaderboard/submissions/median-diff/submission.json\n", "not additions"),
                            ("A\tleaderboard/submissions/n/x\nM\tleaderboard/README.md\n", "outside the new entry"),
                            ("A\tleaderboard/submissions/MEDIAN-D1FF/x\n", "up to case")):
        name, problems = pull_request_scope(parse_name_status(changes), existing)
        assert any(needle in p for p in problems), (changes, problems)


@pytest.mark.parametrize("where, text, problem", [
    ("submission.json", "[" * 100_000 + "]" * 100_000, "cannot be read as JSON"),  # deeper than Python's stack
    ("predictions/meta.json", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ("predictions/meta.json", "[1, 2]", "must hold a JSON object"),
    ("predictions/meta.json", '{"method": "x", "config": "x"}', "must hold a JSON object"),
])
def test_json_a_parser_chokes_on_fails_its_entry_in_one_line(entry, where, text, problem):
    folder, validate = entry
    (folder / where).write_text(text)
    only_problem(validate(), problem)
