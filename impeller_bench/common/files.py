"""Files written whole or not at all: atomic writes, staged output folders and their lock, checksums,
safe file names for image ids, and the per-machine cache folder."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import shutil
from pathlib import Path, PurePosixPath

from .errors import ImpellerBenchError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _new_entry(folder: Path, prefix: str, suffix: str, create):
    """``(path, create(path))`` for a fresh, unused name in ``folder``; ``create`` must fail if the path exists.

    tempfile's mkstemp and mkdtemp would do, but they make files 0600 and folders 0700, and a file renamed into
    place keeps that mode: outputs must get the mode any new file gets, what the user's umask leaves."""
    for _ in range(100):
        path = folder / f"{prefix}{os.urandom(6).hex()}{suffix}"
        try:
            return path, create(path)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder}")


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


@contextlib.contextmanager
def atomic_file(path: str | Path):
    """A binary file open for writing that becomes ``path`` only if the block completes: a temporary file
    in the same folder, renamed over the target (mode 0666 less the umask, as for any new file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _new_entry(path.parent, f".{path.name}.", ".tmp", lambda p: os.open(p, _NEW_FILE, 0o666))
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, then rename over the target."""
    with atomic_file(path) as handle:
        handle.write(data)


@contextlib.contextmanager
def staged_directory(out: str | Path, overwrite: bool = False, keep_on_error: bool = False):
    """Yield a fresh folder that becomes ``out`` only if the block completes.

    On any error or interrupt the staging folder is removed (with ``keep_on_error``: left in place, its path
    added to the error, for work too long to lose) and ``out`` is left as it was. An existing non-empty
    ``out`` is replaced only with ``overwrite``. One writer at a time: the block holds ``out``'s lock
    (:func:`output_lock`), and staging folders a killed run left for ``out`` are removed first.
    """
    out = Path(out)
    _refuse_existing(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImpellerBenchError(f"cannot create the output folder's parent ({exc.strerror or exc})", out) from None
    with output_lock(out):
        _refuse_existing(out, overwrite)  # (made while we waited)
        for left in _staging_folders(out):
            shutil.rmtree(left, ignore_errors=True)  # a killed run's: its owner is gone, or we would not hold the lock
        try:
            stage, _ = _new_entry(out.parent, f".{out.name}.", ".partial", os.mkdir)  # 0777 less the umask
        except OSError as exc:
            raise ImpellerBenchError(f"cannot write beside the output folder ({exc.strerror or exc})", out) from None
        try:
            yield stage
            if out.exists():
                retired, _ = _new_entry(out.parent, f".{out.name}.", ".old", os.mkdir)
                os.replace(out, retired / "old")
                os.replace(stage, out)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(stage, out)
        except BaseException as exc:
            if keep_on_error and any(stage.iterdir()):
                exc.add_note(f"what was written before the failure is kept in {stage} (the next run into {out} "
                             "removes it)")
            else:
                shutil.rmtree(stage, ignore_errors=True)
            raise


def _staging_folders(out: Path) -> list[Path]:
    """The staging (``.OUT.<12 hex>.partial``) and retired (``.old``) folders of ``out``, of no other output."""
    exact = re.compile(re.escape(f".{out.name}.") + r"[0-9a-f]{12}\.(partial|old)")
    return [p for p in out.parent.glob(glob.escape(f".{out.name}.") + "*") if exact.fullmatch(p.name)]


def _refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ImpellerBenchError("output folder exists and is not empty (use --overwrite to replace it)", out)


@contextlib.contextmanager
def output_lock(out: Path):
    """Hold ``.OUT.lock`` beside ``out`` (an exclusive ``flock``, released by the system when its owner dies,
    the lock file removed after use) for the block; one ImpellerBenchError naming the holder when another
    process holds it: two runs into one output would otherwise both succeed, the later replacing the earlier."""
    import fcntl

    path = out.parent / f".{out.name}.lock"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0),
                         0o666)  # (a planted link is not followed)
        except OSError as exc:
            raise ImpellerBenchError(f"cannot write beside the output folder ({exc.strerror or exc})", out) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ImpellerBenchError(f"is being written by {holder} (its lock: {path.name}); wait for it to "
                                     "finish, or write elsewhere", out) from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:  # not a lock file its last owner removed meanwhile
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {os.uname().nodename}".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def safe_id(image_id: str, where: str | Path) -> str:
    """An image id usable as a relative path: no absolute paths, no '..', no empty parts."""
    path = PurePosixPath(image_id)
    if not image_id or path.is_absolute() or "\\" in image_id or any(p in ("", ".", "..") for p in image_id.split("/")):
        raise ImpellerBenchError(f"unsafe image id {image_id!r}", where)
    return image_id


def cache_folder() -> Path:
    """Where work done once per machine is kept (the synthetic dataset, distilled teachers):
    ``$IMPELLER_BENCH_CACHE``, else ``~/.cache/impeller-bench``."""
    return Path(os.environ.get("IMPELLER_BENCH_CACHE", Path.home() / ".cache" / "impeller-bench"))
