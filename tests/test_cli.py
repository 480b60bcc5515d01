"""The command line: flags built from the config fields, one type rule for flags and YAML, output paths
checked by writing, and a finished trial's result never lost."""

import errno
import importlib.metadata
import json
import tempfile
from pathlib import Path

import pytest

import byol_bench.results.tables
import byol_bench.trial.run
from byol_bench.cli import flag, main
from byol_bench.config import KEYS, make_config
from byol_bench.errors import UserError
from byol_bench.results.tables import check_writable
from conftest import TINY

TINY_FLAGS = [arg for key, value in {**TINY, "epochs": 1}.items() for arg in (f"--{key.replace('_', '-')}", str(value))]


def help_text(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit:
        main([*argv, "--help"])
    assert exit.value.code == 0
    return capsys.readouterr().out


def test_every_config_key_is_a_train_flag_with_its_help_and_choices(capsys):
    text = help_text(capsys, "train")
    for key in KEYS:
        assert f"{flag(key)} " in text, key
    assert "--optimizer {sgd,lars,adam}" in text and "--compile {true,false,auto}" in text
    assert "the optimizer's momentum (SGD and LARS) (>= 0; default: 0.9)" in " ".join(text.split())


def test_help_tells_the_usual_flow_and_version_tells_the_versions(capsys):
    text = help_text(capsys)
    positions = [text.index(f"byol-bench {command} ") for command in ("sweep", "report", "baseline save", "compare")]
    assert positions == sorted(positions) and "byol-bench train " in text and "``" not in text
    with pytest.raises(SystemExit):
        main(["--version"])
    version = capsys.readouterr().out
    assert version.startswith(f"byol-bench {importlib.metadata.version('byol-bench')} (torch ")


@pytest.mark.parametrize("text, yaml_value, expected", [
    ("1e-3", "1e-3", ("lr", 0.001)),  # PyYAML reads 1e-3 as a string
    ("2", 2, ("lr", 2.0)),
    ("false", False, ("stop_gradient", False)),
    ("null", None, ("predictor_hidden_dim", None)),
    ("64", 64, ("predictor_hidden_dim", 64)),
])
def test_a_flag_and_a_yaml_value_read_the_same(text, yaml_value, expected):
    key, value = expected
    method = {"method": "simsiam"}  # reads every knob here (a method refuses the knobs it does not read)
    from_flag = getattr(make_config({**method, key: text}), key)
    from_yaml = getattr(make_config({**method, key: yaml_value}), key)
    assert from_flag == from_yaml == value and type(from_flag) is type(from_yaml) is type(value)


@pytest.mark.parametrize("key, value", [("epochs", True), ("epochs", 2.5), ("stop_gradient", 1), ("method", None),
                                        ("lr", "fast"), ("lr", float("nan"))])
def test_values_of_the_wrong_type_are_refused(key, value):
    with pytest.raises(UserError, match=key):
        make_config({key: value})


def test_an_output_path_that_cannot_be_created_is_refused_before_training(capsys, monkeypatch):
    """os.access says a root user may write under /proc; creating /proc/nope says otherwise."""
    monkeypatch.setattr(byol_bench.trial.run, "run_trial", lambda *a, **k: pytest.fail("the trial started"))
    assert main(["train", *TINY_FLAGS, "--out", "/proc/nope/x.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("byol-bench: error: output path /proc/nope/x.json cannot be written") and len(err.splitlines()) == 1
    assert not Path("/proc/nope").exists()


@pytest.mark.parametrize("file", [False, True])
def test_the_writability_check_leaves_nothing_behind(tmp_path, file):
    check_writable(tmp_path / "new" / "deeper" / "x.json", "output path", "choose another", file=file)
    assert not list(tmp_path.iterdir())


def test_a_finished_trial_that_cannot_be_written_goes_to_the_temporary_folder(tmp_path, capsys, monkeypatch):
    out, write_json = tmp_path / "trial.json", byol_bench.results.tables.write_json

    def full_disk(path, payload):
        if path == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_json(path, payload)

    monkeypatch.setattr(byol_bench.results.tables, "write_json", full_disk)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temporary"))
    (tmp_path / "temporary").mkdir()
    assert main(["train", *TINY_FLAGS, "--out", str(out)]) == 1  # a result, but not where it was asked for
    [fallback] = (tmp_path / "temporary").iterdir()
    assert not out.exists() and json.loads(fallback.read_text())["status"] == "ok"
    warning = capsys.readouterr().err.strip().splitlines()[-1]  # after the trial's progress lines
    assert warning == f"byol-bench: warning: cannot write {out} (No space left on device); wrote {fallback} instead"
