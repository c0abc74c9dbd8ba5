"""Keeping Ray's known, harmless notices off an operator's terminal.

Ray's C++ core worker writes some notices straight to the process's stderr, where no Python
logging setting reaches them. One comes with every Ray Data actor pool: "Actor ... has
constructor arguments in the object store and max_restarts > 0" (Ray Data passes its context
by reference and asks for restarts, which a night needs to survive a lost node; ray-project/ray
issues 53727 and 57733). It is logged at ERROR and reads like a crash.

`filter_stderr` routes fd 2 through a small child process that drops such lines and passes
every other byte on. A child, not a thread: if this process dies hard (a C++ abort, SIGKILL),
the child still drains what was written, so a crash report is never lost. It ignores SIGINT and
SIGTERM (a terminal's Ctrl-C reaches the whole process group) and ends when the last writer
closes the pipe. At exit this process waits until the child has written everything before it.
"""

from __future__ import annotations

import atexit
import os
import secrets
import select
import subprocess
import sys

_installed = False  # once per process: a second filter would only chain onto the first

NOISE = ("has constructor arguments in the object store and max_restarts > 0",)

_CHILD = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
ack, marker = int(sys.argv[1]), sys.argv[2].encode() + b"\n"
noise = [n.encode() for n in sys.argv[3:]]
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if line == marker:
        try:
            os.write(ack, b"1")
        except OSError:
            pass
        continue
    if not any(n in line for n in noise):
        try:
            out.write(line)
            out.flush()
        except OSError:
            pass
"""


def filter_stderr(noise: tuple[str, ...] = NOISE, drain_timeout_s: float = 5.0) -> bool:
    """Drop lines holding any of `noise` from this process's fd 2 (and its children's) from now
    on. Returns False where it cannot (no fd 2, not POSIX) and changes nothing then."""
    global _installed
    if os.name != "posix" or _installed:
        return False
    try:
        os.fstat(2)
    except OSError:
        return False
    read_end, write_end = os.pipe()
    ack_read, ack_write = os.pipe()
    marker = f"bert-pipeline-drained-{secrets.token_hex(8)}"  # a line no one else writes
    try:
        subprocess.Popen(
            [sys.executable, "-S", "-c", _CHILD, str(ack_write), marker, *noise],
            stdin=read_end,
            stdout=2,
            pass_fds=(ack_write,),
            close_fds=True,
        )
    except OSError:
        for fd in (read_end, write_end, ack_read, ack_write):
            os.close(fd)
        return False
    os.close(read_end)
    os.close(ack_write)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def drain() -> None:
        """Everything written before this point is on the terminal when the command returns."""
        try:
            sys.stderr.flush()
            os.write(2, marker.encode() + b"\n")
            ready, _, _ = select.select([ack_read], [], [], drain_timeout_s)
            if ready:
                os.read(ack_read, 1)
        except (OSError, ValueError):
            pass

    atexit.register(drain)
    _installed = True
    return True
