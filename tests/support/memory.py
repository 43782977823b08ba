"""Memory of a process tree as Linux accounts it: RSS, and PSS, which splits each page shared by
several processes (forked workers, a memory-mapped weights file) between them, so the sum over a
server's processes is what the server really holds."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def process_tree(root: int) -> list[int]:
    """`root` and every descendant process (from /proc)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(kids.get(pid, []))
    return out


def memory_kb(pids: list[int]) -> tuple[int, int]:
    """Summed RSS and PSS (kB) of `pids`."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss, pss
