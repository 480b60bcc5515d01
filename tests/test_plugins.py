"""Methods and backbones from other packages (entry points), their options, and byol-bench methods / check-method.

The example plug-in package examples/byol-bench-tico (the TiCo method, the gn-cnn backbone) is installed by
`make test`; a broken plug-in is a package made here: a dist-info folder on PYTHONPATH, as pip would leave one.
"""

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from byol_bench.cli import main
from byol_bench.config import make_config
from byol_bench.errors import UserError
from byol_bench.models.methods import METHOD_ORIGINS, METHODS
from conftest import TINY
from test_distributed import _free_port

EXAMPLE = importlib.metadata.version("byol-bench-tico")  # make test installs examples/byol-bench-tico
SCRIPT = Path(sys.executable).parent / "byol-bench"
TINY_FLAGS = ["--dataset", "synthetic", "--image-size", "16", "--subset", "256", "--test-subset", "100",
              "--batch-size", "64", "--epochs", "2", "--probe-epochs", "5", "--hidden-dim", "64",
              "--projection-dim", "32", "--threads", "1"]


def _package(folder: Path, name: str, module: str, code: str, entry_points: str) -> dict:
    """A plug-in package installed into ``folder`` (its module and dist-info); the environment that sees it."""
    (folder / f"{module}.py").write_text(textwrap.dedent(code))
    info = folder / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return {**os.environ, "PYTHONPATH": str(folder)}


def _run(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_methods_lists_every_method_and_backbone_with_its_origin_options_and_defaults(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert METHOD_ORIGINS["tico"] == f"byol-bench-tico {EXAMPLE}"
    tico = next(line for line in out.splitlines() if line.split()[:1] == ["tico"])
    assert f"byol-bench-tico {EXAMPLE}" in tico and "beta=0.9, rho=8.0" in tico and "momentum_schedule=cosine" in tico
    byol = next(line for line in out.splitlines() if line.split()[:1] == ["byol"])
    assert "built-in" in byol and "predictor_hidden_dim=None" in byol
    assert any(line.split()[:2] == ["gn-cnn", "byol-bench-tico"] for line in out.splitlines())
    assert "torchvision:NAME" in out and "timm:NAME" in out


def test_a_plugin_that_raises_at_import_is_named_in_one_line_and_the_built_ins_still_work(tmp_path):
    env = _package(tmp_path, "bad-plugin", "bad_plugin", "raise ImportError('no module named fancy_cuda_kernels')\n",
                   "[byol_bench.methods]\nbroken = bad_plugin:Broken\n")
    listed = _run("methods", env=env)
    assert listed.returncode == 0 and "byol  " in listed.stdout
    assert ("method broken (from bad-plugin 1.0) cannot be used: importing bad_plugin:Broken raised ImportError: "
            "no module named fancy_cuda_kernels") in listed.stdout
    named = _run("train", "--method", "broken", "--out", str(tmp_path / "x.json"), env=env)
    assert named.returncode == 2 and len(named.stderr.strip().splitlines()) == 1, named.stderr
    assert "method broken (from bad-plugin 1.0) cannot be used" in named.stderr and "uninstall" in named.stderr
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "trial": TINY, "axes": {"method": ["simclr", "tico"]}}))
    planned = _run("sweep", str(sweep), "--dry-run", env=env)
    assert planned.returncode == 0 and "2 trials" in planned.stdout, planned.stdout + planned.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("knobs, message", [
    ({"method": "tikko"}, "unknown method 'tikko' (did you mean 'tico'?)"),
    ({"method": "tico", "method_options.tau": 0.1},
     "method_options.tau: method tico has no such option; its options: beta (default 0.9), rho (default 8.0)"),
    ({"method": "byol", "method_options": "rho=2"}, "method_options.rho: method byol has no such option; it takes no"),
    ({"method": "tico", "method_options.rho": "many"}, "method_options.rho: 'many' is not valid for method tico"),
    ({"backbone": "gn-cnn", "backbone_options": "depth=3"}, "backbone_options.depth: backbone gn-cnn takes no such "
                                                            "option; its options: width (default 32), groups (default 8)"),
    ({"backbone": "timm:vit_tiny_patch16_224", "method": "dino", "image_size": 16, "dataset": "synthetic"},
     "backbone timm:vit_tiny_patch16_224: the 8 px method dino's local crops do not divide into its 16 px patches"),
])
def test_bad_plugin_input_is_one_line_before_anything_runs(knobs, message):
    with pytest.raises(UserError) as refused:
        make_config(knobs)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_the_train_command_refuses_a_plugin_option_in_one_line_writing_nothing(tmp_path, capsys):
    assert main(["train", "--method", "tico", "--method-option", "tau=0.1", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "method_options.tau: method tico has no such option" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_method_options_are_a_sweep_axis_crossed_only_with_the_method_that_declares_them(tmp_path):
    from byol_bench.plan.sweep_file import expand, load_sweep

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "opts", "trial": TINY,
                                    "axes": {"method": ["byol", "tico"], "method_options.rho": [4.0, 8.0]}}))
    planned = expand(load_sweep(path))
    assert [p.trial_id for p in planned] == ["method=byol", "method=tico,method_options.rho=4.0",
                                             "method=tico,method_options.rho=8.0"]
    assert [make_config(p.knobs).method_options for p in planned] == [None, {"beta": 0.9, "rho": 4.0},
                                                                      {"beta": 0.9, "rho": 8.0}]


