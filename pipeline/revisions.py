"""One night, one revision per model: the check every stage makes against the lineage.

The driver records each model's revision (lineage) before any work. A stage that loads a
model (an inference actor or Serve replica, or an encode/decode worker's tokenizer and label
map) after the source changed, or a Serve app redeployed mid-night, would label some rows
with another revision than the files' metadata names; the stage refuses instead.
"""

from __future__ import annotations


class ModelChanged(RuntimeError):
    """A model revision other than the one the night started with answered: its rows would
    carry another revision than the lineage names, so the night stops instead."""


def check_revisions(expected: dict[str, dict[str, str]], got: dict[str, str], where: str) -> None:
    """Refuse results from any revision but the night's (lineage: {model: {source, revision}})."""
    for name, want in expected.items():
        have = got.get(name)
        if want["revision"].startswith("hub:"):
            continue  # the driver names a hub branch, a worker the snapshot it got: not comparable
        if have is not None and have != want["revision"]:
            raise ModelChanged(
                f"{where}'s {name} model changed from {want['revision']} to {have} during the run "
                f"({want['source']}): nothing of this night is published. Rerun with --overwrite to "
                "label the whole night with the new revision, or pin the revision"
            )
