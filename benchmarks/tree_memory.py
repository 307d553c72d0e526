"""Peak memory of a command's whole process tree, not only of its largest process: every 0.2 s
the largest VmRSS of one process in the tree (what `ru_maxrss` and bench_export_genai.py's
peak report), the tree's summed RSS (pages shared by forked processes counted in each) and
its summed PSS (shared pages divided among their sharers: the tree's own memory).

Usage: python benchmarks/tree_memory.py COMMAND [ARGS...]
Prints each maximum in MiB with the second it was reached, and the command's exit status.
"""

from __future__ import annotations

import subprocess
import sys
import time

from rss_sampler import process_tree  # its sibling: run as a script, its folder is on the path


def rss_pss_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def main(argv: list[str]) -> int:
    t0 = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    best = {"largest process": (0, 0.0), "summed RSS": (0, 0.0), "summed PSS": (0, 0.0)}
    while proc.poll() is None:
        values = [rss_pss_kib(p) for p in process_tree(proc.pid)]
        now = {"largest process": max((r for r, _ in values), default=0),
               "summed RSS": sum(r for r, _ in values),
               "summed PSS": sum(p for _, p in values)}
        for key, kib in now.items():
            if kib > best[key][0]:
                best[key] = (kib, time.time() - t0)
        time.sleep(0.2)
    for key, (kib, at) in best.items():
        print(f"{key:16s} {kib // 1024:6d} MiB at {at:5.1f} s")
    print(f"exit status {proc.returncode}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
