"""Work that goes to whichever local worker process is free, each piece exactly once.

Beam's multi-process local runner cuts a stage's input into one part per worker before any of them starts,
whatever each element costs. But this machine's cores change speed from minute to minute (one worker took
~0.6 s per read task while the other took ~0.37 s for tasks of the same size) and the cost of writing a
series is not its bytes alone, so the first worker done waited for the other, seconds per stage.

A `WorkPool` is a local folder where a worker claims a piece of work by creating a file named after it:
creating a file that must not exist yet is atomic, so exactly one claimer gets each piece. The worker that
claims a piece does it and emits its output; the others skip it. Every piece is claimed: each worker goes
through the whole list, and no worker stops before the list is done. That is exactly-once only where every
bundle runs once and a failed bundle fails the run: the local runner's case (Beam's FnApiRunner retries
nothing), unless --direct_runner_bundle_repeat replays bundles (it runs each first as a dry run whose output
is dropped, which would claim the work). So only multi-process local runs with a local spill folder and no
replays use a pool, and a failed run removes the folder with the spill. Finalize checks the counts either
way: every read task reports once, and every record read is accounted for once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator


def pool_folder(spill: str, stage: str, workers: int, bundle_repeat: int = 0) -> str | None:
    """The pool of a stage of a multi-process local run whose spill folder is local and whose bundles run
    once (`bundle_repeat`: --direct_runner_bundle_repeat); None otherwise."""
    from transforms import storage

    if workers < 2 or bundle_repeat or storage.is_gcs(spill):
        return None
    return os.path.join(spill, f"pool-{stage}")


class WorkPool:
    """Claims of work pieces (named by strings that are valid file names) in a local folder."""

    def __init__(self, folder: str):
        self._folder = folder
        self._next = 0  # `take`: every piece before it is claimed (by this worker or another)
        os.makedirs(folder, exist_ok=True)

    def claim(self, name: str) -> bool:
        """Whether this caller got the piece `name`: True for exactly one caller across all processes."""
        try:
            fd = os.open(os.path.join(self._folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return False
        os.close(fd)
        return True

    def take(self, count: int) -> Iterator[int]:
        """Claim pieces 0..count-1 in order, yielding each this caller got, until none is left. Pieces are
        claimed one at a time, when the caller asks for the next: a busy worker leaves the rest to others."""
        while self._next < count:
            i = self._next
            self._next += 1
            if self.claim(f"{i:08d}"):
                yield i
