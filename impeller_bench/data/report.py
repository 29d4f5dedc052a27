"""Findings about sources and datasets, gathered into a readable report."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

ERROR = "error"
WARNING = "warning"
INFO = "info"


@dataclass(frozen=True)
class Finding:
    """One thing found about one file. ``code`` is stable, for filtering and tests."""

    severity: str
    code: str
    path: str
    message: str

    def line(self) -> str:
        return f"{self.severity}: {self.path}: {self.message} [{self.code}]"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # structured results beside the findings (e.g. the shortcut audit)

    def add(self, severity: str, code: str, path: str, message: str) -> None:
        self.findings.append(Finding(severity, code, str(path), message))

    def extend(self, findings) -> None:
        self.findings.extend(findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def ok(self) -> bool:
        return not self.errors

    def paths_with_errors(self) -> set[str]:
        return {f.path for f in self.errors}

    def counts(self) -> dict[str, int]:
        return dict(Counter(f.code for f in self.findings))

    def text(self, title: str = "") -> str:
        order = {ERROR: 0, WARNING: 1, INFO: 2}
        lines = [title] if title else []
        lines += [f.line() for f in sorted(self.findings, key=lambda f: (order[f.severity], f.code, f.path))]
        by_severity = Counter(f.severity for f in self.findings)
        lines.append(
            f"{by_severity[ERROR]} error(s), {by_severity[WARNING]} warning(s), {by_severity[INFO]} note(s)"
            + ("" if not self.findings else ": " + ", ".join(f"{c} x{n}" for c, n in sorted(self.counts().items())))
        )
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {"ok": self.ok, "counts": self.counts(), "findings": [asdict(f) for f in self.findings]} | self.details,
            indent=2,
        )
