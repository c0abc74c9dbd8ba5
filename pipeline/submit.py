"""Submit the nightly job to a Ray cluster through the Job Submission API, wait, and report.

The same entrypoint a scheduler would give `ray job submit`; the project directory is
shipped as the job's working_dir (files ignored by .gitignore stay behind).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
EXCLUDES = [".git", ".venv", "models", "out", "**/__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"]


def entrypoint(config: str, date: str | None, overrides: list[str], overwrite: bool) -> str:
    args = ["python", "jobs/nightly_label.py", "--config", config]
    if date:
        args += ["--date", date]
    for item in overrides:
        args += ["--set", item]
    if overwrite:
        args.append("--overwrite")
    return " ".join(shlex.quote(a) for a in args)


def submit(
    address: str,
    config: str,
    *,
    date: str | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    working_dir: str = ".",
    wait: bool = True,
    timeout_s: float = 24 * 3600,
    echo: Callable[[str], None] = print,
) -> tuple[str, str]:
    """Submit; with wait, stream the job's logs and return (job id, final status)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    rel_config = Path(config)
    if rel_config.is_absolute() and rel_config.is_relative_to(Path(working_dir).resolve()):
        rel_config = rel_config.relative_to(Path(working_dir).resolve())
    # an absolute path outside the working dir must exist on the cluster as-is
    job_id = client.submit_job(
        entrypoint=entrypoint(str(rel_config), date, overrides or [], overwrite),
        runtime_env={"working_dir": working_dir, "excludes": EXCLUDES},
        metadata={"job": "bert-pipeline-nightly", "date": date or ""},
    )
    echo(f"submitted {job_id} to {address}")
    if not wait:
        return job_id, "PENDING"
    deadline = time.time() + timeout_s
    shown = 0
    while True:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            echo(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status in TERMINAL:
            break
        if time.time() > deadline:
            client.stop_job(job_id)
            status = "STOPPED"
            break
        time.sleep(2)
    echo(f"job {job_id}: {status}")
    return job_id, status
