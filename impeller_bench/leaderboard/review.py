"""What only the board as a whole can show about an entry, and what a submission's pull request may change.

:func:`impeller_bench.leaderboard.checks.validate_submission` judges one entry alone. Across entries: two names equal up to case
or characters that look alike (``PADIM-quick`` beside ``padim-quick``, ``0`` for ``o``) are one name
submitted twice; two entries whose maps are identical are one set of predictions filed twice (a copy under
another method's name, say). A pull request that adds an entry may add files under one new
``leaderboard/submissions/<name>/`` and nothing else: it is then validated by the base branch's code,
never by its own (see ``.github/workflows/leaderboard.yml``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..common.errors import ImpellerBenchError
from ..common.imageio import read_npy
from .submission import MAPS_NAME, PREDICTIONS_DIR, is_safe_name

SUBMISSIONS_PATH = "leaderboard/submissions/"
# Characters a reader takes for one another in a name: case aside, 0/o, 1/l/i, and the separators.
LOOKALIKE = str.maketrans({"0": "o", "1": "l", "i": "l", "_": "-", ".": "-"})


def name_key(name: str) -> str:
    """The name as a reader tells names apart: two entries whose keys are equal have one name."""
    return name.lower().translate(LOOKALIKE)


def maps_digest(folder: Path) -> str | None:
    """sha256 of an entry's maps (their image ids and float32 values, whatever their file encoding), or None
    where they cannot be read (the entry's own check says why)."""
    maps = Path(folder) / PREDICTIONS_DIR / MAPS_NAME
    if any(p.is_symlink() for p in (Path(folder), maps.parent, maps)) or not maps.is_dir():
        return None  # (links are refused by the entry's own check; none is followed here)
    digest = hashlib.sha256()
    try:
        for path in sorted(p for p in maps.rglob("*.npy") if p.is_file() and not p.is_symlink()):
            digest.update(path.relative_to(maps).as_posix().encode() + b"\0")
            array = read_npy(path)
            digest.update(repr(array.shape).encode() + array.astype("float32").tobytes())
    except (ImpellerBenchError, ValueError, TypeError):
        return None
    return digest.hexdigest()


def cross_entry_problems(folders: list[Path], others: list[Path] = ()) -> dict[Path, list[str]]:
    """Per folder of ``folders``: the entries (among ``folders`` and ``others``, the board's entries not
    checked this time) whose name it shares up to case and look-alikes, or whose maps equal its own."""
    checked = {Path(f).resolve() for f in folders}
    everyone = [Path(f) for f in folders] + [Path(o) for o in others if Path(o).resolve() not in checked]
    digests = {f: maps_digest(f) for f in everyone}
    problems = {}
    for folder in map(Path, folders):
        own = []
        for other in everyone:
            if other.resolve() == folder.resolve():
                continue
            if name_key(other.name) == name_key(folder.name):
                own.append(f"its name {folder.name!r} is entry {other.name!r}'s up to case or look-alike "
                           "characters: one entry per name")
            if digests[folder] is not None and digests[folder] == digests[other]:
                own.append(f"its maps are identical to entry {other.name!r}'s (sha256 {digests[folder][:12]}...): "
                           "one set of predictions is one entry")
        problems[folder] = own
    return problems


def parse_name_status(text: str) -> list[tuple[str, list[str]]]:
    """``git diff --name-status -z`` output (NUL-separated, paths as they are: no quoting of odd names) as
    (status letter, paths): one path, or two for a rename or copy. Lines without NULs (``--name-status``
    without ``-z``) are read too, but a quoted path (git quotes odd names there) is refused: it would not
    match the paths it names."""
    if "\0" in text:
        tokens, changes = [t for t in text.split("\0")], []
        k = 0
        while k < len(tokens) and tokens[k]:
            status = tokens[k]
            count = 2 if status[:1] in "RC" else 1
            changes.append((status[:1], tokens[k + 1:k + 1 + count]))
            k += 1 + count
        return changes
    changes = []
    for line in text.splitlines():
        if line.strip():
            status, *paths = line.split("\t")
            if any(path.startswith('"') for path in paths):
                raise ImpellerBenchError(f"a quoted path in the changes ({line!r}): give `git diff --name-status -z`")
            changes.append((status[:1], paths))
    return changes


def pull_request_scope(changes: list[tuple[str, list[str]]], existing: list[str]) -> tuple[str | None, list[str]]:
    """(the new entry's name or None, problems) for a pull request's ``changes`` (:func:`parse_name_status`)
    against the base board's ``existing`` entry names.

    None and no problems: the request changes no submission (maintenance, checked as code is). Otherwise it
    must add files under exactly one new ``leaderboard/submissions/<name>/`` and change nothing else: not
    another entry, not the board's generated files, not code or annotations (which would then judge it)."""
    touched = [(status, path) for status, paths in changes for path in paths]
    entries = {path[len(SUBMISSIONS_PATH):].split("/", 1)[0] for _, path in touched if path.startswith(SUBMISSIONS_PATH)}
    if not entries:
        return None, []
    problems = []
    if len(entries) > 1:
        problems.append(f"changes {len(entries)} entries ({', '.join(sorted(entries))}): one new entry per pull request")
    outside = sorted({path for _, path in touched if not path.startswith(SUBMISSIONS_PATH)})
    if outside:
        problems.append(f"changes files outside the new entry ({', '.join(outside[:5])}"
                        f"{' ...' if len(outside) > 5 else ''}): a submission comes alone in its pull request, "
                        "and is judged by the base branch's code and annotations")
    not_added = sorted({f"{status} {path}" for status, path in touched if status != "A"})
    if not_added:
        problems.append(f"changes that are not additions ({', '.join(not_added[:5])}): a submission only adds files")
    name = sorted(entries)[0]
    if not is_safe_name(name):
        problems.append(f"{name!r} is not an entry name (letters, digits, '_', '-', '.'; a letter or digit first)")
    clash = [e for e in existing if name_key(e) == name_key(name)]
    if clash:
        problems.append(f"entry {name!r} is {clash[0]!r} up to case or look-alike characters: an entry is replaced "
                        "by its maintainers, and a new one takes a new name")
    return name, problems
