"""Findings: a stable check name, a severity, a count and up to MAX_EXAMPLES examples with file:line."""

from __future__ import annotations

from dataclasses import dataclass, field

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
MAX_EXAMPLES = 10


@dataclass
class Finding:
    check: str
    severity: str
    message: str
    count: int = 0
    examples: list[dict] = field(default_factory=list)

    def add(self, file: str, line: int | None, **detail) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"file": file, "line": line, **detail})


class Findings:
    def __init__(self):
        self.by_check: dict[str, Finding] = {}

    def get(self, check: str, severity: str, message: str) -> Finding:
        key = f"{check}:{severity}"
        if key not in self.by_check:
            self.by_check[key] = Finding(check, severity, message)
        return self.by_check[key]

    def as_list(self) -> list[Finding]:
        return sorted((f for f in self.by_check.values() if f.count), key=lambda f: (SEVERITY_ORDER[f.severity], f.check))


def error_summary(result) -> str:
    """The audit's errors in one line each: check, what, and the first file:line it was seen at."""
    parts = []
    for f in result.errors:
        ex = f.examples[0] if f.examples else {}
        where = f"{ex['file']}:{ex['line']}" if ex.get("line") else ex.get("file", "")
        detail = ", ".join(f"{k}={v!r}" for k, v in ex.items() if k not in ("file", "line") and v is not None)
        more = f" and {f.count - 1} more" if f.count > 1 else ""
        parts.append(f"{f.check}: {f.message} (first at {where}{' ' + detail if detail else ''}{more})"[:300])
    return "; ".join(parts)


def format_table(result) -> str:
    lines = ["Data audit: " + ", ".join(f"{k} {v} rows" for k, v in result.rows.items())]
    if not result.findings:
        return lines[0] + "\n  no findings"
    for f in result.findings:
        lines.append(f"  {f.severity.upper():<8}{f.check:<20}{f.count:>7}  {f.message}")
        for ex in f.examples[:3]:
            where = f"{ex['file']}:{ex['line']}" if ex.get("line") else ex["file"]
            detail = ", ".join(f"{k}={v}" for k, v in ex.items() if k not in ("file", "line") and v is not None)
            lines.append(f"            {where}  {detail}"[:200])
    return "\n".join(lines)
