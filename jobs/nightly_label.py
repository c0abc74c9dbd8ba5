"""Ray Job entrypoint for the nightly labeling run.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/nightly_label.py --config jobs/nightly.yaml --date 2026-11-28

Runs as the job's driver on the head node; `ray.init()` joins the cluster the job runs on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The job's working_dir is the project root; make the package importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli import main  # noqa: E402


def parse(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--date")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    out = ["run", a.config, "--show", "0"]
    if a.date:
        out += ["--date", a.date]
    for item in a.set:
        out += ["--set", item]
    if a.overwrite:
        out.append("--overwrite")
    return out


if __name__ == "__main__":
    sys.exit(main(parse(), own_process=True))  # `ray job stop` sends SIGTERM: stop as on Ctrl-C
