"""Small timing helpers shared by the benchmark and its subprocess."""

from __future__ import annotations

import os
import statistics
import threading
import time

import psutil


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def loads() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def step_durations(instance, run_id: str) -> dict[str, float]:
    """Seconds from STEP_START to STEP_SUCCESS/FAILURE of every step of a run, from its event log."""
    from dagster import DagsterEventType

    starts, durations = {}, {}
    kinds = {DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}
    for entry in instance.all_logs(run_id, of_type=kinds):
        event = entry.dagster_event
        if event.event_type == DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.step_key in starts:
            durations[event.step_key] = round(entry.timestamp - starts[event.step_key], 3)
    return durations


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


class TreeRssSampler:
    """Samples the memory of a process and all its descendants every `interval` seconds.

    Two sums per sample: RSS, and PSS (each shared page split among the processes sharing it). The
    RSS sum counts shared pages once per process: a fork before exec briefly shows the parent's whole
    RSS twice, so a 240 MB run can sample at 490 MB. PSS counts every page once; it is the tree's
    real footprint, and the figure the benchmark's memory target uses.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.peak_bytes = 0  # summed RSS
        self.peak_pss_bytes = 0  # summed PSS
        self.peak_single_rss_bytes = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            rss_total, pss_total, count = 0, 0, 0
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for process in processes:
                try:
                    rss = process.memory_info().rss
                    pss = _pss_bytes(process.pid)
                except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                    continue
                rss_total += rss
                pss_total += pss if pss is not None else rss
                self.peak_single_rss_bytes = max(self.peak_single_rss_bytes, rss)
                count += 1
            self.samples += 1
            if rss_total > self.peak_bytes:
                self.peak_bytes, self.peak_processes = rss_total, count
            self.peak_pss_bytes = max(self.peak_pss_bytes, pss_total)
            time.sleep(self.interval)


def _pss_bytes(pid: int) -> int | None:
    """PSS from /proc/PID/smaps_rollup (Linux 4.14+); None where the kernel does not have it."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        return None
    return None
