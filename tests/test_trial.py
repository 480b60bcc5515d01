import json
import math
import os
import subprocess
import sys

import pytest
import torch

from byol_bench.cli import main
from byol_bench.config import make_config
from byol_bench.models.methods import BUILT_IN_METHODS, METHODS
from byol_bench.trial.result import values
from byol_bench.trial.run import measure_floors, run_trial, setup
from conftest import TINY, pretrained, tiny

TINY_FLAGS = [arg for key, value in TINY.items() for arg in (f"--{key.replace('_', '-')}", str(value))]


def test_train_command_writes_a_complete_result(tmp_path, capsys):
    out = tmp_path / "trial.json"
    assert main(["train", "--method", "byol", "--knn-monitor-every", "1", "--out", str(out), *TINY_FLAGS]) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "ok"
    assert result["config"]["method"] == "byol" and result["config"]["momentum_schedule"] == "cosine:0.99-1.0"
    assert len(result["history"]) == 2
    for row in result["history"]:
        assert {"epoch", "loss", "lr", "momentum", "images_per_s", "knn_top1"} <= row.keys()
    metrics = result["metrics"]
    for key in ("knn_top1", "knn_top5", "linear_top1", "linear_top5"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["images_per_s"] > 0 and metrics["step_time_median_s"] > 0
    assert 0 <= metrics["data_wait_fraction"] < 1 and metrics["peak_memory_bytes"] > 0 and metrics["pretrain_time_s"] > 0
    assert {"random_init_knn_top1", "random_init_linear_top1", "raw_pixels_knn_top1"} <= result["floors"].keys()
    for key in ("python", "torch", "torchvision", "lightly", "ray", "git_revision", "device_name", "threads", "seed", "time"):
        assert key in result["provenance"]
    assert result["run"]["probe_recipe"]["epochs"] == 5
    # the result, the backbone's weights and its model card; no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trial.backbone.safetensors", "trial.json",
                                                         "trial.model-card.json", "trial.model-card.md"]


def test_the_online_probe_learns_without_changing_pretraining_and_low_label_metrics_are_recorded(tmp_path):
    """Bit for bit the same weights with the online probe (and the embedding maps) as without; its test top-1
    every epoch, above chance; kNN and linear top-1 with a quarter of the labels beside the full ones; the maps of
    the trained and the random-init backbone, drawn in the trial's report."""
    def trained(**knobs):
        checkpoints = []
        floors = {"random_init_knn_top1": 0.0, "random_init_linear_top1": 0.0}  # not measured: not compared
        # Batches of 16: enough steps for the backbone's BatchNorm statistics, which test images see, to settle.
        result = run_trial(make_config(tiny("byol", batch_size=16, probe_epochs=2, **knobs)), floors=floors,
                           on_epoch=lambda row, checkpoint: checkpoints.append(checkpoint), log=lambda line: None)
        return checkpoints[-1].method, result

    without, plain = trained()
    weights, result = trained(online_probe=True, probe_label_fractions="0.25", embedding_map=True)
    assert without.keys() == weights.keys() and all(torch.equal(without[key], weights[key]) for key in weights)
    assert plain.metrics.knn_top1 == result.metrics.knn_top1  # the same evaluation of the same weights
    probed = [row["online_probe_top1"] for row in result.history]
    assert len(probed) == 2 and result.metrics.online_probe_top1 == probed[-1] > 0.2  # 10 classes: chance 0.1
    assert "online_probe_top1" not in plain.history[-1] and plain.metrics.online_probe_top1 is None
    for key in ("knn_top1_25pct", "linear_top1_25pct"):
        assert 0.0 <= values(result.metrics)[key] <= 1.0 and key not in values(plain.metrics)
    maps = result.embedding
    assert maps["trained"]["labels"] == maps["random_init"]["labels"] and len(maps["trained"]["labels"]) == 100
    assert len(maps["trained"]["points"]) == 100 and maps["trained"]["points"] != maps["random_init"]["points"]
    assert plain.embedding is None
    (tmp_path / "trial.json").write_text(result.to_json())
    assert main(["report", str(tmp_path / "trial.json")]) == 0
    assert (tmp_path / "trial-report" / "figures" / "embedding_maps.png").stat().st_size > 1000


