"""A sweep's grid (methods x datasets x seeds x option values) and the cells it expands into.

A grid file is YAML (or JSON), for example::

    profile: quick          # the run profile of every cell (quick, paper)
    bootstrap: 1000         # resamples of photo groups behind each cell's intervals
    reference: efficientad  # the summary's paired intervals are against this method
    datasets: [data/impeller-v2-native, data/mtd]
    seeds: [0]              # the default of methods that name no seeds
    set: {anomaly_map: [combined, local]}   # options of every method that has them, each a list of values
    methods:
      ours: {seeds: [0, 1, 2]}
      padim: {}
      efficientad: {seeds: [0, 1, 2], set: {dropout: [0.2, 0.0]}}
    submission: {...}       # what `leaderboard submit` needs, for the board's grid (see leaderboard/grid.yaml)

Every combination becomes one cell: what ``impeller-bench run`` does for one method, dataset, seed and set of
options. A cell is known by the digest of its definition (method, profile, steps, options, device, bootstrap,
the dataset manifest's sha256, the package version and the seed): the same definition always finds the same
output, a changed one never does.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..common.errors import ImpellerBenchError
from ..common.version import __version__

CELL_SETTINGS = {"seed", "profile", "device"}  # a cell's own fields, never options
GRID_KEYS = {"profile", "steps", "device", "bootstrap", "reference", "datasets", "seeds", "set", "methods",
             "submission"}
METHOD_KEYS = {"seeds", "set"}
DEFAULT_BOOTSTRAP = 1000


@dataclass(frozen=True)
class Cell:
    """One run of a sweep. ``options`` are detector configuration overrides, as sorted (key, value) pairs."""

    method: str
    dataset: str  # the dataset folder, absolute
    dataset_name: str
    manifest_sha256: str
    seed: int
    profile: str = "quick"
    steps: int | None = None
    options: tuple = ()
    device: str = "cpu"
    bootstrap: int = DEFAULT_BOOTSTRAP
    version: str = __version__
    submission: dict | None = field(default=None, compare=False, hash=False)

    def definition(self) -> dict:
        """What the digest covers: everything that changes the cell's outputs. The dataset is known by its
        manifest's hash, not its path, so a moved copy of the same split finds the same cells."""
        return {"method": self.method, "dataset_name": self.dataset_name, "manifest_sha256": self.manifest_sha256,
                "seed": self.seed, "profile": self.profile, "steps": self.steps, "options": dict(self.options),
                "device": self.device, "bootstrap": self.bootstrap, "version": self.version}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.definition(), sort_keys=True).encode()).hexdigest()

    @property
    def name(self) -> str:
        """The cell's folder name: readable, and unique by its digest."""
        return f"{self.method}-{self.dataset_name}-seed{self.seed}-{self.digest[:12]}"

    @property
    def run_command(self) -> str:
        """The ``impeller-bench run`` command that makes the same predictions (``--key value`` per option ``run``
        has; detector settings it has no option for follow as a comment: the grid sets them)."""
        import shlex

        from ..inspection.runner import COMMAND_LINE_OPTIONS

        dataset = Path(self.dataset)
        if dataset.is_relative_to(Path.cwd()):  # as the user typed it, in the usual case
            dataset = dataset.relative_to(Path.cwd())
        parts = ["impeller-bench", "run", self.method, "--dataset", str(dataset)]
        parts += [] if self.profile == "quick" else ["--profile", self.profile]
        parts += [] if self.steps is None else ["--steps", str(self.steps)]
        parts += [] if self.seed == 0 else ["--seed", str(self.seed)]
        parts += ["--device", self.device]
        options = dict(self.options)
        # run's --map-padding also turns the border cover off: a flag only where the cell does the same
        flagged = set(COMMAND_LINE_OPTIONS) - ({"map_padding"} if options.get("cover_border") is not False else set())
        unflagged = []
        for key, value in self.options:
            text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            if key in flagged:
                parts += [f"--{key.replace('_', '-')}", text]
            elif not (key == "cover_border" and value is False and "map_padding" in options):
                unflagged.append(f"{key}={text}")
        command = shlex.join(parts)
        return command + (f"  # with {', '.join(unflagged)} (no run option: set by the grid)" if unflagged else "")

    def to_dict(self) -> dict:
        return {"method": self.method, "dataset": self.dataset, "dataset_name": self.dataset_name,
                "manifest_sha256": self.manifest_sha256, "seed": self.seed, "profile": self.profile,
                "steps": self.steps, "options": [list(pair) for pair in self.options], "device": self.device,
                "bootstrap": self.bootstrap, "version": self.version, "submission": self.submission}

    @classmethod
    def from_dict(cls, data: dict) -> "Cell":
        return cls(**(data | {"options": tuple((k, _frozen(v)) for k, v in data["options"])}))


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