def test_the_example_plugin_sweeps_beside_byol_with_a_vit_keeping_weights_and_model_cards(tmp_path, ray_cluster):
    """A real two-trial Ray sweep: BYOL with a timm ViT (4 px patches on 16 px images), the plug-in's TiCo with the
    plug-in's backbone and an option. Each trial's weights and model card are kept and linked from the report; the
    plug-ins are in each row's provenance and in the manifest."""
    from byol_bench.on_ray.sweep import run_sweep
    from byol_bench.plan.sweep_file import load_sweep

    path = tmp_path / "tico.yaml"
    vit = {"backbone": "timm:vit_tiny_patch16_224", "backbone_options": {"patch_size": 4, "depth": 2}}
    path.write_text(yaml.safe_dump({"name": "tico", "trial": {**TINY, "threads": None}, "axes": {"method": ["byol", "tico"]},
                                    "method_overrides": {"byol": vit, "tico": {"backbone": "gn-cnn",
                                                                                "method_options": {"rho": 4.0}}}}))
    assert run_sweep(load_sweep(path), tmp_path / "results") == 0
    folder = tmp_path / "results" / "tico"
    trials = pd.read_parquet(folder / "trials.parquet").set_index("method")
    assert set(trials["status"]) == {"ok"} and trials.loc["tico", "method_options.rho"] == 4.0
    assert trials.loc["byol", "plugins"] == f"backbone timm:vit_tiny_patch16_224: timm {importlib.metadata.version('timm')}"
    assert trials.loc["tico", "plugins"] == (f"method tico: byol-bench-tico {EXAMPLE}; "
                                             f"backbone gn-cnn: byol-bench-tico {EXAMPLE}")
    html = (folder / "report.html").read_text()
    for weights in trials["weights"]:
        assert (folder / weights).stat().st_size > 10_000 and f'href="{weights}"' in html
        card = (folder / weights).with_name("model-card.md").read_text()
        assert "| knn_top1 |" in card and "load_state_dict(load_file(" in card
    import json
    assert json.loads((folder / "manifest.json").read_text())["plugins"]["method tico"] == f"byol-bench-tico {EXAMPLE}"


def test_check_method_passes_the_example_and_fails_a_copy_whose_target_gets_gradients(tmp_path):
    passed = _run("check-method", "tico")
    assert passed.returncode == 0 and "tico: passed all 6 checks" in passed.stdout, passed.stdout + passed.stderr
    env = _package(tmp_path, "broken-tico", "broken_tico", """
        from byol_bench_tico.method import TiCo

        class TargetTrains(TiCo):  # forgets to freeze its target network
            def __init__(self, *args):
                super().__init__(*args)
                for parameter in [*self.target_backbone.parameters(), *self.target_projection_head.parameters()]:
                    parameter.requires_grad = True
        """, "[byol_bench.methods]\ntico-broken = broken_tico:TargetTrains\n")
    failed = _run("check-method", "tico-broken", env=env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAIL target: reads momentum_schedule, but no parameter is frozen" in failed.stdout
    assert "tico-broken: FAILED target" in failed.stdout


def test_torchrun_runs_the_example_plugin_as_a_ddp_trial(tmp_path):
    out = tmp_path / "tico.json"
    flags = TINY_FLAGS[:TINY_FLAGS.index("--batch-size")] + TINY_FLAGS[TINY_FLAGS.index("--batch-size") + 2:]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(_free_port()), "-m", "byol_bench.cli", "train", "--method", "tico", "--workers", "2",
                          "--batch-size", "32", *flags, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    import json
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and result["run"]["global_batch_size"] == 64
    assert result["provenance"]["plugins"] == {"method tico": f"byol-bench-tico {EXAMPLE}"}
    assert out.with_name("tico.backbone.safetensors").exists() and METHODS["tico"].__module__ == "byol_bench_tico.method"
