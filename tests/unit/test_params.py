"""graft.shared.params is the one home of the request parameters: the API, the worker and the CLI agree with it."""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from typing import Any

import pytest
from marshmallow import Schema

from graft.api.validation import PREDICT_SCHEMA, TRAIN_SCHEMA, validate
from graft.cli.client import ClientError
from graft.cli.main import build_parser, train_request
from graft.shared import params
from graft.shared.params import HYPER_PARAMS, PREDICT_PARAMS, TRAIN_PARAMS, Param
from graft.worker.core import backbones, predict, runtimes, spec

INTERNAL_SPEC_FIELDS = {"cache_mb", "label_smoothing", "weight_decay"}  # TrainSpec fields no request may set


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def _train_options() -> dict[str, argparse.Action]:
    return {action.dest: action for action in _train_parser()._actions}


def _request(*argv: str) -> dict[str, Any]:
    return train_request(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize(("schema", "table"), [(TRAIN_SCHEMA, TRAIN_PARAMS), (PREDICT_SCHEMA, PREDICT_PARAMS)],
                         ids=["train", "predict"])
def test_schema_is_built_from_the_params(schema: type[Schema], table: tuple[Param, ...]) -> None:
    """The API validates with schemas built from the params: same names, same order, a field per Param object."""
    declared = schema._declared_fields
    assert list(declared) == [p.name for p in table]
    assert all(declared[p.name].metadata["param"] is p for p in table)
    assert all(declared[p.name].required == p.required and declared[p.name].allow_none == p.nullable for p in table)


@pytest.mark.parametrize(("schema", "table", "base"), [(TRAIN_SCHEMA, TRAIN_PARAMS, {}),
                                                       (PREDICT_SCHEMA, PREDICT_PARAMS, {"model_id": "m"})],
                         ids=["train", "predict"])
def test_every_default_is_itself_valid(schema: type[Schema], table: tuple[Param, ...],
                                       base: dict[str, Any]) -> None:
    """An empty request gets every default, and sending a default explicitly passes validation unchanged."""
    defaults = {p.name: p.default for p in table if not p.required}
    assert validate(dict(base), schema) == {**base, **defaults}
    for name, value in defaults.items():
        assert validate({**base, name: value}, schema)[name] == value


def test_trainspec_defaults_are_the_params_defaults() -> None:
    """Every TrainSpec field that a request sets defaults as the API does."""
    spec_defaults = {f.name: f.default for f in dataclasses.fields(spec.TrainSpec)}
    assert {p.name: spec_defaults[p.name] for p in HYPER_PARAMS} == params.train_defaults()


def test_trainspec_fields_are_the_hyper_parameters_and_the_internal_ones() -> None:
    """Every hyper-parameter is a TrainSpec field, and every other field is a known internal one."""
    names = {f.name for f in dataclasses.fields(spec.TrainSpec)}
    hyper = {p.name for p in HYPER_PARAMS}
    assert hyper <= names
    assert names - hyper == INTERNAL_SPEC_FIELDS
    assert set(params.DATA_SOURCES + params.JOB_OPTIONS) == {p.name for p in TRAIN_PARAMS} - hyper
    assert not set(params.JOB_OPTIONS) & names  # callback_url is the job's, not TrainSpec's


@pytest.mark.parametrize(("table", "name", "choices", "worker_names"), [
    (TRAIN_PARAMS, "backbone", (params.AUTO_BACKBONE, *params.BACKBONES), (params.AUTO_BACKBONE, *backbones.BACKBONES)),
    (TRAIN_PARAMS, "mode", params.MODES, spec.MODES),
    (PREDICT_PARAMS, "precision", params.PRECISIONS, predict.PRECISIONS),
    (PREDICT_PARAMS, "runtime", params.RUNTIMES, runtimes.RUNTIMES),
])
def test_choices_agree_with_the_worker(table: tuple[Param, ...], name: str, choices: tuple[str, ...],
                                       worker_names: tuple[str, ...]) -> None:
    """A param's choices are the shared constant, and the worker knows exactly those names."""
    assert next(p for p in table if p.name == name).choices == choices
    assert set(worker_names) == set(choices)


def test_runtime_names_are_the_shared_ones() -> None:
    """The worker's named runtimes and its default are among the shared RUNTIMES."""
    assert {runtimes.OPENVINO, runtimes.TORCH} == set(params.RUNTIMES)
    assert runtimes.DEFAULT_RUNTIME in params.RUNTIMES


def test_params_module_is_pure() -> None:
    """graft.shared.params loads none of the ML, web, queue or database stack, nor another room."""
    code = ("import sys, graft.shared.params\n"
            "bad = ('torch', 'numpy', 'flask', 'celery', 'sqlalchemy', 'graft.api', 'graft.worker', 'graft.cli')\n"
            "print(sorted(m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in bad)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("param", HYPER_PARAMS, ids=lambda p: p.name)
def test_cli_offers_every_hyper_parameter(param: Param) -> None:
    """`graft train` has an option for the param, with its flag, type and choices, defaulting to the server's."""
    action = _train_options()[param.name]
    assert param.option in action.option_strings
    assert action.default is None
    if param.type is bool:
        assert action.nargs == 0 and action.const is (not param.option.startswith("--no-"))
    else:
        assert action.type is param.type
        assert (tuple(action.choices) if action.choices is not None else None) == param.choices


def test_cli_offers_no_data_source_as_a_generated_option() -> None:
    """The data sources keep their own positional DIR, --server-dir and --dataset."""
    options = _train_options()
    assert options["data_dir"].option_strings == [] and options["dataset"].option_strings == ["--dataset"]
    assert options["server_dir"].option_strings == ["--server-dir"]
    assert "dataset_id" not in options


@pytest.mark.parametrize(("argv", "name", "value"), [
    (["--backbone", "efficientnet_lite0"], "backbone", "efficientnet_lite0"),
    (["--no-pretrained"], "pretrained", False),
    (["--epochs", "5"], "epochs", 5),
    (["--batch-size", "8"], "batch_size", 8),
    (["--lr", "0.01"], "learning_rate", 0.01),
    (["--image-size", "64"], "image_size", 64),
    (["--val-split", "0.25"], "val_split", 0.25),
    (["--seed", "7"], "seed", 7),
    (["--freeze-epochs", "2"], "freeze_epochs", 2),
    (["--mode", "full"], "mode", "full"),
    (["--time-budget", "60"], "time_budget_s", 60.0),
    (["--patience", "0"], "patience", 0),
    (["--views", "1"], "views", 1),
])
def test_cli_flags_set_their_param(argv: list[str], name: str, value: Any) -> None:
    """Today's flags (--lr, --time-budget, --no-pretrained, ...) and the new ones send their param."""
    sent = _request("--server-dir", "/x", *argv)
    assert sent == {"data_dir": "/x", name: value}
    assert type(sent[name]) is type(value)
    assert validate(sent, TRAIN_SCHEMA)[name] == value


def test_callback_url_is_a_job_option_of_both_kinds() -> None:
    """callback_url is accepted by train and predict requests, and `graft train --callback-url` sends it."""
    assert params.CALLBACK_URL in TRAIN_PARAMS and params.CALLBACK_URL in PREDICT_PARAMS
    assert params.CALLBACK_URL not in HYPER_PARAMS
    url = "http://127.0.0.1:9000/hook"
    assert _request("--server-dir", "/x", "--callback-url", url) == {"data_dir": "/x", "callback_url": url}


def test_train_request_sends_only_the_options_given() -> None:
    """Options left out are not sent, so the server's defaults apply."""
    sent = _request("--server-dir", "/x", "--lr", "0.01", "--mode", "linear")
    assert sent == {"data_dir": "/x", "learning_rate": 0.01, "mode": "linear"}
    assert _request("--dataset", "ds1") == {"dataset_id": "ds1"}


@pytest.mark.parametrize("argv", [[], ["/x", "--dataset", "ds1"], ["--server-dir", "/x", "--dataset", "ds1"],
                                  ["/x", "--server-dir", "/x"], ["/x"]],
                         ids=["neither", "both", "server-and-dataset", "dir-and-server", "dir-not-uploaded"])
def test_train_request_needs_exactly_one_source(argv: list[str]) -> None:
    """DIR (uploaded first), --server-dir or --dataset: exactly one of them."""
    with pytest.raises(ClientError):
        _request(*argv)


@pytest.mark.parametrize("argv", [["--mode", "bogus"], ["--backbone", "vgg"], ["--epochs", "ten"]])
def test_cli_rejects_what_the_params_rule_out(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Choices and types come from the params, so argparse refuses a bad value before any request."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "/x", *argv])
    assert "invalid" in capsys.readouterr().err
