"""What a check finds (:class:`Result`) and the report of a whole run (:class:`Report`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["ok", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "fail", "skip")


@dataclass(frozen=True)
class Result:
    """One finding: the check, its subject (a package, a weights file, ``cohort/sample``), how it went."""

    check: str
    subject: str
    status: Status
    message: str


@dataclass
class Report:
    """Every finding of one ``bitro doctor`` run."""

    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0
    source: str = ""

    @property
    def problems(self) -> list[Result]:
        """Failures, then warnings."""
        return [r for r in self.results if r.status == "fail"] + [
            r for r in self.results if r.status == "warn"
        ]

    @property
    def ok(self) -> bool:
        """No check failed (warnings allowed)."""
        return not any(r.status == "fail" for r in self.results)

    def counts(self) -> dict[str, int]:
        """Number of results per status."""
        return {status: sum(r.status == status for r in self.results) for status in STATUSES}

    def summary(self) -> str:
        """``12 ok, 1 warn, 0 fail, 3 skipped in 2.1 s``."""
        c = self.counts()
        return (
            f"{c['ok']} ok, {c['warn']} warn, {c['fail']} fail, {c['skip']} skipped in {self.seconds:.1f} s"
        )

    def to_text(self) -> str:
        """A table of every result, then the problems again, then the summary."""
        lines = [f"bitro doctor: {self.source}" if self.source else "bitro doctor", ""]
        lines += _table(self.results)
        if self.problems:
            lines += ["", f"problems ({len(self.problems)}):"]
            lines += [
                f"  {r.status.upper()} [{r.check}] {r.subject}: {_oneline(r.message)}" for r in self.problems
            ]
        lines += ["", f"{'OK' if self.ok else 'FAILED'}: {self.summary()}"]
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        """The report as a JSON object: ok, counts, seconds, source, results."""
        body = {
            "ok": self.ok,
            "counts": self.counts(),
            "seconds": round(self.seconds, 3),
            "source": self.source,
            "results": [asdict(r) for r in self.results],
        }
        return json.dumps(body, indent=2) + "\n"


def _oneline(text: str) -> str:
    """``text`` with every run of whitespace (newlines of library errors) as one space."""
    return " ".join(text.split())


def _table(results: Sequence[Result]) -> list[str]:
    """Aligned ``status check subject message`` rows."""
    rows = [("status", "check", "subject", "message")]
    rows += [(r.status, r.check, r.subject, _oneline(r.message)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return ["  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3] for row in rows]
