"""The server on a network, measured: a 10-minute soak with API keys on, and a kill -9 in the middle of a batch.

    python benchmarks/serve_soak.py --minutes 10                       # both parts, ~12 minutes
    python benchmarks/serve_soak.py --minutes 1 --skip-fault           # a quick look

1. Soak: `fewstep serve` (its own process, loopback, API keys, per-key rate limit far above the load) on the
   4-step student's bundle with two models (the same bundle under two names), driven for --minutes by
   --clients closed-loop clients (each sends its next request when the last is answered), alternating the
   models and the two keys. Per minute: images/s, p50/p99 latency, status codes, the server's RSS. Memory growth
   = RSS at the end minus RSS after the first minute (the warm-up: allocator arenas, compiled shapes).
2. Fault: 16 clients in flight, `kill -9` of the server while its engine runs a batch, then a restart on the same
   port. Every request must end as a 200 with a whole PNG or a transport error (nothing answered half), and the
   restarted server must answer every request; the seconds from restart to /readyz are recorded.

Writes benchmarks/results/runtime/serve_soak.json (and prints it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from runtime_serving import OUT, PROMPT, ensure_bundle

from fewstep.runtime.bench import machine

KEYS = {"alice": secrets.token_urlsafe(24), "bob": secrets.token_urlsafe(24)}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(bundle: Path, port: int, key_file: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "fewstep.cli", "serve", "--model", f"student={bundle}", "--model",
            f"student-b={bundle}", "--port", str(port), "--api-key-file", str(key_file), "--access-log", "off",
            *extra]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(url: str, timeout: float = 120) -> float:
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server at {url} not ready after {timeout} s")


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def whole_png(data: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:
        return False


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(1e3 * float(np.percentile(values, q)), 1) if values else None


def soak(bundle: Path, minutes: float, clients: int, key_file: Path) -> dict:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(bundle, port, key_file, ["--max-batch", "8", "--max-wait-ms", "5", "--max-queue", "64",
                                                   "--rate-limit", "100000", "--engine-cache",
                                                   str(key_file.parent / "ov-cache")])  # fmt: skip
    try:
        ready_s = wait_ready(url)
        records: list[tuple[float, int | str, float]] = []  # (finished at, status, seconds)
        lock = threading.Lock()
        start = time.perf_counter()
        end = start + 60 * minutes
        rss: list[tuple[float, float]] = [(0.0, rss_mb(server.pid))]

        def client(i: int) -> None:
            names = list(KEYS)
            with httpx.Client(base_url=url, timeout=60) as c:
                n = 0
                while time.perf_counter() < end:
                    key = KEYS[names[(i + n) % 2]]
                    body = {"prompt": PROMPT, "seed": i * 1_000_003 + n, "model": ("student", "student-b")[n % 2]}
                    t0 = time.perf_counter()
                    try:
                        status: int | str = c.post("/v1/generate", json=body,
                                                   headers={"Authorization": f"Bearer {key}"}).status_code  # fmt: skip
                    except httpx.HTTPError as e:
                        status = type(e).__name__
                    t1 = time.perf_counter()
                    with lock:
                        records.append((t1 - start, status, t1 - t0))
                    n += 1

        def watch() -> None:
            while time.perf_counter() < end:
                time.sleep(5)
                rss.append((time.perf_counter() - start, rss_mb(server.pid)))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        watcher.join()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS['alice']}"}) as c:
            metrics = c.get("/metrics").text
            engines = {m["id"]: m.get("engine") for m in c.get("/v1/models").json()["data"]}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    per_minute = []
    for m in range(int(np.ceil(minutes))):
        rows = [r for r in records if m * 60 <= r[0] < (m + 1) * 60]
        ok = [s for _, code, s in rows if code == 200]
        span = min(60.0, 60 * minutes - m * 60)
        at_end = [v for t, v in rss if t <= (m + 1) * 60]
        per_minute.append({"minute": m + 1, "images_per_s": round(len(ok) / span, 2), "p50_ms": percentile_ms(ok, 50),
                           "p99_ms": percentile_ms(ok, 99),
                           "status": {str(k): sum(1 for _, c, _ in rows if c == k) for k in {c for _, c, _ in rows}},
                           "rss_mb_end": round(at_end[-1], 1)})  # fmt: skip
    ok_all = [s for _, code, s in records if code == 200]
    after_warmup = next((v for t, v in rss if t >= 60), rss[-1][1])
    return {
        "minutes": minutes,
        "clients": clients,
        "engines": engines,  # per model: the default one picked by timing at start-up, the other by priority
        "ready_seconds": round(ready_s, 2),
        "requests": len(records),
        "status": {str(k): sum(1 for _, c, _ in records if c == k) for k in {c for _, c, _ in records}},
        "images_per_s": round(len(ok_all) / (60 * minutes), 2),
        "p50_ms": percentile_ms(ok_all, 50),
        "p99_ms": percentile_ms(ok_all, 99),
        "rss_mb_start": round(rss[0][1], 1),
        "rss_mb_after_first_minute": round(after_warmup, 1),
        "rss_mb_end": round(rss[-1][1], 1),
        "rss_growth_after_first_minute_mb": round(rss[-1][1] - after_warmup, 1),
        "rss_mb_max": round(max(v for _, v in rss), 1),
        "per_minute": per_minute,
        "rss_timeline": [(round(t, 1), round(v, 1)) for t, v in rss],
        "rejections_in_metrics": [ln for ln in metrics.splitlines() if ln.startswith("fewstep_rejections_total")],
    }


def fault(bundle: Path, key_file: Path, clients: int = 16) -> dict:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    flags = ["--max-batch", "4", "--max-wait-ms", "5", "--max-queue", "256"]  # every request accepted
    server = start_server(bundle, port, key_file, flags)
    wait_ready(url)
    auth = {"Authorization": f"Bearer {KEYS['alice']}"}
    outcomes: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            r = httpx.post(url + "/v1/generate", json={"prompt": PROMPT, "seed": i}, headers=auth, timeout=60)
            kind = f"{r.status_code} whole PNG" if r.status_code == 200 and whole_png(r.content) else \
                f"{r.status_code} {'half' if r.status_code == 200 else 'error body'}"  # fmt: skip
        except httpx.HTTPError as e:
            kind = f"transport error ({type(e).__name__})"
        with lock:
            outcomes.append(kind)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients * 8)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the engine is in the middle of the batches by now
    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=30)
    for t in threads:
        t.join(timeout=120)
    t0 = time.perf_counter()
    restarted = start_server(bundle, port, key_file, flags)
    try:
        wait_ready(url)
        ready_s = time.perf_counter() - t0  # process start -> ready, engines loaded
        after = []
        for i in range(clients):
            r = httpx.post(url + "/v1/generate", json={"prompt": PROMPT, "seed": 10_000 + i}, headers=auth, timeout=60)
            after.append(r.status_code == 200 and whole_png(r.content))
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=60)
    counts = {k: outcomes.count(k) for k in sorted(set(outcomes))}
    return {"requests_in_flight_at_kill": len(outcomes), "outcomes": counts,
            "answered_half": sum(v for k, v in counts.items() if "half" in k),
            "restart_to_ready_seconds": round(ready_s, 2),
            "after_restart_whole_pngs": f"{sum(after)}/{len(after)}"}  # fmt: skip


def plot(soak: dict, path: Path) -> None:
    """Throughput and latency per minute, and the server's memory over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [m["minute"] for m in soak["per_minute"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(minutes, [m["images_per_s"] for m in soak["per_minute"]], "o-", label="images/s")
    a.set_xlabel("minute")
    a.set_ylabel("images/s")
    twin = a.twinx()
    twin.plot(minutes, [m["p50_ms"] for m in soak["per_minute"]], "s--", color="tab:orange", label="p50 ms")
    twin.plot(minutes, [m["p99_ms"] for m in soak["per_minute"]], "^--", color="tab:red", label="p99 ms")
    twin.set_ylabel("latency (ms)")
    a.set_ylim(0, 1.6 * max(m["images_per_s"] for m in soak["per_minute"]))  # from zero: no exaggerated wiggles
    twin.set_ylim(0, 1.6 * max(m["p99_ms"] for m in soak["per_minute"]))
    a.legend(loc="upper left")
    twin.legend(loc="upper right", ncol=2)
    a.set_title(f"{soak['clients']} closed-loop clients, API keys on")
    t, rss = zip(*soak["rss_timeline"], strict=True)
    b.plot([x / 60 for x in t], rss)
    b.set_ylim(0, 1.2 * max(rss))
    b.set_xlabel("minute")
    b.set_ylabel("server RSS (MB)")
    b.set_title(f"memory: +{soak['rss_growth_after_first_minute_mb']} MB after the first minute")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", default="runs/bench-runtime")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--skip-fault", action="store_true")
    args = parser.parse_args()
    bundle = ensure_bundle("shapes32-progressive-4step", Path(args.bundles))
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "keys.txt"
        key_file.write_text("".join(f"{name}:{key}\n" for name, key in KEYS.items()))
        result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
                  "command": "python benchmarks/serve_soak.py " + " ".join(sys.argv[1:]), "bundle": str(bundle),
                  "soak": soak(bundle, args.minutes, args.clients, key_file)}  # fmt: skip
        if not args.skip_fault:
            result["fault"] = fault(bundle, key_file)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve_soak.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result["soak"], OUT / "serve_soak.png")
    print(
        json.dumps(
            {k: v for k, v in result.items() if k != "soak"}
            | {"soak": {k: v for k, v in result["soak"].items() if k not in ("rss_timeline", "per_minute")}},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
