"""The native load generator (``loadgen.cc``): build on demand, run, parse.

A Python grpc.aio client spends CPU per call that, on a 2-core box, the server it measures does not
get. ``loadgen`` (C++, libgrpc++, generic calls of pre-serialised requests) spends far less, as
Triton's perf_analyzer or ghz would (both measured by `recpilot bench grpc-floor`; docs/benchmarks.md). It needs g++ and Debian's ``libgrpc++-dev``,
installed on first use when running as root (else the error says how).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("loadgen.cc")
PACKAGES = ["g++", "pkg-config", "libgrpc++-dev"]
INSTALL_HINT = "apt-get update && apt-get install -y " + " ".join(PACKAGES)


class NativeUnavailable(RuntimeError):
    """The native load generator cannot be built here (message says what is missing)."""


def _cache_dir() -> Path:
    from recpilot.paths import CACHE_DIR

    return CACHE_DIR / "native"


def _grpc_flags() -> list[str] | None:
    if shutil.which("g++") is None or shutil.which("pkg-config") is None:
        return None
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], capture_output=True, text=True)
    return flags.stdout.split() if flags.returncode == 0 else None


def binary() -> Path:
    """Path of the compiled generator, built once per version of ``loadgen.cc``. When g++ or
    libgrpc++ is missing it is installed from Debian when running as root (as the stack does for
    redis-server); otherwise :class:`NativeUnavailable` says how."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    out = _cache_dir() / f"loadgen-{digest}"
    if out.exists():
        return out
    flags = _grpc_flags()
    if flags is None:
        from recpilot.stack.apt import apt_install
        from recpilot.stack.process import StackError

        print(f"native load generator: installing {' '.join(PACKAGES)} from Debian (first use)", file=sys.stderr,
              flush=True)
        try:
            apt_install(PACKAGES, "g++ / libgrpc++ (for the native load generator)")
        except StackError as exc:
            raise NativeUnavailable(str(exc)) from None
        flags = _grpc_flags()
        if flags is None:
            raise NativeUnavailable(f"apt-get ran but g++ or libgrpc++ is still missing; try: {INSTALL_HINT}")
    print(f"native load generator: building {out.name} from {SOURCE.name} (first use, a few seconds)", file=sys.stderr,
          flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    cc = subprocess.run(["g++", "-O2", "-std=c++17", str(SOURCE), "-o", str(tmp), *flags],
                        capture_output=True, text=True)
    if cc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise NativeUnavailable("building loadgen failed:\n" + cc.stderr[-4000:])
    tmp.replace(out)
    for old in out.parent.glob("loadgen-*"):  # builds of earlier versions of loadgen.cc
        if old != out and not old.name.endswith(".tmp"):
            old.unlink(missing_ok=True)
    return out


def write_requests(path: Path, messages) -> None:
    """The request file loadgen reads: each message as a 4-byte little-endian length + its bytes."""
    with open(path, "wb") as f:
        for m in messages:
            b = m.SerializeToString()
            f.write(struct.pack("<I", len(b)) + b)


def closed_loop(port: int, method: str, messages, concurrency: int, seconds: float, connections: int = 8,
                warmup: float = 1.0, timeout_ms: int = 5000, host: str = "127.0.0.1") -> dict:
    """Run loadgen against ``host:port`` calling ``method`` ("/pkg.Service/Method") with ``messages``
    in turn; returns its JSON result (requests, errors, error_kinds, rps, p50/p99/p999_ms,
    client_cpu_ms_per_request, ...). ``warmup`` seconds of load before the measured window."""
    exe = binary()
    with tempfile.TemporaryDirectory(prefix="recpilot-loadgen-") as tmp:
        reqs = Path(tmp) / "requests.bin"
        write_requests(reqs, messages)
        cmd = [str(exe), "--target", f"{host}:{port}", "--method", method, "--requests", str(reqs),
               "--concurrency", str(concurrency), "--connections", str(connections), "--seconds", str(seconds),
               "--warmup", str(warmup), "--timeout-ms", str(timeout_ms)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + timeout_ms / 1000 + 60)
    if p.returncode != 0:
        raise RuntimeError(f"loadgen exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout)
