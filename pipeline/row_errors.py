"""Per-row errors: the one vocabulary for why a row has no result, and a night's errors counted
by message, so that a systematic failure is told apart from a handful of bad rows.

A row's `error` is either an input problem (the text cannot be annotated: null, not a string,
over runtime.max_chars), which is the data's, or a processing failure (`<stage> failed: ...`
from tokenization, inference or decode), which is ours or the model's. Only the second
counts against `output.max_error_rate`; input problems have their own optional limit.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

INPUT = "input"
STAGES = ("tokenization", "inference", "decode")
OTHER = "other"  # a message from nowhere above: counted as a failure, never as the data's
LOG_FIRST = 3  # failures of each stage logged with their traceback, per process
TOP = 10  # message groups in a report
SAMPLE_IDS = 3  # ids kept per message group
MAX_GROUPS = 1000  # distinct messages tracked; the rest are counted under one "(other messages)"

_NULL, _NOT_STR, _TOO_LONG, _NOT_UTF8 = (
    "text is null",
    "text must be a string",
    "text has ",
    "text is not valid UTF-8",
)
_logged: Counter[str] = Counter()


class InvalidUtf8(bytes):
    """A text cell whose bytes are not UTF-8: Arrow reads such a Parquet string column, and only
    converting it to Python fails. The row gets an error; its neighbours are annotated."""


def text_error(text: object, max_chars: int) -> str | None:
    """Why a value cannot be annotated, or None when it can."""
    if text is None:
        return _NULL
    if isinstance(text, InvalidUtf8):
        return f"{_NOT_UTF8} ({len(text)} bytes)"
    if not isinstance(text, str):
        return f"{_NOT_STR}, got {type(text).__name__}"
    if len(text) > max_chars:
        return f"{_TOO_LONG}{len(text)} characters, more than runtime.max_chars ({max_chars})"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate (a JSON "\ud800" escape): not text
            return f"{_NOT_UTF8}: it holds a lone surrogate at character {exc.start}"
    return None


def failed(stage: str, exc: BaseException) -> str:
    """The row's error for a failure in `stage`. The first few of each stage in this process go
    to its log with their traceback: the row only keeps one line, and a thousand identical
    tracebacks would bury the first."""
    message = f"{stage} failed: {type(exc).__name__}: {exc}"
    if _logged[stage] < LOG_FIRST:
        _logged[stage] += 1
        log.error(
            "a row's %s failed (%d of the first %d logged here)",
            stage,
            _logged[stage],
            LOG_FIRST,
            exc_info=exc,
        )
    return message


def kind_of(message: str) -> str:
    """`input`, the stage that failed, or `other`."""
    if message == _NULL or message.startswith((_NOT_STR, _TOO_LONG, _NOT_UTF8)):
        return INPUT
    stage = message.split(" failed: ", 1)[0] if " failed: " in message else ""
    return stage if stage in STAGES else OTHER


_NUMBER = re.compile(r"\d+")


def _key(message: str) -> str:
    """Messages that differ only in their numbers (a length, an index) are one group."""
    return _NUMBER.sub("#", message)[:300]


@dataclass
class _Group:
    message: str  # the first one seen
    kind: str
    count: int = 0
    sample_ids: list[Any] = field(default_factory=list)


@dataclass
class ErrorCounts:
    """A night's row errors, counted as its output is read; bounded whatever the corpus."""

    rows: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    groups: dict[str, _Group] = field(default_factory=dict)
    _overflow: _Group = field(default_factory=lambda: _Group("(other messages)", OTHER))

    def add(self, rows: int, errors: list[str | None], ids: list[Any] | None = None) -> None:
        self.rows += rows
        for i, message in enumerate(errors):
            if message is None:
                continue
            kind = kind_of(message)
            self.by_kind[kind] += 1
            key = _key(message)
            group = self.groups.get(key)
            if group is None:
                group = self._overflow
                if len(self.groups) < MAX_GROUPS:
                    group = self.groups[key] = _Group(message, kind)
            group.count += 1
            if ids is not None and len(group.sample_ids) < SAMPLE_IDS:
                sample = ids[i]  # as JSON holds it: the report is JSON, the id column any type
                group.sample_ids.append(sample if isinstance(sample, (str, int, float)) else str(sample))

    @property
    def input_errors(self) -> int:
        return self.by_kind[INPUT]

    @property
    def failed(self) -> int:
        """Rows whose processing failed (everything but input problems)."""
        return sum(n for kind, n in self.by_kind.items() if kind != INPUT)

    def rate(self, n: int) -> float:
        return n / self.rows if self.rows else 0.0

    def top(self, n: int = TOP, kinds: set[str] | None = None) -> list[dict[str, Any]]:
        groups = [g for g in (*self.groups.values(), self._overflow) if g.count]
        if kinds is not None:
            groups = [g for g in groups if g.kind in kinds]
        groups.sort(key=lambda g: -g.count)
        return [
            {"message": g.message, "kind": g.kind, "count": g.count, "sample_ids": g.sample_ids}
            for g in groups[:n]
        ]

    def as_report(self) -> dict[str, Any]:
        return {
            "errors": self.failed + self.input_errors,
            "failed_rows": self.failed,
            "input_errors": self.input_errors,
            "error_rate": round(self.rate(self.failed), 6),
            "input_error_rate": round(self.rate(self.input_errors), 6),
            "errors_by_kind": dict(sorted(self.by_kind.items())),
            "top_errors": self.top(),
        }


def listed(top: list[dict[str, Any]], n: int = 3) -> str:
    """`1990x 'inference failed: ...'; 10x 'decode failed: ...'`: the top groups, for one line."""
    return "; ".join(f"{g['count']}x {g['message'][:160]!r}" for g in top[:n])


class ErrorBudgetExceeded(RuntimeError):
    """A night whose rows failed more often than its limit allows: not published."""


def count_kinds(errors: list[str | None]) -> dict[str, int]:
    """{kind: rows} of one batch's errors (the online metrics)."""
    out: defaultdict[str, int] = defaultdict(int)
    for message in errors:
        if message is not None:
            out[kind_of(message)] += 1
    return dict(out)


def over_budget(counts: ErrorCounts, max_rate: float, max_input_rate: float | None) -> tuple[str, str] | None:
    """Why a night may not be published (one line) and the limit it broke, or None when its
    errors are within limits."""
    checks = [("failed", counts.failed, max_rate, "output.max_error_rate", set(STAGES) | {OTHER})]
    if max_input_rate is not None:
        checks.append(
            (
                "had input problems",
                counts.input_errors,
                max_input_rate,
                "output.max_input_error_rate",
                {INPUT},
            )
        )
    for what, n, limit, key, kinds in checks:
        if n and counts.rate(n) > limit:
            line = f"{n} of {counts.rows} rows ({counts.rate(n):.2%}) {what}, over {key} ({limit:.2%}): "
            return line + listed(counts.top(kinds=kinds)), key
    return None