def test_transfer_evaluation_converts_other_data_sets_to_the_pretraining_images(tmp_path):
    """A built-in data set at another size and a grayscale ImageFolder tree: each a metric group, each converted."""
    from torchvision.transforms.functional import to_pil_image

    for label, shade in (("dark", 40), ("light", 210)):  # two classes a random backbone already tells apart
        (tmp_path / "tones" / label).mkdir(parents=True)
        for index in range(20):
            image = torch.full((1, 20, 20), shade + index, dtype=torch.uint8)
            to_pil_image(image).save(tmp_path / "tones" / label / f"{index}.png")
    cfg = make_config(tiny("simclr", epochs=1, probe_epochs=2, eval_datasets=["synthetic", str(tmp_path / "tones")]))
    result = run_trial(cfg, log=lambda line: None)  # the floors too, on each transfer set
    assert result.run.transfer == ("synthetic (3→3 channels, 32→16 px, 256 train / 100 test images); "
                                         "tones (3→3 channels, 16→16 px, 32 train / 8 test images)")
    assert result.metrics.extra["transfer_tones_knn_top1"] == result.metrics.extra["transfer_tones_linear_top1"] == 1.0
    assert 0.0 <= result.metrics.extra["transfer_synthetic_knn_top1"] <= 1.0
    assert result.floors.extra["random_init_transfer_tones_knn_top1"] == 1.0
    assert 0.0 <= result.floors.extra["random_init_transfer_synthetic_linear_top1"] <= 1.0
    assert measure_floors(cfg) == values(result.floors)  # a sweep's shared floors: the same numbers


def test_conform_converts_channels_as_pil_does_and_resizes():
    from torchvision.transforms.functional import pil_to_tensor, to_pil_image

    from byol_bench.data.datasets import conform

    rgb = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    gray = conform(rgb, channels=1, size=12)
    assert gray.shape == (2, 1, 12, 12)
    assert (gray[0].int() - pil_to_tensor(to_pil_image(rgb[0]).convert("L")).int()).abs().max() <= 1
    assert torch.equal(conform(gray, channels=3, size=12), gray.expand(-1, 3, -1, -1))
    assert conform(gray, channels=1, size=28).shape == (2, 1, 28, 28)


def test_config_file_and_flags_combine(tmp_path):
    config = tmp_path / "trial.yaml"
    config.write_text("method: simsiam\nepochs: 1\nbatch_size: 32\n")
    out = tmp_path / "trial.json"
    flags = [f for f in TINY_FLAGS]
    flags[flags.index("--epochs") + 1] = "1"
    assert main(["train", "--config", str(config), "--batch-size", "64", "--out", str(out), *flags]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["method"] == "simsiam" and result["config"]["batch_size"] == 64
    assert result["history"][0]["momentum"] is None  # no target network


def test_same_config_and_seed_give_the_same_numbers_with_floors_measured_apart(tiny_config):
    """A sweep measures the floors once per setting (measure_floors) and hands them to its trials: they
    must be the floors the trial would have measured itself, and change nothing else."""
    cfg = tiny_config(method="simclr", epochs=1)
    floors = measure_floors(cfg)
    a, b = run_trial(cfg, log=lambda line: None), run_trial(cfg, floors=floors, log=lambda line: None)
    assert values(a.floors) == values(b.floors) == floors
    assert a.history[0]["loss"] == b.history[0]["loss"]
    for key in ("knn_top1", "linear_top1", "effective_rank"):
        assert values(a.metrics)[key] == values(b.metrics)[key]


def test_a_resumed_trial_ends_where_an_uninterrupted_one_does(tiny_config):
    cfg = tiny_config(method="byol", epochs=2)
    checkpoints = []
    full = run_trial(cfg, on_epoch=lambda row, checkpoint: checkpoints.append(checkpoint), log=lambda line: None)
    assert [c.state.epoch for c in checkpoints] == [1, 2]
    resumed = run_trial(cfg, resume=checkpoints[0], log=lambda line: None)
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in full.history], rel=1e-5)
    assert resumed.metrics.knn_top1 == pytest.approx(full.metrics.knn_top1, abs=0.011)


