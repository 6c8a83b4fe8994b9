"""Where the time of concurrent one-shot requests goes: queue slots, torch threads per request, the model lock.

Usage: nice python benchmarks/benchmark_concurrency.py [--requests 8] [--configs studio:2:2 model:2:2 ...]

A config is LOCK:SLOTS:THREADS. LOCK is what a segmentation holds: `studio` (the one studio-wide lock, as before
issue 15: viewers wait too), `model` (a lock of its own: one segmentation at a time) or `parallelN` (N segmentations
at once on the shared, read-only model: what N model copies would give, without the memory). The studio's
handlers run in-process on the demo case (no browser, no HTTP): a pool of SLOTS threads plays Gradio's queue
slots for the Run button and serves `requests` one-shot segmentations submitted at once, each from its own
session (the 20-client load test); torch runs THREADS intra-op threads per segmentation. Meanwhile a viewer
in another session scrolls the case (one slice render every 0.2 s) and a second user submits one request just
after the burst. Per configuration it prints where a request's time goes (queue wait, wait for the model, model,
storing the result, render) as medians, the p50/p95 latency, the wall time, the viewer's render latency and the
second user's latency. Results are appended to benchmarks/concurrency.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import handlers as h  # noqa: E402
from app.config import SHIPPED_WEIGHTS, AppConfig  # noqa: E402
from app.services import Services, build_services  # noqa: E402

SUPPORT = "annotation:1"  # the demo case's grey-matter support
VIEW_PERIOD_S = 0.2


@dataclass
class Timing:
    """Phases of one request, in seconds from its submission."""

    submitted: float
    started: float = 0.0
    model_start: float = 0.0
    model_end: float = 0.0
    handler_end: float = 0.0
    done: float = 0.0

    def phases(self) -> dict[str, float]:
        return {"queue": self.started - self.submitted, "wait_model": self.model_start - self.started,
                "model": self.model_end - self.model_start, "store": self.handler_end - self.model_end,
                "render": self.done - self.handler_end, "total": self.done - self.submitted}


@dataclass
class Probe:
    """Marks when the segmenter starts and ends work for the request running on the current thread."""

    local: threading.local = field(default_factory=threading.local)

    def install(self, services: Services) -> None:
        segmenter = services.segmenter
        segment = segmenter.segment

        def timed(*args: object, **kwargs: object) -> object:
            timing = getattr(self.local, "timing", None) or Timing(0.0)  # warm-up calls are not recorded
            timing.model_start = time.perf_counter()
            try:
                return segment(*args, **kwargs)
            finally:
                timing.model_end = time.perf_counter()

        segmenter.segment = timed  # type: ignore[method-assign]


def opened_session(services: Services, case_id: int) -> h.Session:
    session = h.Session()
    h.open_case(services, session, case_id)
    h.add_stored_support(services, session, SUPPORT)
    return session


def one_request(services: Services, probe: Probe, session: h.Session, timing: Timing) -> Timing:
    """What the Run button does: segment, then the result rows and the viewer image."""
    timing.started = time.perf_counter()
    probe.local.timing = timing
    h.run_segmentation(services, session, "One-shot")
    timing.handler_end = time.perf_counter()
    h.result_rows(services, session)
    h.render_slice(services, session, "axial", 45, "MR / auto", 0.5)
    timing.done = time.perf_counter()
    return timing


def viewer(services: Services, case_id: int, stop: threading.Event, latencies: list[float]) -> None:
    """Another user scrolling through the case while the burst runs."""
    session = h.Session()
    h.open_case(services, session, case_id)
    index = 0
    while not stop.is_set():
        start = time.perf_counter()
        h.render_slice(services, session, "axial", index % 80, "MR / auto", 0.5)
        latencies.append(time.perf_counter() - start)
        index += 1
        stop.wait(VIEW_PERIOD_S)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def model_lock(services: Services, kind: str) -> object:
    """The lock a segmentation holds in this config."""
    if kind == "studio":
        return services.lock
    if kind == "model":
        return threading.Lock()
    if kind.startswith("parallel"):
        return threading.Semaphore(int(kind.removeprefix("parallel")))
    raise SystemExit(f"unknown lock kind {kind!r} (studio, model, parallelN)")


def run_config(services: Services, probe: Probe, case_id: int, requests: int, lock: str, workers: int,
               threads: int) -> dict[str, float]:
    """One burst of `requests` plus a late request from another user, with a viewer scrolling meanwhile."""
    torch.set_num_threads(threads)
    services.model_lock = model_lock(services, lock)  # type: ignore[assignment]
    sessions = [opened_session(services, case_id) for _ in range(requests + 1)]
    h.run_segmentation(services, sessions[0], "One-shot")  # warm-up: embedding cached, first-call costs paid
    stop, views = threading.Event(), []
    watcher = threading.Thread(target=viewer, args=(services, case_id, stop, views))
    watcher.start()
    wall = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures: list[Future[Timing]] = [
            pool.submit(one_request, services, probe, s, Timing(time.perf_counter())) for s in sessions[1:requests]]
        time.sleep(0.05)
        late: Future[Timing] = pool.submit(one_request, services, probe, sessions[requests],
                                           Timing(time.perf_counter()))
        timings = [f.result() for f in futures]
        late_timing = late.result()
    wall = time.perf_counter() - wall
    stop.set()
    watcher.join()
    everything = [*timings, late_timing]
    totals = [t.phases()["total"] for t in everything]
    row = {f"{name}_median": statistics.median(t.phases()[name] for t in everything)
           for name in ("queue", "wait_model", "model", "store", "render")}
    row |= {"p50": statistics.median(totals), "p95": percentile(totals, 95), "wall": wall,
            "late_user": late_timing.phases()["total"], "view_p50": statistics.median(views) if views else 0.0,
            "view_p95": percentile(views, 95) if views else 0.0}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8, help="requests in the burst, the late user's included")
    parser.add_argument("--configs", nargs="+", default=["studio:2:2", "model:2:2", "model:1:2", "parallel2:2:1"],
                        help="LOCK:SLOTS:THREADS (see above)")
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS if SHIPPED_WEIGHTS.is_file() else None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "concurrency.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        services = build_services(AppConfig(data_dir=Path(tmp) / "data", weights=args.weights))
        try:
            case_id = services.storage.cases.list()[0].id
            probe = Probe()
            probe.install(services)
            rows = []
            for config in args.configs:
                lock, workers, threads = config.split(":")
                row = run_config(services, probe, case_id, args.requests, lock, int(workers), int(threads))
                rows.append((lock, workers, threads, row))
                print(f"{config}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
        finally:
            services.close()
    header = ("| lock | Run slots | torch threads | queue | wait for model | model | store | render | p50 s | p95 s "
              "| wall s | late user s | viewer p50 s | viewer p95 s |\n|" + "---|" * 14 + "\n")
    lines = [f"| {lock} | {w} | {t} | {r['queue_median']:.2f} | {r['wait_model_median']:.2f} | "
             f"{r['model_median']:.2f} | {r['store_median']:.2f} | {r['render_median']:.2f} | {r['p50']:.2f} | "
             f"{r['p95']:.2f} | {r['wall']:.1f} | {r['late_user']:.2f} | {r['view_p50']:.3f} | {r['view_p95']:.3f} |"
             for lock, w, t, r in rows]
    load = os.getloadavg()[0]
    intro = (f"\n{args.requests} one-shot requests on the demo case, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, load average {load:.1f} at the end, torch {torch.__version__}, "
             f"weights {args.weights.name if args.weights else 'untrained'}; phases are medians over requests\n\n")
    new_file = not args.out.exists()
    with args.out.open("a") as out:
        if new_file:
            out.write("# Concurrent one-shot requests (benchmarks/benchmark_concurrency.py)\n")
        out.write(intro + header + "\n".join(lines) + "\n")
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
