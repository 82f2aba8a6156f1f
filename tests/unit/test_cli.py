import pytest

from recpilot.cli import build_parser, main


def test_help_lists_the_stack_commands():
    text = build_parser().format_help()
    for cmd in ("setup", "up", "down", "status", "topics"):
        assert cmd in text


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_models_commands_take_the_version_or_model_as_a_positional(tmp_path, capsys):
    # `recpilot models verify 3` == `--version 3`; both and different is a usage error (exit 2)
    from recpilot.models.repository import ModelRepository
    from tests.support.repository import tiny_writer

    repo = ModelRepository(tmp_path / "models")
    repo.create_version("ranker", tiny_writer(auc=0.7))
    root = ["--repository", str(tmp_path / "models")]
    assert main(["models", "verify", "1", *root]) == 0
    assert main(["models", "verify", "1", "--version", "2", *root]) == 2
    assert "recpilot: error: version given twice: '1' and --version '2'" in capsys.readouterr().err
    # `models verify ranker 1` (model, version), `models verify ranker` (a lone name is the model)
    assert main(["models", "verify", "ranker", "1", *root]) == 0
    assert main(["models", "verify", "ranker", *root]) == 0
    assert main(["models", "verify", "nope", "1", *root]) == 1  # a failure: the model does not exist
    assert "no model 'nope'" in capsys.readouterr().out
    assert main(["models", "verify", "ranker", "1", "--model", "other", *root]) == 2
    assert "model given twice: 'ranker' and --model 'other'" in capsys.readouterr().err
    for bad in (["ranker", "x"], ["ranker", "1", "2"]):
        assert main(["models", "verify", *bad, *root]) == 2
        assert "expected [MODEL] [VERSION]" in capsys.readouterr().err
    # --repo, the former spelling of --repository, still works (hidden from --help)
    assert main(["models", "verify", "1", "--repo", str(tmp_path / "models")]) == 0
    assert "--repo " not in build_parser()._subparsers._group_actions[0].choices["models"].format_help()
    args = build_parser().parse_args(["models", "status", "ranker"])
    assert args.model_positional == "ranker"


# ---------------------------------------------------------------------------------------------
# one mapping point: 2 for a usage error, 1 for a failure, in every command group


def _usage_and_failure(capsys, argv, code, message):
    assert main(argv) == code, argv
    err = capsys.readouterr().err
    assert f"recpilot: error: {message}" in err, err
    assert "Traceback" not in err


def test_models_usage_error_exits_2_and_a_failure_1(tmp_path, capsys):
    empty = ["--repository", str(tmp_path / "empty")]
    _usage_and_failure(capsys, ["models", "canary", "ranker", "a", "b"], 2, "expected [MODEL] [VERSION]")
    _usage_and_failure(capsys, ["models", "verify", *empty], 1, "no models in the repository")
    from recpilot.models.repository import ModelRepository
    from tests.unit.test_repository import tiny_writer

    for name in ("a", "b"):
        ModelRepository(tmp_path / "two").create_version(name, tiny_writer())
    _usage_and_failure(capsys, ["models", "verify", "--repository", str(tmp_path / "two")], 2,
                       "several models in")


def test_train_usage_error_exits_2_and_a_failure_1(tmp_path, capsys, monkeypatch):
    from recpilot.models import train_commands
    from recpilot.models.train import TrainError

    with pytest.raises(SystemExit) as exc:  # argparse: --framework is required
        main(["train", "--data", "sim:10"])
    assert exc.value.code == 2
    _usage_and_failure(capsys, ["train", "--framework", "torch", "--data", str(tmp_path / "nope.parquet"), "--quiet"],
                       2, "data file not found")

    def fail(args):
        raise TrainError("the loss diverged")

    monkeypatch.setattr(train_commands, "_setup", fail)
    _usage_and_failure(capsys, ["train", "--framework", "torch", "--quiet"], 1,
                       "the loss diverged (nothing was written to the model repository)")