def test_the_console_script_exits_2_without_a_traceback(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "byol-bench")
    done = subprocess.run([script, "train", "--method", "nope", "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("byol-bench: error: unknown method 'nope'")
    assert "Traceback" not in done.stderr


def test_a_non_finite_loss_stops_the_trial_as_diverged(tiny_config):
    result = run_trial(tiny_config(method="simclr", epochs=3, lr=1e30), log=lambda line: None)
    assert result.status == "diverged"
    assert len(result.history) == 1  # stopped after the first epoch, not trained on
    assert result.metrics.knn_top1 is None  # nothing evaluated on a broken model


def test_a_compiled_trial_trains_as_the_eager_one_and_times_its_compile_apart():
    """compile true: the same weights as eager up to float noise; the step that compiles is compile time,
    never a timed step. compile auto stays eager on the CPU."""
    knobs = dict(TINY, method="simclr", subset=128, batch_size=32, epochs=1, timing_warmup_steps=0)
    initial = setup(make_config(knobs))[1].state_dict()
    eager, eager_state = pretrained({**knobs, "compile": "auto"})
    compiled, compiled_state = pretrained({**knobs, "compile": True})

    def distance(a: dict, b: dict) -> float:  # over every float weight and BatchNorm statistic
        return sum((a[k] - b[k]).square().sum().item() for k in a if a[k].is_floating_point()) ** 0.5

    # fused kernels sum in another order: the two end within 1% of how far training moved the weights
    assert distance(compiled, eager) < 0.01 * distance(eager, initial)
    assert eager_state.compile_time_s == 0 and compiled_state.compile_time_s > 0
    # 4 steps, every one timed (timing_warmup_steps 0) but the one that compiled
    assert len(eager_state.step_times) == 4 and len(compiled_state.step_times) == 3


@pytest.mark.parametrize("method", [name for name in BUILT_IN_METHODS if name not in ("byol", "simclr", "simsiam")])
def test_each_new_method_runs_a_trial_that_writes_a_complete_result(method):
    """One epoch of two steps, with the kNN monitor every epoch: the result has every section, the method's
    own knobs filled with its defaults and the others' left empty, and the best epoch's kNN accuracy."""
    knobs = tiny(method, subset=128, epochs=1, knn_monitor_every=1, timing_warmup_steps=0)
    result = run_trial(make_config(knobs), log=lambda line: None)
    assert result.status == "ok", result.status
    config, metrics = result.config, values(result.metrics)
    assert all(config[key] is not None for key in METHODS[method].config_keys if key not in ("predictor_hidden_dim",
                                                                                       "local_crop_size"))
    assert config["stop_gradient"] is None and (config["momentum_schedule"] is None) != ("momentum_schedule" in METHODS[method].config_keys)
    assert [row["epoch"] for row in result.history] == [1] and math.isfinite(result.history[0]["loss"])
    for key in ("knn_top1", "knn_top5", "linear_top1", "linear_top5"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["knn_top1_best"] == max(row["knn_top1"] for row in result.history) == metrics["knn_top1"]
    assert metrics["effective_rank"] > 0 and metrics["images_per_s"] > 0 and metrics["flops_per_image"] > 0
    assert {"random_init_knn_top1", "random_init_linear_top1"} <= values(result.floors).keys()


def test_the_best_epoch_knn_is_recorded_only_when_the_monitor_runs_every_epoch(tiny_config):
    every_other = run_trial(tiny_config(method="simclr", knn_monitor_every=2), log=lambda line: None)
    assert "knn_top1" in every_other.history[1] and every_other.metrics.knn_top1_best is None


def test_lr_scaling_none_keeps_the_learning_rate_at_every_batch_size(tiny_config):
    """lightly's SimSiam benchmark: lr 0.06 at batch 512 as at 128; the default scales it linearly."""
    assert tiny_config(method="simsiam", batch_size=256, lr_scaling="none").peak_lr == 0.06
    assert tiny_config(method="simsiam", batch_size=256).peak_lr == pytest.approx(0.12)


def test_precision_auto_is_bf16_only_where_the_cpu_has_amx_that_onednn_may_use(monkeypatch, tmp_path):
    import torch

    from byol_bench.trial import instrument, loop

    cpuinfo = tmp_path / "cpuinfo"
    for flags, isa_cap, expected in (("avx2 avx512f amx_bf16 amx_tile", None, True), ("avx2 fma avx512_bf16", None, False),
                                     ("avx512f amx_bf16", "AVX2", False), ("amx_bf16", "avx512_core_amx", True)):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu {flags}\n")
        if isa_cap:  # how an AVX2 machine is emulated: oneDNN then uses no AMX either
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
        else:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        instrument.cpu_has_amx_bf16.cache_clear()
        assert instrument.cpu_has_amx_bf16(str(cpuinfo)) is expected, (flags, isa_cap)
    instrument.cpu_has_amx_bf16.cache_clear()
    cpu = torch.device("cpu")
    for amx, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(loop, "cpu_has_amx_bf16", lambda: amx)
        loop.resolve_precision.cache_clear()
        assert loop.resolve_precision("auto", cpu) == expected
        assert loop.resolve_precision("fp32", cpu) == "fp32" and loop.resolve_precision("bf16", cpu) == "bf16"
    loop.resolve_precision.cache_clear()  # the real CPU's answer for the tests after this one


def test_a_trial_records_the_precision_it_resolved_to(tiny_config):
    from byol_bench.trial.loop import resolve_precision

    result = run_trial(tiny_config(epochs=1), log=lambda line: None)
    assert result.config["precision"] == "auto"
    assert result.run.precision == resolve_precision("auto", __import__("torch").device("cpu"))


def test_a_checkpoint_is_read_without_running_code(tmp_path):
    """load_checkpoint reads back what a trial saves, and refuses a file that would run code when unpickled."""
    import pickle

    from byol_bench.trial.state import Checkpoint, TrialState, load_checkpoint

    saved = Checkpoint(TrialState(floors={"random_init_knn_top1": 0.5}, restarts=[2]), {"w": torch.ones(2)}, {}, None)
    torch.save(saved, tmp_path / "state.pt")
    loaded = load_checkpoint(tmp_path / "state.pt")
    assert loaded.state == saved.state and torch.equal(loaded.method["w"], saved.method["w"])
    torch.save({"state": print}, tmp_path / "hostile.pt")  # a global the checkpoint allowlist does not hold
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "hostile.pt")


def test_a_trial_runs_again_from_its_own_result_json(tmp_path):
    first = tmp_path / "first.json"
    assert main(["train", "--method", "simclr", *TINY_FLAGS, "--epochs", "1", "--out", str(first)]) == 0
    again = tmp_path / "again.json"
    assert main(["train", "--config", str(first), "--out", str(again)]) == 0  # its config, read from the result
    a, b = (json.loads(path.read_text()) for path in (first, again))
    assert a["config"] == b["config"] and a["metrics"]["knn_top1"] == b["metrics"]["knn_top1"]
    assert a["history"][0]["loss"] == b["history"][0]["loss"]
