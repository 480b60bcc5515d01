"""Every trial's weights and model card, and `byol-bench evaluate` on backbones trained elsewhere: strict loading,
one-line refusals, and the same numbers as the trial that saved them."""

import json
import pickle

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from byol_bench.cli import main
from byol_bench.models.backbones import build_backbone

# A tiny trial on synthetic 3-channel images (torchvision's ResNet weights take 3 channels).
FLAGS = ["--dataset", "synthetic", "--image-size", "32", "--subset", "128", "--test-subset", "64", "--batch-size", "32",
         "--probe-epochs", "3", "--hidden-dim", "64", "--projection-dim", "32", "--knn-k", "20", "--threads", "1"]


def _evaluate(weights, tmp_path, *flags) -> tuple[int, dict | None]:
    out = tmp_path / "evaluated.json"
    code = main(["evaluate", str(weights), *FLAGS, *flags, "--out", str(out)])
    return code, json.loads(out.read_text()) if out.exists() else None


def test_a_saved_backbone_evaluates_to_its_trials_numbers_and_carries_a_model_card(tmp_path, capsys):
    out = tmp_path / "trial.json"
    assert main(["train", "--method", "simclr", "--epochs", "2", *FLAGS, "--out", str(out)]) == 0
    trial = json.loads(out.read_text())
    weights = tmp_path / "trial.backbone.safetensors"
    assert set(load_file(weights)) == set(build_backbone("small-cnn", 3, 32)[0].state_dict())  # the backbone alone
    card = json.loads((tmp_path / "trial.model-card.json").read_text())
    assert card["metrics"]["knn_top1"] == trial["metrics"]["knn_top1"] and card["config"] == trial["config"]
    assert card["floors"]["random_init_knn_top1"] == trial["floors"]["random_init_knn_top1"]
    assert "load_state_dict(load_file(\"trial.backbone.safetensors\"))" in (tmp_path / "trial.model-card.md").read_text()
    code, evaluated = _evaluate(weights, tmp_path)
    assert code == 0 and evaluated["config"]["epochs"] == 0 and evaluated["history"] == []
    for metric in ("knn_top1", "knn_top5", "linear_top1", "linear_top5"):  # the same machine: exactly
        assert evaluated["metrics"][metric] == trial["metrics"][metric], metric
    assert evaluated["floors"] == trial["floors"]  # the same architecture's random-init floors
    provenance = evaluated["provenance"]["backbone_weights"]
    assert provenance["sha256"] == __import__("hashlib").sha256(weights.read_bytes()).hexdigest()
    assert not (tmp_path / "evaluated.backbone.safetensors").exists()  # its weights are on disk already


def test_a_torchvision_resnet_state_dict_loads_with_its_wrappers_prefix_stripped(tmp_path):
    torch.manual_seed(0)
    state = {f"module.{key}": value for key, value in torchvision.models.resnet18().state_dict().items()}
    torch.save(state, tmp_path / "resnet18-ddp.pth")
    code, evaluated = _evaluate(tmp_path / "resnet18-ddp.pth", tmp_path, "--backbone", "torchvision:resnet18",
                                "--backbone-option", "small_stem=false")
    assert code == 0 and 0 <= evaluated["metrics"]["knn_top1"] <= 1
    assert evaluated["provenance"]["backbone_weights"]["stripped_prefix"] == "module."
    assert evaluated["provenance"]["backbone_weights"]["ignored_keys"] == ["fc.bias", "fc.weight"]  # its classifier


class RunsCode:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['RAN_CODE'], 'w').write('ran')",))


@pytest.mark.parametrize("case", ["not a checkpoint", "runs code", "another architecture", "wrong shapes",
                                  "missing file"])
def test_weights_that_cannot_be_this_backbone_are_refused_in_one_line_writing_nothing(case, tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.setenv("RAN_CODE", str(tmp_path / "ran-code"))
    path, flags = tmp_path / "weights.pt", []
    if case == "not a checkpoint":
        path.write_bytes(b"these are not weights" * 100)
    elif case == "runs code":
        path.write_bytes(pickle.dumps({"conv.weight": RunsCode()}))
    elif case == "another architecture":
        torch.save(torchvision.models.resnet18().state_dict(), path)  # into the small CNN
    elif case == "wrong shapes":
        torch.save(torchvision.models.resnet18().state_dict(), path)  # ImageNet's 7x7 stem into the small-image stem
        flags = ["--backbone", "torchvision:resnet18"]
    else:
        path = tmp_path / "nowhere.safetensors"
    code, evaluated = _evaluate(path, tmp_path, *flags)
    err = capsys.readouterr().err.strip()
    assert code == 2 and evaluated is None and len(err.splitlines()) == 1, err
    assert f"backbone_weights {path}" in err
    expected = {"not a checkpoint": "not a weights file this suite will read",
                "runs code": "not a weights file this suite will read",
                "another architecture": "not weights of this backbone; missing 0.weight, 1.weight, 1.bias and",
                "wrong shapes": "conv1.weight is [64, 3, 7, 7] in the file but [64, 3, 3, 3] in the backbone",
                "missing file": "no such file"}[case]
    assert expected in err, err
    assert not (tmp_path / "ran-code").exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name] if path.exists() else [])
