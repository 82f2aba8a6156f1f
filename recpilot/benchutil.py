"""What every `recpilot bench ...` program prints about the machine it ran on."""

from __future__ import annotations

import os
import platform


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


def machine() -> str:
    m = machine_info()
    la = " ".join(f"{x:.2f}" for x in m["load_average"])
    return f"{m['cores']} cores, {m['cpu']}, {m['os']}, Python {m['python']}, load average {la}"