def read_grid(path: str | Path) -> dict:
    """A grid file's contents, checked for unknown keys (one error naming the file)."""
    import yaml

    path = Path(path)
    try:
        grid = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ImpellerBenchError(f"cannot read the grid: {str(exc).splitlines()[0]}", path) from None
    if not isinstance(grid, dict):
        raise ImpellerBenchError("a grid file holds a mapping (methods:, datasets:, seeds: ...)", path)
    check_grid(grid, path)
    return grid


def check_grid(grid: dict, where) -> None:
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise ImpellerBenchError(f"unknown grid key(s) {', '.join(sorted(unknown))}; known: "
                                 f"{', '.join(sorted(GRID_KEYS))}", where)
    methods = grid.get("methods")
    if not methods:
        raise ImpellerBenchError("the grid names no methods", where)
    if not grid.get("datasets"):
        raise ImpellerBenchError("the grid names no datasets", where)
    for method, spec in _method_specs(methods, where).items():
        if not isinstance(spec, dict) or set(spec) - METHOD_KEYS:
            raise ImpellerBenchError(f"method {method}: a mapping of {', '.join(sorted(METHOD_KEYS))} expected, "
                                     f"got {spec!r}", where)


def _method_specs(methods, where="the grid") -> dict:
    """``methods`` as a mapping of name to its own keys (a plain list of names is accepted)."""
    if isinstance(methods, (list, tuple)):
        return {name: {} for name in methods}
    if not isinstance(methods, dict):
        raise ImpellerBenchError(f"methods: a list of names or a mapping of name to its keys expected, got "
                                 f"{methods!r}", where)
    return {name: spec or {} for name, spec in methods.items()}


def parse_set(text: str) -> tuple[str, list]:
    """``KEY=V1,V2`` (the command line's ``--set``) as (key, values), each value read as YAML reads a scalar."""
    import yaml

    key, sep, values = text.partition("=")
    if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*", key.strip()) or not values.strip():
        raise ImpellerBenchError(f"--set {text!r}: KEY=VALUE[,VALUE...] expected (e.g. anomaly_map=combined,local)")
    return key.strip(), [yaml.safe_load(v.strip()) for v in values.split(",")]


def expand(grid: dict, where="the grid") -> list[Cell]:
    """The cells of ``grid``, in a fixed order (datasets, then methods as listed, seeds, option values).

    Options in the grid-wide ``set`` go to the methods whose configuration has them (one that none has is
    refused); a method's own ``set`` must name its options. Every method and option is checked before anything
    runs."""
    from .. import detectors
    from ..data.dataset import load_dataset

    check_grid(grid, where)
    profile = grid.get("profile", "quick")
    steps, bootstrap = grid.get("steps"), int(grid.get("bootstrap", DEFAULT_BOOTSTRAP))
    device = str(detectors.base.pick_device(grid.get("device")).type)
    default_seeds = _int_list(grid.get("seeds", [0]), "seeds", where)
    shared = _value_lists(grid.get("set") or {}, "set", where)
    specs = _method_specs(grid["methods"], where)
    for method in specs:
        detectors.detector_class(method)  # unknown names fail here, with the list of known ones
    unused = set(shared) - set().union(*(detectors.option_names(m) for m in specs))
    if unused:
        raise ImpellerBenchError(f"set: {', '.join(sorted(unused))} is an option of none of the grid's methods",
                                 where)
    cells = []
    for folder in _as_list(grid["datasets"]):
        dataset = load_dataset(folder)
        for method, spec in specs.items():
            own = _value_lists(spec.get("set") or {}, f"{method}'s set", where)
            detectors.check_options(method, own)
            known = detectors.option_names(method)
            choices = {k: v for k, v in shared.items() if k in known} | own
            for seed in _int_list(spec.get("seeds", default_seeds), f"{method}'s seeds", where):
                for values in itertools.product(*(choices[k] for k in sorted(choices))):
                    options = tuple((k, _frozen(v)) for k, v in zip(sorted(choices), values))
                    cells.append(Cell(method, str(Path(dataset.root).resolve()), dataset.name,
                                      dataset.manifest_sha256, seed, profile, steps, options, device, bootstrap,
                                      submission=grid.get("submission")))
    return cells


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _int_list(value, what: str, where) -> list[int]:
    values = _as_list(value)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ImpellerBenchError(f"{what}: a list of whole numbers expected, got {value!r}", where)
    if len(set(values)) < len(values):
        raise ImpellerBenchError(f"{what}: {value!r} lists a seed more than once", where)
    return values


def _value_lists(options: dict, what: str, where) -> dict[str, list]:
    if not isinstance(options, dict):
        raise ImpellerBenchError(f"{what}: a mapping of option to values expected, got {options!r}", where)
    reserved = sorted(set(options) & CELL_SETTINGS)
    if reserved:
        raise ImpellerBenchError(f"{what}: {', '.join(reserved)} is a cell's own setting (the grid's "
                                 f"{', '.join(f'{k}s:' if k == 'seed' else f'{k}:' for k in reserved)}), not an "
                                 "option", where)
    return {key: _as_list(values) for key, values in options.items()}
