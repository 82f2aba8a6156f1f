"""``python -m services.inference``: load settings, set up logging, build the app, run it until
SIGTERM/SIGINT or until a part of it dies, then stop it in order.

With ``RECPILOT_INFERENCE_WORKERS`` > 1 the process is the supervisor of that many worker
processes (:mod:`services.inference.workers`), each of them this entry point with one worker.
"""

from __future__ import annotations

from recpilot.lifecycle import Lifecycle
from recpilot.log import setup_logging
from recpilot.settings import load_service
from services.inference.settings import InferenceSettings


def main() -> int:
    platform, s = load_service("inference", InferenceSettings)
    setup_logging("inference", platform.log_level)
    if s.workers > 1:
        from services.inference.workers import SupervisorApp as App
    else:
        from services.inference.app import InferenceApp as App
    life = Lifecycle()
    life.install_signal_handlers()
    app = App(s, platform)
    life.add("app", app.stop)
    try:
        app.start()
        life.wait(check=lambda: app.running)
    finally:
        life.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