def test_features_usage_error_exits_2_and_a_failure_1(capsys, monkeypatch):
    import redis

    from services.features import client

    assert main(["features"]) == 2  # no WHAT: the group's help
    assert "WHAT" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["features", "user"])  # argparse: the user id is required
    assert exc.value.code == 2

    def refused(self, *a, **kw):
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(client.FeatureClient, "user", refused)
    _usage_and_failure(capsys, ["features", "user", "u1"], 1, "cannot read features from Redis at redis://")


def test_stack_usage_error_exits_2_and_a_failure_1(capsys, monkeypatch):
    from recpilot.stack import commands
    from recpilot.stack.process import StackError

    _usage_and_failure(capsys, ["up", "--no-services", "--only", "nosuch"], 2,
                       "unknown service nosuch (services: ingest, features, inference, rl_feedback, monitor)")

    class Broken:
        def down(self):
            raise StackError("kafka did not stop within 30 s")

    monkeypatch.setattr(commands, "_stack", Broken)
    _usage_and_failure(capsys, ["down"], 1, "kafka did not stop within 30 s")


def test_generate_without_a_bound_is_a_usage_error(capsys):
    _usage_and_failure(capsys, ["generate"], 2, "generate needs --duration and/or --count")


def test_a_command_module_that_fails_to_import_breaks_the_cli(monkeypatch):
    from recpilot import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "services.no_such_service.commands"])
    with pytest.raises(ModuleNotFoundError, match="services.no_such_service"):
        build_parser()


def test_bench_without_the_bench_package_says_why(capsys, monkeypatch):
    import importlib

    from recpilot import cli

    real = importlib.import_module

    def without_bench(name, *a, **kw):
        if name == "bench" or name.startswith("bench."):
            raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}", name="bench")
        return real(name, *a, **kw)

    monkeypatch.setattr(cli.importlib, "import_module", without_bench)
    _usage_and_failure(capsys, ["bench", "inference", "--seconds", "1"], 1, cli.BENCH_MISSING)


def test_only_a_missing_bench_package_is_forgiven(monkeypatch):
    """bench/ present but broken inside (a missing dependency) is an error like any other."""
    import importlib

    from recpilot import cli

    real = importlib.import_module

    def broken_bench(name, *a, **kw):
        if name == cli.BENCH_MODULE:
            raise ModuleNotFoundError("No module named 'grpc_tools'", name="grpc_tools")
        return real(name, *a, **kw)

    monkeypatch.setattr(cli.importlib, "import_module", broken_bench)
    with pytest.raises(ModuleNotFoundError, match="grpc_tools"):
        build_parser()


def test_down_with_nothing_running_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RECPILOT_HOME", str(tmp_path / "home"))
    assert main(["down"]) == 0
    assert capsys.readouterr().out == "nothing of ours was running\n"


def test_models_commands_take_kind_policy_and_status_names_the_policies():
    """`recpilot models deploy|promote|canary|rollback --kind policy` parse (ranker by default), and
    the status line names the production policy (the ranker's order when none) and the policy canary."""
    from recpilot.cli import build_parser
    from recpilot.models.commands import _policy_line, state_dict
    from recpilot.pb import deployments_pb2 as pb

    parser = build_parser()
    for action in ("deploy", "promote", "canary", "rollback"):
        assert parser.parse_args(["models", action, "--kind", "policy"]).kind == "policy"
        assert parser.parse_args(["models", action]).kind == "ranker"
    with pytest.raises(SystemExit):
        parser.parse_args(["models", "shadow", "--kind", "policy"])
    st = pb.DeploymentState(model_name="ranker", production_version="1", policy_version="2",
                            policy_canary_version="3", policy_canary_percent=25)
    assert _policy_line(state_dict(st)) == "  policy 2  policy canary 3 (25%)"
    assert _policy_line(state_dict(pb.DeploymentState(model_name="ranker"))) == "  policy ranker-order"
