"""Start-up phases are measured from the command's start, even when a shell exec'ed it."""

from __future__ import annotations

import time

import pipeline
from pipeline import startup


def test_phases_count_from_the_process_start_or_from_the_import_when_a_shell_execed_it(monkeypatch):
    started = startup.process_started_at()
    assert 0 <= time.time() - started < 24 * 3600, "this process started when /proc says"
    monkeypatch.setattr(pipeline, "IMPORTED_AT", started + 0.5)
    assert startup.command_started_at() == started, "imported soon after the start: the process's start"
    monkeypatch.setattr(pipeline, "IMPORTED_AT", started + 120)
    assert startup.command_started_at() == started + 120, "a long-lived shell's process: the import"
    phases = startup.Phases()
    phases.mark("b", phases.t0 + 2)
    phases.mark("a", phases.t0 + 1)
    assert phases.report() == {"a": 1.0, "b": 2.0}
