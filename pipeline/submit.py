"""Submit the nightly job to a Ray cluster through the Job Submission API, wait, and report.

The same entrypoint a scheduler would give `ray job submit`; the project directory is
shipped as the job's working_dir (files ignored by .gitignore stay behind).
"""

from __future__ import annotations

import shlex
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# The Jobs API answers 500 "No available agent to submit job, please try again later" while no
# node's dashboard agent can take a job: a head just started, or a node with the chosen agent
# lost (seen in CI right after another test's worker nodes went away). No job was created, and
# the fixed submission id would refuse a duplicate, so the submission is tried again.
NO_AGENT = "No available agent to submit job"
AGENT_RETRIES = 10
AGENT_WAIT_S = 3.0
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
    submit_once = partial(  # the same submission on every attempt, under one id: never two jobs
        client.submit_job,
        entrypoint=entrypoint(str(rel_config), date, overrides or [], overwrite),
        runtime_env={"working_dir": working_dir, "excludes": EXCLUDES},
        metadata={"job": "bert-pipeline-nightly", "date": date or ""},
        submission_id=f"bert-pipeline-{date or 'yesterday'}-{uuid.uuid4().hex[:8]}",
    )
    for attempt in range(1, AGENT_RETRIES + 1):
        try:
            job_id = submit_once()
            break
        except RuntimeError as exc:
            if NO_AGENT not in str(exc) or attempt == AGENT_RETRIES:
                raise
            echo(
                f"the cluster has no job agent ready ({attempt}/{AGENT_RETRIES}); retrying in {AGENT_WAIT_S:g} s"
            )
            time.sleep(AGENT_WAIT_S)
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
