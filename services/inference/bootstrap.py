"""First run: when the deployment state has no production version of the default model, make
the server able to turn SERVING with no manual step.

Once the deployment follower has replayed the state and the default model still has no
production version, the replica runs ``python -m recpilot.models.bootstrap`` as a child process
(same environment, its log lines into this process's output): it deploys the newest version in
the repository, or trains, registers and deploys a small first ranker when the repository is
empty. The replayed state includes the repository's deployment snapshot when the control topic
was lost, so a lost topic keeps the snapshot's production version instead of bootstrapping. The
serving process itself never imports the training code. Off with
``RECPILOT_INFERENCE_BOOTSTRAP=false``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

MODULE = "recpilot.models.bootstrap"


class Bootstrap:
    """``start()``: a thread that waits for the replayed state and runs the child when needed;
    ``stop()``: end the child if it still runs. ``wait_s`` bounds both the replay wait and the
    child."""

    def __init__(self, settings, platform, sync, wait_s: float = 120.0) -> None:
        self.s, self.platform, self.sync, self.wait_s = settings, platform, sync, wait_s
        self.returncode: int | None = None
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self.run, name="bootstrap", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def needed(self) -> bool:
        """Wait for the deployment state; True when the default model has no production version."""
        t0 = time.monotonic()
        while not self.sync.ready and time.monotonic() - t0 < self.wait_s:
            if self._stopping.wait(0.2):
                return False
        if not self.sync.ready:
            log.warning("bootstrap skipped: the deployment state was not replayed in time")
            return False
        return not self.sync.follower.state(self.s.default_model).production_version

    def run(self) -> int | None:
        """The child's exit status (None: not needed, not started, or stopped)."""
        if not self.needed():
            return None
        cmd = [sys.executable, "-m", MODULE, "--model", self.s.default_model, "--topic", self.s.deployments_topic,
               "--repository", str(self.platform.model_repo)]
        with self._lock:
            if self._stopping.is_set():
                return None
            log.info("bootstrap: no production version; starting the bootstrap process",
                     extra={"model": self.s.default_model})
            self._proc = subprocess.Popen(cmd)
        try:
            self.returncode = self._proc.wait(self.wait_s)
        except subprocess.TimeoutExpired:
            log.error("bootstrap process did not finish; ending it", extra={"timeout_s": self.wait_s})
            self._end()
            return None
        if self.returncode != 0 and not self._stopping.is_set():
            log.error("bootstrap failed; deploy a model with `recpilot train` and `recpilot models deploy`",
                      extra={"returncode": self.returncode})
        return self.returncode

    def _end(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
        self._end()
        if self._thread.is_alive():
            self._thread.join(15)
