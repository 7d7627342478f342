"""Memory readings for the benchmark jobs (Linux /proc): private resident memory (RssAnon).

Shared object-store pages are left out: each process that touches one counts it again in VmRSS,
which would measure how many store pages a long run has visited, not memory in use.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


def processes() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, command line, RssAnon bytes) of every readable process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/status") as f:
                rss = int(f.read().split("RssAnon:")[1].split()[0]) * 1024
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry)] = (parent, cmdline, rss)
    return found


def tree_rss(root: int) -> int:
    """Summed RssAnon of ``root`` and every process below it."""
    table = processes()
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, (parent, _, _) in table.items() if parent == pid and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(table[p][2] for p in tree if p in table)


def largest_rss(marker: str) -> int:
    """RssAnon of the largest process whose command line contains ``marker``."""
    return max((rss for _, cmd, rss in processes().values() if marker in cmd), default=0)


class PeakSampler:
    """Samples ``measure()`` every 0.2 s in a thread while the block runs; keeps the peak."""

    def __init__(self, measure: Callable[[], int]) -> None:
        self.measure = measure
        self.peak = 0

    def __enter__(self) -> PeakSampler:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.measure())
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
