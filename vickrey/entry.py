"""The `vickrey` command's entry point (`vickrey`, `python -m vickrey`).

A process can be told to stop (SIGTERM) while it is still importing, before any role has
installed its own handler: a supervisor or a test that starts a worker and stops it again
at once. Nothing has started then, so nothing is left to commit: it ends with status 0
instead of dying by the signal. Once the command runs, SIGTERM is the command's (a role
drains and commits; a management command stops by the default action).

The handler only notes the request; the import finishes and then the command exits. Raising
from the handler would land at an arbitrary point of an import: the interpreter wraps it
(inside a dataclass's __set_name__ it became a RuntimeError in CI) and an extension module
half-initialised by it can crash the process.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

_stop_requested: list[int] = []


def _stopped_while_importing(signum: int, frame: FrameType | None) -> None:
    _stop_requested.append(signum)


def main() -> int:
    previous = signal.signal(signal.SIGTERM, _stopped_while_importing)
    try:
        from vickrey.cli import main as run  # noqa: PLC0415 -- the import is what this guards
    finally:
        signal.signal(signal.SIGTERM, previous)
    if _stop_requested:
        return 0
    return run()


if __name__ == "__main__":
    sys.exit(main())
