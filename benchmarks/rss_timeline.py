"""Run a command and print each of its output lines with the time since start and the resident memory of its
process tree at that moment; the peak and where it happened at the end. Finds which stage of a long command
(an export, a bench) holds the memory, which a single peak figure from `/usr/bin/time -v` cannot say.

    python benchmarks/rss_timeline.py -- fewstep export RUN --out BUNDLE --to onnx,openvino
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def main() -> None:
    cmd = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    if not cmd:
        sys.exit(__doc__)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # a Python child prints each line as it happens
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
    peak = {"rss": 0, "at": 0.0, "after": "(start)"}
    last = ["(start)"]

    def sample() -> None:
        while proc.poll() is None:
            rss = tree_rss(proc.pid)
            if rss > peak["rss"]:
                peak.update(rss=rss, at=time.perf_counter() - t0, after=last[0])
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    assert proc.stdout is not None
    for line in proc.stdout:
        last[0] = line.rstrip()[:160]
        print(f"[{time.perf_counter() - t0:7.1f} s {tree_rss(proc.pid) / 1e9:5.1f} GB] {line.rstrip()}", flush=True)
    rc = proc.wait()
    print(f"peak {peak['rss'] / 1e9:.2f} GB at {peak['at']:.0f} s, after the line: {peak['after']}")
    print(f"exit {rc} after {time.perf_counter() - t0:.0f} s")
    sys.exit(rc)


if __name__ == "__main__":
    main()
