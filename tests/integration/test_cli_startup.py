"""`recpilot` as a process: a bad setting stops it at start-up with exit code 2, naming the
variable, without a traceback."""

import subprocess
import sys


def test_bad_setting_stops_startup_with_the_variable_name():
    env = {"PATH": "/usr/bin:/bin", "RECPILOT_KAFKA_PORT": "nine-thousand"}
    res = subprocess.run([sys.executable, "-m", "recpilot.cli", "up"], capture_output=True, text=True, env=env)
    assert res.returncode == 2
    assert "RECPILOT_KAFKA_PORT='nine-thousand'" in res.stderr
    assert "Traceback" not in res.stderr
