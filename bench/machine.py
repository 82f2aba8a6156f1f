"""What every `recpilot bench ...` program prints about the machine it ran on."""

from __future__ import annotations

import os
import platform

from recpilot.stack.process import stat_cpu


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info() -> dict:
    """Cores this process may use, CPU model, OS, Python, load average (1/5/15 min)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"cores": cores, "cpu": cpu_model(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "load_average": [round(x, 2) for x in load]}


def machine(m: dict | None = None) -> str:
    """One line of :func:`machine_info` (now, or the reading ``m`` taken earlier)."""
    m = m or machine_info()
    la = " ".join(f"{x:.2f}" for x in m["load_average"])
    return f"{m['cores']} cores, {m['cpu']}, {m['os']}, Python {m['python']}, load average {la}"


def cpu_probe(iterations: int = 5_000_000) -> float:
    """Seconds a fixed pure-Python loop takes now (best of 3): a reference for how fast this
    (possibly shared, virtual) machine runs Python at the moment. Benchmarks print it at the start
    and end so that runs on a momentarily slower box can be told apart from slower code."""
    import time

    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        x = 0
        for i in range(iterations):
            x += i
        best = min(best, time.perf_counter() - t0)
    return best


def thread_cpu(pid: int) -> dict[str, float]:
    """user+system CPU seconds so far of process ``pid``'s threads, summed by thread name (the
    OS-level name: ``/proc/<pid>/task/<tid>/comm``); empty when the process is gone."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                name = fh.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        cpu = stat_cpu(f"/proc/{pid}/task/{tid}/stat")
        if cpu is not None:
            out[name] = out.get(name, 0.0) + cpu
    return out


def busy_cores(before: dict[str, float], after: dict[str, float], seconds: float, top: int = 6) -> str:
    """``name 0.71, name 0.28, ...``: cores each thread name kept busy between two
    :func:`thread_cpu` readings ``seconds`` apart, busiest first."""
    diff = {k: (v - before.get(k, 0.0)) / seconds for k, v in after.items()}
    busiest = sorted(((v, k) for k, v in diff.items() if v >= 0.01), reverse=True)[:top]
    return ", ".join(f"{k} {v:.2f}" for v, k in busiest) or "none"
