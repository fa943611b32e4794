"""`graft`'s grammar: resource-action commands, the old aliases, global options anywhere, exit codes."""
from __future__ import annotations

import argparse

import pytest

from graft.cli.client import ClientError
from graft.cli.main import build_parser, exit_code, train_request
from graft.client import AuthError, BadRequest, Conflict, GraftError, NotFound, Unavailable, WaitTimeout


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv", [
    ("--url", "http://a", "--token", "t", "--json", "jobs", "show", "J"),
    ("jobs", "show", "J", "--url", "http://a", "--token", "t", "--json"),
    ("jobs", "--url", "http://a", "show", "J", "--token", "t", "--json"),
    ("--url", "http://b", "jobs", "show", "J", "--url", "http://a", "--token", "t", "--json"),
], ids=["before", "after", "between", "after-wins"])
def test_global_options_work_before_and_after_the_subcommand(argv: tuple[str, ...]) -> None:
    args = _parse(*argv)
    assert (args.url, args.token, args.json, args.action, args.job_id) == ("http://a", "t", True, "show", "J")


@pytest.mark.parametrize("command", [("train", "d"), ("predict", "M", "d"), ("models", "show", "M"),
                                     ("datasets", "list"), ("status", "J"), ("cancel", "J"), ("jobs", "list")])
def test_every_client_command_takes_the_global_options(command: tuple[str, ...]) -> None:
    args = _parse("--token", "early", *command, "--url", "http://late")
    assert (args.url, args.token, args.json) == ("http://late", "early", False)


def test_jobs_and_models_without_an_action_list() -> None:
    args = _parse("jobs", "--status", "running")
    assert (args.action, args.status, args.limit) == (None, "running", 20)
    args = _parse("jobs", "--status", "running", "list", "--limit", "3")
    assert (args.action, args.status, args.limit) == ("list", "running", 3)
    assert _parse("models").action is None and _parse("models", "list", "--job", "J").job == "J"


@pytest.mark.parametrize("action", ["show", "wait", "cancel", "logs"])
def test_jobs_actions_take_a_job_id(action: str) -> None:
    assert _parse("jobs", action, "J").job_id == "J"


def test_models_download_takes_a_format_and_a_file() -> None:
    args = _parse("models", "download", "M", "--format", "pt", "-o", "m.zip")
    assert (args.action, args.model_id, args.format, args.output) == ("download", "M", "pt", "m.zip")
    assert _parse("models", "download", "M").format == "onnx"
    assert (_parse("models", "delete", "M").action, _parse("models", "delete", "M").model_id) == ("delete", "M")
    with pytest.raises(SystemExit) as caught:
        _parse("models", "download", "M", "--format", "tflite")
    assert caught.value.code == 2


def test_train_sources() -> None:
    args = _parse("train", "photos", "--epochs", "1")
    assert train_request(args, dataset_id="ds9") == {"dataset_id": "ds9", "epochs": 1}
    with pytest.raises(ClientError):
        train_request(args)  # DIR alone: cmd_train uploads it first


@pytest.mark.parametrize(("error", "code"), [
    (NotFound("x", 404), 3), (Unavailable("x"), 69), (Unavailable("x", 503), 69), (BadRequest("x", 400), 2),
    (AuthError("x", 401), 2), (Conflict("x", 409), 2), (ClientError("x"), 2), (GraftError("x", 500), 1),
    (WaitTimeout("x"), 1)])
def test_exit_codes(error: GraftError, code: int) -> None:
    assert exit_code(error) == code


def test_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        _parse("--version")
    assert caught.value.code == 0 and capsys.readouterr().out.startswith("graft ")
    with pytest.raises(SystemExit) as caught:
        _parse("jobs", "frobnicate")
    assert caught.value.code == 2
    with pytest.raises(SystemExit):
        _parse("--help")
    assert "69" in capsys.readouterr().out  # the exit-code table is in the help
