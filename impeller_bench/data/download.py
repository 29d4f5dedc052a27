"""Fetch the public sources and unpack them only after every file's sha256 has been checked.

Each known source (``sources/references.py``) names a checksum list under
``annotations/sources/<name>.sha256`` (``sha256  relative/path`` per line,
the files as published) and where to get it: the Kaggle dataset through the
``kaggle`` package when it is installed and configured, else a GitHub
archive at a pinned commit. GitHub does not promise byte-stable archives, so
the contract is per file: every listed file must be in the archive with its
listed sha256 before anything is written. Only the listed files are written,
by their listed names (never the archive's own paths), into
``DIR/<source name>/``, atomically.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from ..common.errors import ImpellerBenchError
from ..common.files import (
    atomic_file,
    atomic_write_bytes,
    safe_id,
    sha256_file,
    staged_directory,
)
from ..common.progress import no_progress
from .sources.references import KNOWN_SOURCES

CHECKSUMS_FOLDER = "sources"


def read_checksums(path: str | Path) -> dict[str, str]:
    """``sha256  relative/path`` lines (sha256sum's format; a leading ``./`` is dropped)."""
    path = Path(path)
    if not path.is_file():
        raise ImpellerBenchError("checksum list not found", path)
    listed = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        name = name.removeprefix("./")
        if len(digest) != 64 or not name:
            raise ImpellerBenchError(f"line {number}: expected 'sha256  path'", path)
        listed[safe_id(name, path)] = digest.lower()
    return listed


def checksums_for(source: str, annotations: str | Path) -> dict[str, str]:
    return read_checksums(Path(annotations) / CHECKSUMS_FOLDER / f"{source}.sha256")


def archive_prefix(members: list[str], wanted: list[str], archive: Path) -> str:
    """The folder inside the archive under which the listed files lie (the one holding most of them)."""
    first = wanted[0]
    candidates = {m[: len(m) - len(first)] for m in members if m == first or m.endswith("/" + first)}
    if not candidates:
        raise ImpellerBenchError(f"not the expected source: no {first} anywhere in the archive", archive)
    present = set(members)
    return max(sorted(candidates), key=lambda prefix: sum(prefix + name in present for name in wanted))


def member_sha256(handle: zipfile.ZipFile, name: str, copy_to=None) -> str:
    """sha256 of one archive member, read once in blocks (and written to ``copy_to`` on the way)."""
    digest = hashlib.sha256()
    with handle.open(name) as member:
        for block in iter(lambda: member.read(1 << 20), b""):
            digest.update(block)
            if copy_to is not None:
                copy_to.write(block)
    return digest.hexdigest()


def verify_archive(archive: str | Path, checksums: dict[str, str], progress=None) -> str:
    """Check every listed file's presence and sha256 inside a zip archive; return its folder prefix."""
    archive, progress = Path(archive), progress or no_progress
    try:
        with zipfile.ZipFile(archive) as handle:
            members = [info.filename for info in handle.infolist() if not info.is_dir()]
            prefix = archive_prefix(members, sorted(checksums), archive)
            present = set(members)
            missing, different = [], []
            for name in progress(sorted(checksums), f"verifying {archive.name}"[:26]):
                if prefix + name not in present:
                    missing.append(name)
                    continue
                if member_sha256(handle, prefix + name) != checksums[name]:
                    different.append(name)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImpellerBenchError(f"not a readable zip archive ({exc})", archive) from exc
    problems = []
    if missing:
        problems.append(f"{len(missing)} listed file(s) missing: {', '.join(missing[:10])}")
    if different:
        problems.append(f"{len(different)} file(s) with a different sha256: {', '.join(different[:10])}")
    if problems:
        raise ImpellerBenchError("; ".join(problems) + " (nothing was unpacked)", archive)
    return prefix


def unpack_verified(archive: str | Path, checksums: dict[str, str], out: str | Path, overwrite: bool = False,
                    progress=None) -> Path:
    """Verify, then write exactly the listed files into ``out`` (atomically: all of them or none)."""
    archive, progress = Path(archive), progress or no_progress
    prefix = verify_archive(archive, checksums, progress)
    with staged_directory(out, overwrite=overwrite) as stage, zipfile.ZipFile(archive) as handle:
        for name in progress(sorted(checksums), "unpacking"):
            target = stage / PurePosixPath(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as written:
                if member_sha256(handle, prefix + name, written) != checksums[name]:  # the archive changed under us
                    raise ImpellerBenchError(f"{name} changed while unpacking", archive)
    return Path(out)


def fetch(url: str, dest: Path) -> Path:
    """Download ``url`` (http(s) or file://) to ``dest`` through a temporary file."""
    try:
        with atomic_file(dest) as part, urllib.request.urlopen(url) as response:
            shutil.copyfileobj(response, part, 1 << 20)
    except (OSError, ValueError) as exc:
        raise ImpellerBenchError(f"cannot download {url} ({exc})") from exc
    return dest


@contextlib.contextmanager
def _created_for_the_block(folder: Path):
    """Make ``folder`` (and its missing parents) for the block; if the block fails, remove those that are still
    empty, so that a failed download leaves nothing behind (folders that were there before stay)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for made in missing:
            with contextlib.suppress(OSError):  # not empty: not only ours
                made.rmdir()
        raise


def github_archive(reference: dict) -> str:
    """The zip of the source's repository at its pinned commit."""
    return f"{reference['repository']}/archive/{reference['commit']}.zip"


def kaggle_download(dataset: str, folder: Path) -> Path | None:
    """The dataset's zip through the ``kaggle`` package; None when it is not installed or not configured."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        return None
    api = KaggleApi()
    try:
        api.authenticate()
    except (OSError, ValueError):  # no kaggle.json and no KAGGLE_USERNAME / KAGGLE_KEY
        return None
    api.dataset_download_files(dataset, path=str(folder), unzip=False, quiet=False)
    archives = sorted(folder.glob("*.zip"))
    if not archives:
        raise ImpellerBenchError(f"the kaggle package wrote no zip for {dataset}", folder)
    return archives[0]


def _local_archive(location: str) -> Path | None:
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme in ("", "file") and not parsed.netloc:
        return Path(urllib.parse.unquote(parsed.path))
    return None


def download_source(name: str, to: str | Path, annotations: str | Path, archive: str | None = None,
                    use_kaggle: bool = True, overwrite: bool = False, progress=None, say=print) -> dict:
    """Fetch one source, verify it against its checksum list and unpack it into ``to/<name>``.

    ``archive``: a local zip or a URL to use instead of the source's own
    locations (an archive already downloaded, a mirror).
    """
    reference = KNOWN_SOURCES.get(name)
    if reference is None:
        raise ImpellerBenchError(f"unknown source {name!r} (known: {', '.join(KNOWN_SOURCES)})")
    checksums = checksums_for(name, annotations)
    to = Path(to)
    with _created_for_the_block(to), tempfile.TemporaryDirectory(dir=to, prefix=".download-") as scratch:
        scratch = Path(scratch)
        if archive is not None:
            local = _local_archive(archive)
            if local is None:
                say(f"{name}: downloading {archive}")
            path, origin = (local, str(local)) if local is not None else (fetch(archive, scratch / "source.zip"), archive)
        else:
            path = kaggle_download(reference["kaggle_dataset"], scratch) if use_kaggle and "kaggle_dataset" in reference else None
            if path is not None:
                origin = f"kaggle:{reference['kaggle_dataset']}"
            else:
                if "kaggle_dataset" in reference:
                    say(f"{name}: the kaggle package is not installed or not configured; using the GitHub mirror "
                        f"at commit {reference['commit'][:12]}")
                origin = github_archive(reference)
                say(f"{name}: downloading {origin}")
                path = fetch(origin, scratch / "source.zip")
        if not path.is_file():
            raise ImpellerBenchError("archive not found", path)
        out = unpack_verified(path, checksums, to / name, overwrite, progress)
        receipt = {"source": name, "origin": origin, "archive_sha256": sha256_file(path), "files": len(checksums),
                   "checksums": f"annotations/{CHECKSUMS_FOLDER}/{name}.sha256"}
    atomic_write_bytes(to / f"{name}.download.json", (json.dumps(receipt, indent=1) + "\n").encode())
    return receipt | {"folder": str(out)}
