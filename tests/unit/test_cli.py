import subprocess
import sys

from recpilot.cli import build_parser, main


def test_help_lists_the_stack_commands():
    text = build_parser().format_help()
    for cmd in ("setup", "up", "down", "status", "topics"):
        assert cmd in text


def test_bad_setting_stops_startup_with_the_variable_name():
    env = {"PATH": "/usr/bin:/bin", "RECPILOT_KAFKA_PORT": "nine-thousand"}
    res = subprocess.run([sys.executable, "-m", "recpilot.cli", "up"], capture_output=True, text=True, env=env)
    assert res.returncode == 2
    assert "RECPILOT_KAFKA_PORT='nine-thousand'" in res.stderr
    assert "Traceback" not in res.stderr


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
