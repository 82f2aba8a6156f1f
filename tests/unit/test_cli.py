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


def test_models_commands_take_the_version_or_model_as_a_positional(tmp_path, capsys):
    # `recpilot models verify 3` == `--version 3`; both and different is a clear error (exit 1)
    from recpilot.models.repository import ModelRepository
    from tests.support.repository import tiny_writer

    repo = ModelRepository(tmp_path / "models")
    repo.create_version("ranker", tiny_writer(auc=0.7))
    assert main(["models", "verify", "1", "--repo", str(tmp_path / "models")]) == 0
    assert main(["models", "verify", "1", "--version", "2", "--repo", str(tmp_path / "models")]) == 1
    assert "version given twice: '1' and --version '2'" in capsys.readouterr().err
    # `models verify ranker 1` (model, version), `models verify ranker` (a lone name is the model)
    root = ["--repo", str(tmp_path / "models")]
    capsys.readouterr()
    assert main(["models", "verify", "ranker", "1", *root]) == 0
    assert main(["models", "verify", "ranker", *root]) == 0
    assert main(["models", "verify", "nope", "1", *root]) == 1
    assert "no model 'nope'" in capsys.readouterr().out
    assert main(["models", "verify", "ranker", "1", "--model", "other", *root]) == 1
    assert "model given twice: 'ranker' and --model 'other'" in capsys.readouterr().err
    for bad in (["ranker", "x"], ["ranker", "1", "2"]):
        assert main(["models", "verify", *bad, *root]) == 1
        assert "expected [MODEL] [VERSION]" in capsys.readouterr().err
    args = build_parser().parse_args(["models", "status", "ranker"])
    assert args.model_positional == "ranker"
