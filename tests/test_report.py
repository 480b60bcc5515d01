"""Reports from hand-built sweep tables (the real writers, no training, no Ray)."""

import base64
import fcntl
import io
import itertools
import json
import math
import os
import select
import subprocess
import time
import zlib
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from byol_bench.cli import main
from byol_bench.config import make_config, resolved_config
from byol_bench.errors import UserError
from byol_bench.models.methods import METHODS
from byol_bench.regression.stats import bootstrap_interval
from byol_bench.regression.stats import mean as mean_over_seeds
from byol_bench.report import write_comparison, write_report
from byol_bench.report.figures import (LEGEND_LABEL_MAX, accuracy_vs_batch_size, accuracy_vs_compute, byol_vs_momentum,
                                       embedding_maps, heatmap, legend_labels, method_palette, pareto_front,
                                       throughput_vs_batch_size, training_curves)
from byol_bench.report.load import load_results
from byol_bench.results.tables import embedding_rows, epoch_rows, summary, trial_row, write_json, write_tables
from byol_bench.trial.result import SCHEMA_VERSION, Floors, TrialResult, columns, values

FIXED = {"dataset": "fashion-mnist", "backbone": "small-cnn", "subset": 5000, "test_subset": 2000, "epochs": 3, "threads": 1}
FIGURES = ("accuracy_vs_batch_size", "byol_vs_momentum", "throughput_vs_batch_size", "accuracy_vs_compute",
           "training_curves", "probability_of_improvement", "embedding_maps", "heatmap")
TABLES = ("Accuracy", "Published numbers next to ours", "Speed and cost", "Floors: random-init backbone and raw pixels",
          "Failed, diverged, incomplete and missing trials")
ANCHOR = {"method": "byol", "batch_size": 128, "knn_top1": 0.869, "source": "lightly CIFAR-10 benchmark"}
CHROMIUM = Path("/usr/bin/chromium")
FIXTURE_V1 = Path(__file__).parent / "fixtures" / "result-v1.json"


def fake_result(knobs: dict, status: str = "ok", offset: float = 0.0) -> dict:
    """A trial result shaped like run_trial's, with numbers that vary by method, batch size and seed."""
    rng = np.random.default_rng(zlib.crc32(json.dumps(knobs, sort_keys=True).encode()))
    floor_rng = np.random.default_rng(knobs["seed"])  # the floors depend on the seed, not on the method or batch
    batch = make_config(knobs).global_batch_size
    accuracy = {"byol": 0.80, "simclr": 0.76, "simsiam": 0.74}[knobs["method"]] + 0.01 * math.log2(batch / 64) \
        + offset + rng.normal(0, 0.01)
    speed = 900 * (batch / 64) ** 0.5 * rng.uniform(0.95, 1.05)
    history = [{"epoch": epoch, "loss": 2.0 / epoch + rng.normal(0, 0.01), "lr": 0.06, "images_per_s": speed,
                "epoch_time_s": 5000 / speed, "knn_top1": accuracy - 0.1 / epoch,
                "momentum": 0.99 if knobs["method"] == "byol" else None} for epoch in (1, 2, 3)]
    metrics = {"knn_top1": accuracy, "knn_top1_best": accuracy + 0.01, "knn_top5": accuracy + 0.15,
               "linear_top1": accuracy + 0.02, "linear_top5": accuracy + 0.16, "images_per_s": speed,
               "step_time_median_s": batch / speed, "data_wait_fraction": 0.1, "peak_memory_bytes": 2e8 * batch / 64,
               "pretrain_time_s": 3 * 5000 / speed, "final_loss": history[-1]["loss"]}
    if status == "diverged":
        history[-1]["loss"] = float("inf")
        metrics = {**{key: None for key in metrics}, "pretrain_time_s": 40.0, "final_loss": float("inf")}
    return {
        "status": status, "config": make_config(knobs).to_dict(), "history": history, "metrics": metrics,
        "run": {"device": "cpu", "global_batch_size": batch, "pretrain_images": 5000, "train_images": 5000, "test_images": 2000,
                "total_steps": 3 * 5000 // batch, "peak_lr": 0.06 * batch / 128},
        "baselines": {"random_init_knn_top1": 0.31 + floor_rng.normal(0, 0.01), "random_init_knn_top5": 0.7,
                      "random_init_linear_top1": 0.45, "random_init_linear_top5": 0.9,
                      "raw_pixels_knn_top1": 0.78, "raw_pixels_knn_top5": 0.95},
        "provenance": {"device_name": "Test CPU", "threads": 1, "git_revision": "abc1234", "torch": "2.5.0",
                       "lightly": "1.5.20", "hostname": "ci", "time": "2025-01-01T00:00:00"},
        "embedding": {name: {"algorithm": "t-SNE", "labels": [index % 10 for index in range(30)],
                             "points": rng.normal(size=(30, 2)).tolist()} for name in ("random_init", "trained")},
    }


def planned_trials(methods=("byol", "simclr"), batch_sizes=(64, 128), seeds=(0, 1), fixed=FIXED) -> list[tuple[str, dict]]:
    """The grid a sweep would plan: momentum schedules crossed with BYOL only."""
    planned = []
    for method in methods:
        for batch_size in batch_sizes:
            for schedule in (("constant:0.99", "cosine:0.99-1.0") if method == "byol" else (None,)):
                for seed in seeds:
                    knobs = {**fixed, "method": method, "batch_size": batch_size, "seed": seed}
                    if schedule:
                        knobs["momentum_schedule"] = schedule
                    axes = [key for key in ("method", "batch_size", "momentum_schedule", "seed") if key in knobs]
                    trial_id = ",".join(f"{key}={knobs[key]}" for key in axes)
                    planned.append((trial_id, knobs))
    return planned


def write_sweep(folder: Path, planned, outcomes: dict | None = None, offset: float = 0.0,
                axes=("method", "batch_size")) -> Path:
    """A results folder as run_sweep leaves it; ``outcomes`` maps trial ids to failed/diverged/incomplete/missing."""
    outcomes = outcomes or {}
    trials, epochs, embeddings = [], [], []
    for trial_id, knobs in planned:
        outcome = outcomes.get(trial_id, "ok")
        if outcome == "missing":
            continue
        resolved = resolved_config(knobs)  # as the sweep records a trial's config
        if outcome in ("ok", "diverged"):
            result = TrialResult.from_dict(fake_result(knobs, outcome, offset))
            trials.append(trial_row(trial_id, resolved, outcome, result))
            epochs += epoch_rows(trial_id, result)
            embeddings += embedding_rows(trial_id, result)
        else:
            error = "RuntimeError: out of memory | while allocating 2 GiB" if outcome == "failed" else None
            trials.append(trial_row(trial_id, resolved, outcome, error=error))
    write_tables(folder, trials, epochs, embeddings)
    write_json(folder / "manifest.json", {
        "sweep": folder.name, "description": "A hand-built sweep for the report tests.", "axes": list(axes),
        "fixed": FIXED, "resources": {"cpu": 1, "gpu": 0}, "anchors": [ANCHOR],
        "grid": [{"trial_id": trial_id, "knobs": knobs} for trial_id, knobs in planned],
        "started": "2025-01-01T00:00:00", "finished": "2025-01-01T01:00:00",
        "complete": "incomplete" not in outcomes.values(),
    })
    return folder


OUTCOMES = {"method=byol,batch_size=64,momentum_schedule=constant:0.99,seed=1": "failed",
            "method=byol,batch_size=128,momentum_schedule=cosine:0.99-1.0,seed=1": "diverged",
            "method=simclr,batch_size=64,seed=1": "incomplete",
            "method=simclr,batch_size=128,seed=1": "missing"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A partial sweep (one trial of each kind that did not finish) and its report, made once."""
    folder = write_sweep(tmp_path_factory.mktemp("results") / "partial", planned_trials(), OUTCOMES)
    assert write_report(folder) == folder / "report.html"
    return folder


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def markdown_table(markdown: str, title: str) -> pd.DataFrame:
    """The pipe table under '### title' in report.md, as strings."""
    lines = markdown.split(f"### {title}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert not any(line.startswith("#") for line in lines[:start]), f"no table under '{title}'"
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    cells = [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]
    return pd.DataFrame(cells[2:], columns=cells[0])


def mean_and_interval(text: str) -> tuple[float, tuple | None]:
    """'mean [low, high]' or a lone value (one seed), as numbers."""
    mean, _, interval = text.partition(" [")
    return float(mean), tuple(map(float, interval.rstrip("]").split(", "))) if interval else None


def test_the_report_has_every_table_and_figure(sweep):
    markdown = read(sweep / "report.md")
    page = read(sweep / "report.html")
    for title in TABLES:
        assert f"### {title}\n\nProtocol: data set" in markdown, title
        assert f"<h3>{title}</h3>" in page
    assert markdown.count("Protocol: data set fashion-mnist (train subset 5000, test subset 2000), backbone small-cnn, "
                          "3 pretraining epochs; kNN k = 200, T = 0.1; linear probe 100 epochs at lr 0.01") == len(TABLES)
    assert "device cpu (Test CPU)" in markdown
    finished = pd.read_parquet(sweep / "trials.parquet").query("status == 'ok'")
    under = finished[finished["knn_top1"] < finished["raw_pixels_knn_top1"]]  # the fake floors: raw pixels at 0.78
    assert 0 < len(under) < len(finished)
    assert f"Under a floor ({len(under)} of {len(finished)} finished trials; a finding of this budget" in markdown
    for trial in under.itertuples():
        assert f"{trial.trial_id}: raw-pixel kNN ({trial.knn_top1:.3f} < {trial.raw_pixels_knn_top1:.3f})" in markdown
    for name in FIGURES:
        assert (sweep / "figures" / f"{name}.png").stat().st_size > 1000
        assert read(sweep / "figures" / f"{name}.svg").lstrip().startswith("<?xml")
        assert f"](figures/{name}.png)" in markdown
    assert "Not drawn" not in markdown
    assert page.count('<img src="data:image/png;base64,') == len(FIGURES)
    assert "CPU-hours" in markdown and "pretraining time × the 1 CPU reserved for each worker × workers" in markdown


def test_the_embedding_maps_show_random_init_then_one_finished_seed_per_method(sweep):
    results = load_results(sweep)
    figure = embedding_maps(results)
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["random init", "byol\nbatch 64, constant:0.99, seed 0", "simclr\nbatch 64, seed 0"]
    drawn = figure.axes[1].collections[0].get_offsets()
    trial = results.embeddings[(results.embeddings["trial_id"] == "method=byol,batch_size=64,momentum_schedule="
                                "constant:0.99,seed=0") & (results.embeddings["map"] == "trained")]
    assert np.allclose(drawn, trial[["x", "y"]].to_numpy())
    plt.close("all")


def test_the_floors_table_has_one_row_per_floor_setting(sweep, tmp_path):
    trials = pd.read_parquet(sweep / "trials.parquet")
    floors = markdown_table(read(sweep / "report.md"), "Floors: random-init backbone and raw pixels")
    assert floors[["data set", "subset", "backbone", "seed"]].values.tolist() == [
        ["fashion-mnist", "5000", "small-cnn", "0"], ["fashion-mnist", "5000", "small-cnn", "1"]]
    for seed, shown in zip((0, 1), floors["random-init kNN top-1 (%)"]):
        measured = trials.loc[trials["seed"] == seed, "random_init_knn_top1"].dropna()
        assert len(measured) > 1 and shown == f"{measured.iloc[0] * 100:.1f}"  # one floor, not a mean ± 0
    # Trials that evaluate differently have floors of their own: a column for the knob, a row per value.
    planned = [(f"knn_k={k}", {**FIXED, "method": "byol", "knn_k": k, "seed": 0}) for k in (200, 20)]
    write_report(write_sweep(tmp_path / "knn", planned))
    floors = markdown_table(read(tmp_path / "knn" / "report.md"), "Floors: random-init backbone and raw pixels")
    assert floors[["seed", "kNN k"]].values.tolist() == [["0", "20"], ["0", "200"]]


def test_the_accuracy_figures_draw_the_floors_as_labelled_lines(sweep):
    results = load_results(sweep)
    palette = method_palette(results.trials["method"].unique())

    def floor_lines(ax) -> dict:
        labels = {text.get_text() for text in ax.texts}
        return {line.get_label(): line.get_ydata()[0] for line in ax.lines if line.get_label() in labels}

    finished = results.finished
    figure = accuracy_vs_batch_size(results, palette)
    knn, linear = figure.axes
    assert floor_lines(knn) == pytest.approx({"random-init kNN": finished["random_init_knn_top1"].mean() * 100,
                                              "raw-pixel kNN": finished["raw_pixels_knn_top1"].mean() * 100})
    assert floor_lines(linear) == pytest.approx({"random-init linear": finished["random_init_linear_top1"].mean() * 100})
    for draw in (byol_vs_momentum, accuracy_vs_compute, training_curves):
        drawn = set().union(*map(floor_lines, draw(results, palette).axes))
        assert {"random-init kNN", "raw-pixel kNN"} <= drawn, draw.__name__
    assert floor_lines(throughput_vs_batch_size(results, palette).axes[0]) == {}
    results.trials["raw_pixels_knn_top1"] = None  # not measured (images above 32 px): no line
    assert set(floor_lines(accuracy_vs_batch_size(results, palette).axes[0])) == {"random-init kNN"}
    plt.close("all")


def test_numbers_in_the_report_are_the_means_over_seeds_of_the_table(sweep):
    trials = pd.read_parquet(sweep / "trials.parquet")
    finished = trials[trials["status"] == "ok"].assign(momentum_schedule=lambda t: t["momentum_schedule"].fillna("-"))
    groups = finished.groupby(["method", "batch_size", "momentum_schedule"])
    markdown = read(sweep / "report.md")
    shown = {}
    for title in ("Accuracy", "Speed and cost"):
        for _, row in markdown_table(markdown, title).iterrows():
            shown.setdefault((row["method"], int(row["batch size"]), row["momentum schedule"]), {}).update(row)
    assert len(shown) == 6  # byol × 2 batch sizes × 2 schedules, simclr × 2 batch sizes
    for key, group in groups:
        row = shown[key]
        for label, column, scale, tolerance in (("kNN top-1 (%)", "knn_top1", 100, 0.05),
                                                ("linear top-5 (%)", "linear_top5", 100, 0.05),
                                                ("images/s", "images_per_s", 1, 0.5)):
            mean, interval = mean_and_interval(row[label])
            values = group[column].to_numpy(float) * scale
            assert abs(mean - values.mean()) <= tolerance, (key, label)
            if len(group) > 1:  # the bootstrap interval of the mean of the seeds: within their range, around the mean
                expected = bootstrap_interval([values], mean_over_seeds)
                assert interval == pytest.approx(expected, abs=tolerance) and interval[0] <= mean <= interval[1]
                assert values.min() - tolerance <= interval[0] < interval[1] <= values.max() + tolerance, (key, label)
            else:
                assert interval is None, (key, label)
    assert shown[("byol", 128, "constant:0.99")]["n"] == "2"
    assert shown[("byol", 64, "constant:0.99")]["n"] == "1 of 2 (1 seed: no interval)"  # seed 1 failed
    assert shown[("simclr", 128, "-")]["n"] == "1 of 2 (1 seed: no interval)"  # seed 1 missing from the table


def test_published_anchors_stand_next_to_our_numbers(sweep):
    trials = pd.read_parquet(sweep / "trials.parquet")
    ours = trials[(trials["status"] == "ok") & (trials["method"] == "byol") & (trials["batch_size"] == 128)]
    anchors = markdown_table(read(sweep / "report.md"), "Published numbers next to ours")
    assert len(anchors) == 1
    row = anchors.iloc[0]
    assert row["published"] == "86.9" and row["source"] == ANCHOR["source"] and row["n"] == str(len(ours))
    assert abs(mean_and_interval(row["ours"])[0] - ours["knn_top1"].mean() * 100) <= 0.05


def test_anchors_are_compared_with_the_metric_they_name(tmp_path):
    """lightly reports the best epoch's kNN accuracy (knn_top1_best), an anchor may also give the final epoch's
    (knn_top1): each is set beside our number of that name, and the row says which."""
    folder = write_sweep(tmp_path / "anchors", planned_trials(methods=("byol",), batch_sizes=(128,)))
    manifest = json.loads(read(folder / "manifest.json"))
    manifest["anchors"] = [{**ANCHOR, "source": "final"},
                           {"method": "byol", "batch_size": 128, "knn_top1_best": 0.868, "source": "best"}]
    write_json(folder / "manifest.json", manifest)
    write_report(folder)
    anchors = markdown_table(read(folder / "report.md"), "Published numbers next to ours").set_index("source")
    assert anchors.loc["final", "metric"] == "kNN top-1, final epoch (%)"
    assert anchors.loc["best", "metric"] == "kNN top-1, best epoch (%)" and anchors.loc["best", "published"] == "86.8"
    trials = pd.read_parquet(folder / "trials.parquet")
    for source, column in (("final", "knn_top1"), ("best", "knn_top1_best")):
        assert abs(mean_and_interval(anchors.loc[source, "ours"])[0] - trials[column].mean() * 100) <= 0.05, source


def test_ten_methods_have_ten_colours_of_their_own_in_every_report():
    """Apart from each other and from the floors' grey, and each method's the same whatever else a report holds;
    legends and tables list the methods in the registry's order."""
    everyone = method_palette(list(METHODS))
    assert list(everyone) == list(METHODS) and len(set(everyone.values())) == len(METHODS)
    assert not any(len(set(colour[1:])) == 1 for colour in everyone.values() if colour != "#000000")  # no grey
    assert method_palette(["swav", "simclr"]) == {"simclr": everyone["simclr"], "swav": everyone["swav"]}
    older = method_palette(["byol", "mystery"])  # a method no longer registered still gets a colour of its own
    assert older["mystery"] not in everyone.values()


def test_trials_that_did_not_finish_are_listed_with_their_error(sweep):
    unfinished = markdown_table(read(sweep / "report.md"), "Failed, diverged, incomplete and missing trials")
    assert dict(zip(unfinished["trial"], unfinished["status"])) == OUTCOMES
    errors = dict(zip(unfinished["status"], unfinished["error"]))
    assert errors["failed"] == "RuntimeError: out of memory \\| while allocating 2 GiB"  # '|' escaped in Markdown
    assert "non-finite" in errors["diverged"] and "--resume" in errors["incomplete"] and "manifest" in errors["missing"]
    assert "RuntimeError: out of memory | while allocating 2 GiB" in read(sweep / "report.html")


def test_a_single_trial_json_gets_a_report_next_to_it(tmp_path, capsys):
    knobs = {**FIXED, "method": "simclr", "batch_size": 64, "seed": 3}
    result = fake_result(knobs)
    out = tmp_path / "x.json"
    write_json(out, result)
    assert load_results(out).trials["knn_top1"].tolist() == [result["metrics"]["knn_top1"]]
    assert list(tmp_path.iterdir()) == [out]  # reading writes nothing
    assert main(["report", str(out)]) == 0
    report = tmp_path / "x-report" / "report.html"
    assert capsys.readouterr().out.strip().endswith(str(report))
    markdown = read(report.with_suffix(".md"))
    row = markdown_table(markdown, "Accuracy").iloc[0]
    assert (row["method"], row["batch size"], row["momentum schedule"], row["n"]) == ("simclr", "64", "-",
                                                                                  "1 (1 seed: no interval)")
    assert row["kNN top-1 (%)"] == f"{result['metrics']['knn_top1'] * 100:.1f}"
    assert "Not drawn: no finished BYOL trials." in markdown
    assert "Not drawn: needs finished trials at two or more batch sizes (found 64)." in markdown
    assert "CPU-hours" in markdown and "the 1 CPU it used" in markdown
    drawn = {path.stem for path in (report.parent / "figures").glob("*.png")}
    assert drawn == {"training_curves", "embedding_maps"}  # its maps: the random-init one and its own
    assert "Every trial finished." in markdown


def test_two_sweeps_side_by_side(tmp_path, capsys):
    first = write_sweep(tmp_path / "first", planned_trials(batch_sizes=(64,)))
    second = write_sweep(tmp_path / "second", planned_trials(methods=("byol",), batch_sizes=(64,)), offset=0.03,
                         outcomes={"method=byol,batch_size=64,momentum_schedule=cosine:0.99-1.0,seed=0": "failed"})
    assert main(["report", str(first), str(second)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(first / "compare-second.html"))
    markdown = read(first / "compare-second.md")
    table = markdown_table(markdown, "A and B per method × batch size × momentum schedule")
    rows = table.set_index(["method", "momentum schedule"])
    means = {name: pd.read_parquet(folder / "trials.parquet").query("status == 'ok'")
             .groupby(["method", "momentum_schedule"])["knn_top1"].mean() * 100 for name, folder in
             (("A", first), ("B", second))}
    row = rows.loc[("byol", "constant:0.99")]
    a, b = means["A"][("byol", "constant:0.99")], means["B"][("byol", "constant:0.99")]
    assert abs(float(row["kNN top-1 (%) A"]) - a) <= 0.05 and abs(float(row["kNN top-1 (%) B"]) - b) <= 0.05
    assert abs(float(row["kNN top-1 (%) B − A"]) - (b - a)) <= 0.05 and row["kNN top-1 (%) B − A"].startswith("+")
    assert rows.loc[("byol", "cosine:0.99-1.0"), "n B"] == "1"
    assert rows.loc[("simclr", "-"), "kNN top-1 (%) B"] == "—"  # only A ran SimCLR
    assert "### B: second" in markdown and "out of memory" in markdown  # B's failed trial is shown
    assert "Protocols differ" not in markdown
    assert read(first / "compare-second.html").count("<table") == 2


def test_sources_with_different_protocols_are_compared_without_deltas(tmp_path):
    first = write_sweep(tmp_path / "short", planned_trials(batch_sizes=(64,)))
    longer = {**FIXED, "epochs": 10, "knn_k": 20}
    second = write_sweep(tmp_path / "long", planned_trials(batch_sizes=(64,), fixed=longer), offset=0.05)
    markdown = read(write_comparison(first, second).with_suffix(".md"))
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Protocols differ"
    warning = markdown.split("## Protocols differ\n\n", 1)[1].splitlines()[0]
    assert "not comparable" in warning
    assert "pretraining epochs 3 in A but 10 in B" in warning and "kNN k 200 in A but 20 in B" in warning
    assert "data set" not in warning  # only the knobs that differ
    table = markdown_table(markdown, "A and B per method × batch size × momentum schedule")
    for label in ("kNN top-1 (%)", "linear top-1 (%)", "images/s"):
        assert set(table[f"{label} B − A"]) == {""}
        assert "—" not in set(table[f"{label} A"]) | set(table[f"{label} B"])  # both sides' numbers are shown


def test_a_sweep_where_nothing_finished_still_gets_a_report(tmp_path):
    planned = planned_trials(seeds=(0,))
    outcomes = {trial_id: ("failed", "incomplete")[index % 2] for index, (trial_id, _) in enumerate(planned)}
    markdown = read(write_report(write_sweep(tmp_path / "dead", planned, outcomes)).with_suffix(".md"))
    unfinished = markdown_table(markdown, "Failed, diverged, incomplete and missing trials")
    assert dict(zip(unfinished["trial"], unfinished["status"])) == outcomes
    accuracy = markdown_table(markdown, "Accuracy")
    assert len(accuracy) == 6 and set(accuracy["n"]) == {"0 of 1"} and set(accuracy["kNN top-1 (%)"]) == {"—"}
    assert markdown.count("Not drawn:") == len(FIGURES)
    assert "No floors: no trial got as far as measuring them." in markdown
    assert not list((tmp_path / "dead" / "figures").iterdir())


def test_bad_inputs_are_one_line_user_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err
    assert "nowhere does not exist" in error and "results/<sweep>" in error and len(error.splitlines()) == 1
    with pytest.raises(UserError, match="holds no trials.parquet"):
        write_report(tmp_path)
    (tmp_path / "trials.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match="trials.parquet cannot be read as Parquet"):
        write_report(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json is not a readable JSON file"):
        write_report(tmp_path / "bad.json")


def test_the_heatmap_axes_can_be_chosen(sweep):
    with pytest.raises(UserError, match="heatmap axis 'colour' is not a column"):
        write_report(sweep, heatmap_axes=("method", "colour"))
    figure = heatmap(load_results(sweep), "momentum_schedule", "seed")
    assert [text.get_text() for text in figure.axes[0].get_xticklabels()] == ["0", "1"]
    assert [text.get_text() for text in figure.axes[0].get_yticklabels()] == ["-", "constant:0.99", "cosine:0.99-1.0"]
    plt.close(figure)
    assert heatmap(load_results(sweep), "dataset", "backbone") == \
        "needs finished trials at two or more values of dataset or backbone"


def test_pareto_front_keeps_the_points_nothing_beats():
    cost = pd.Series([1.0, 2.0, 3.0, 4.0, 4.0])
    accuracy = pd.Series([50.0, 60.0, 55.0, 70.0, 65.0])
    assert pareto_front(cost, accuracy).tolist() == [True, True, False, True, False]


# --- the page in a real browser ------------------------------------------------------------------


class DevTools:
    """Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe): no extra package.

    Chromium reads commands from its fd 3 and writes replies and events to its fd 4, each message
    JSON ended by a NUL byte.
    """

    def __init__(self, profile: Path, log: Path):
        self.log = log.open("w")
        commands_read, self.commands = os.pipe()
        self.replies, replies_write = os.pipe()

        def onto_fds_3_and_4():  # in the child, before exec; first out of the way, in case either is 3 or 4
            read, write = fcntl.fcntl(commands_read, fcntl.F_DUPFD, 10), fcntl.fcntl(replies_write, fcntl.F_DUPFD, 10)
            os.dup2(read, 3)  # dup2's copies are inheritable, so they survive exec (close_fds=False)
            os.dup2(write, 4)

        self.process = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1000",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, close_fds=False,
            preexec_fn=onto_fds_3_and_4)
        os.close(commands_read)
        os.close(replies_write)
        self.buffer, self.events, self.last_id = b"", [], 0

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.replies], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.replies, 1 << 20) if ready else b""
            if not chunk:
                raise TimeoutError("Chromium sent nothing in time (or exited)")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self.last_id:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(message.get("method") == event for message in self.events):
            self.events.append(self._receive(deadline))

    def close(self):
        self.process.kill()
        self.process.wait(timeout=30)
        os.close(self.commands)
        os.close(self.replies)
        self.log.close()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_the_html_report_renders_in_headless_chromium(sweep, tmp_path):
    from PIL import Image

    browser = DevTools(tmp_path / "profile", tmp_path / "chromium.log")
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable", session)
        browser.call("Page.navigate", session, url=(sweep / "report.html").as_uri())
        browser.wait_for("Page.loadEventFired")
        images = json.loads(browser.call(
            "Runtime.evaluate", session, returnByValue=True,
            expression="JSON.stringify([...document.images].map(i => [i.alt, i.complete, i.naturalWidth]))")["result"]["value"])
        screenshot = browser.call("Page.captureScreenshot", session, format="png")["data"]
    finally:
        browser.close()
    assert len(images) == len(FIGURES)
    assert all(complete and width > 0 for _, complete, width in images), images
    errors = [message for message in browser.events
              if (message.get("method") == "Runtime.consoleAPICalled" and message["params"]["type"] == "error")
              or message.get("method") == "Runtime.exceptionThrown"
              or (message.get("method") == "Log.entryAdded" and message["params"]["entry"]["level"] == "error")]
    assert errors == []
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(screenshot))).convert("L"))
    assert pixels.shape[1] >= 1000 and (pixels < 200).mean() > 0.005  # text and tables, not a blank page


def test_trials_that_differ_only_in_workers_are_separate_settings(tmp_path):
    """A scaling study at one global batch (128 on 1 worker, 64 × 2 workers) is two rows, not six seeds of one;
    a failed and a missing DDP trial (no run facts) join their global batch too."""
    planned = [(f"batch_size={batch},workers={workers},seed={seed}",
                {**FIXED, "method": "byol", "batch_size": batch, "workers": workers, "seed": seed})
               for batch, workers in ((128, 1), (64, 2)) for seed in (0, 1, 2)]
    folder = write_sweep(tmp_path / "scaling", planned, {"batch_size=64,workers=2,seed=1": "failed",
                                                         "batch_size=64,workers=2,seed=2": "missing"})
    write_report(folder)
    accuracy = markdown_table(read(folder / "report.md"), "Accuracy")
    assert accuracy[["batch size", "workers", "n"]].values.tolist() == [["128", "1", "3"],
                                                                      ["128", "2", "1 of 3 (1 seed: no interval)"]]
    results = load_results(folder)
    trials = results.trials.set_index("trial_id")
    assert trials.loc["batch_size=64,workers=2,seed=2", "status"] == "missing"
    assert trials.query("workers == 2")["batch_size"].tolist() == [64] * 3  # still the per-worker batch
    assert set(trials["global_batch_size"]) == {128}
    settings = results.epochs.groupby("setting")["trial_id"].nunique().to_dict()
    assert settings == {"batch 128, cosine:0.99-1.0": 3, "batch 128, cosine:0.99-1.0, 2 workers": 1}  # curves apart


def test_trials_that_differ_in_any_other_axis_are_separate_settings(tmp_path):
    """A sweep over the learning rate and SimCLR's temperature: each value its own row, curve and point, never
    averaged with the other as if it were a seed; a method that does not read the temperature shows '-'."""
    axes = ("method", "batch_size", "lr", "temperature", "seed")
    planned = []
    for method, batch, lr, temperature, seed in itertools.product(("byol", "simclr"), (64, 128), (0.2, 0.4),
                                                                  (0.1, 0.5), (0, 1)):
        knobs = {**FIXED, "method": method, "batch_size": batch, "lr": lr, "seed": seed}
        if method == "simclr":
            knobs["temperature"] = temperature
        elif temperature == 0.5:
            continue
        planned.append((",".join(f"{axis}={knobs[axis]}" for axis in axes if axis in knobs), knobs))
    folder = write_sweep(tmp_path / "knobs", planned, axes=axes)
    write_report(folder)
    markdown = read(folder / "report.md")
    assert "## Results per method × batch size × momentum schedule × lr × temperature" in markdown
    assert "method × global_batch_size; averaged over seeds, momentum schedule, lr, temperature" in markdown  # heatmap
    accuracy = markdown_table(markdown, "Accuracy").set_index(["method", "batch size", "lr", "temperature"])
    trials = pd.read_parquet(folder / "trials.parquet")
    trials["temperature"] = trials["temperature"].astype(object).fillna("-")
    expected = trials.groupby(["method", "batch_size", "lr", "temperature"])["knn_top1"].mean() * 100
    assert len(accuracy) == len(expected) == 12 and set(accuracy["n"]) == {"2"}
    for (method, batch, lr, temperature), mean in expected.items():
        shown = accuracy.loc[(method, str(batch), str(lr), str(temperature)), "kNN top-1 (%)"]
        assert abs(mean_and_interval(shown)[0] - mean) <= 0.05
    results = load_results(folder)
    assert results.epochs.groupby("setting")["trial_id"].nunique().to_dict()[
        "batch 64, lr 0.4, temperature 0.5"] == 2  # SimCLR's curve for that setting, apart from the others
    assert results.epochs["lr"].eq(0.06).all()  # the epochs' own lr column, not the axis's
    assert results.trials.query("method == 'byol'")["variant"].unique().tolist() == [
        "cosine:0.99-1.0, lr 0.2", "cosine:0.99-1.0, lr 0.4"]
    write_comparison(folder, folder)
    side_by_side = markdown_table(read(folder / "compare-knobs.md"),
                                  "A and B per method × batch size × momentum schedule × lr × temperature")
    assert len(side_by_side) == 12 and set(side_by_side["kNN top-1 (%) B − A"]) == {"+0.0"}
    printed = summary(pd.read_parquet(folder / "trials.parquet"), axes).splitlines()
    assert printed[0].split()[:6] == ["method", "batch_size", "momentum_schedule", "lr", "temperature", "seed"]
    assert len(printed) == 1 + len(planned)


def test_an_empty_knob_on_an_axis_reads_as_what_it_means(tmp_path):
    """subset: [1000, null] is two settings, the second one on the whole split: 'all' in the tables and the printed
    summary, never the '-' of a knob the method does not read."""
    planned = [(f"subset={subset},seed={seed}", {**FIXED, "method": "byol", "subset": subset, "seed": seed})
               for subset in (1000, None) for seed in (0, 1)]
    folder = write_sweep(tmp_path / "subsets", planned, axes=("subset", "seed"))
    write_report(folder)
    markdown = read(folder / "report.md")
    assert markdown_table(markdown, "Accuracy")[["subset", "n"]].values.tolist() == [["1000", "2"], ["all", "2"]]
    assert markdown_table(markdown, "Floors: random-init backbone and raw pixels")["subset"].tolist() == [
        "1000", "1000", "all", "all"]  # one row per seed
    assert "train subset 1000, all" in markdown
    printed = summary(pd.read_parquet(folder / "trials.parquet"), ["subset", "seed"]).splitlines()
    assert [line.split()[3] for line in printed[1:]] == ["all", "all", "1000", "1000"]  # the empty one first


def test_missing_trials_of_a_sweep_that_leaves_knobs_at_their_defaults_join_their_setting(tmp_path):
    """A sweep file without batch_size plans trials without it: a trial it never ran still belongs to batch 256."""
    planned = [(f"method={method},seed={seed}", {**FIXED, "method": method, "seed": seed})
               for method in ("byol", "simclr") for seed in (0, 1)]
    folder = write_sweep(tmp_path / "defaults", planned, {"method=simclr,seed=1": "missing"})
    write_report(folder)
    accuracy = markdown_table(read(folder / "report.md"), "Accuracy")
    assert accuracy[["method", "batch size", "momentum schedule", "n"]].values.tolist() == [
        ["byol", "256", "cosine:0.99-1.0", "2"], ["simclr", "256", "-", "1 of 2 (1 seed: no interval)"]]


def test_probability_of_improvement_and_seeds_needed_come_from_the_seeds(tmp_path):
    """P(A > B) is each batch size's Mann-Whitney U over n_A·n_B, averaged; the seeds needed follow the pooled
    seed-to-seed std; a ranking under the minimum effect is flagged; one seed a side has no interval."""
    from scipy import stats
    from statsmodels.stats.power import TTestIndPower

    folder = write_sweep(tmp_path / "three", planned_trials(seeds=(0, 1, 2)), {
        "method=simclr,batch_size=64,seed=1": "failed", "method=simclr,batch_size=64,seed=2": "failed"})
    assert main(["report", str(folder), "--acc-tol", "0.5"]) == 0
    trials = pd.read_parquet(folder / "trials.parquet").query("status == 'ok'")
    markdown = read(folder / "report.md")
    table = markdown_table(markdown, "Probability of improvement").set_index(["A", "B"])
    byol = trials[(trials["method"] == "byol") & (trials["momentum_schedule"] == "constant:0.99")]
    simclr = trials[trials["method"] == "simclr"]
    expected = np.mean([stats.mannwhitneyu(byol.loc[byol["batch_size"] == batch, "knn_top1"],
                                           simclr.loc[simclr["batch_size"] == batch, "knn_top1"]).statistic
                        / ((byol["batch_size"] == batch).sum() * (simclr["batch_size"] == batch).sum())
                        for batch in (64, 128)])
    row = table.loc[("byol, constant:0.99", "simclr")]
    assert row["P(A > B), kNN top-1"] == f"{expected:.2f} (1 seed: no interval)"  # simclr ran one seed at 64
    assert row["seeds (A, B)"] == "3, 1" and row["batch sizes"] == "64, 128"
    both = table.loc[("byol, cosine:0.99-1.0", "byol, constant:0.99"), "P(A > B), kNN top-1"]
    point, (low, high) = mean_and_interval(both)
    assert 0 <= low <= point <= high <= 1 and low < high
    needed = markdown_table(markdown, "Seeds needed").set_index("method")
    # BYOL's four settings all finished three seeds: the pooled variance is their variances' mean.
    pooled = np.sqrt(trials[trials["method"] == "byol"].groupby(["batch_size", "momentum_schedule"])["knn_top1"]
                     .var().mean()) * 100
    assert float(needed.loc["byol", "kNN top-1: std over seeds (points)"]) == pytest.approx(pooled, abs=0.005)
    assert int(needed.loc["byol", "kNN top-1: seeds needed"]) == max(
        2, math.ceil(TTestIndPower().solve_power(0.5 / pooled, alpha=0.05, power=0.8)))
    assert "an accuracy difference of 0.5 points (--acc-tol)" in markdown
    assert "Ranking warning (batch 64, kNN top-1):" in markdown  # simclr's one seed at batch 64
    assert (folder / "figures" / "probability_of_improvement.png").stat().st_size > 1000


def test_low_label_and_online_probe_accuracies_get_columns_where_measured(sweep, tmp_path):
    fixed = {**FIXED, "probe_label_fractions": [0.1, 1.0], "online_probe": True}
    trials = []
    for trial_id, knobs in planned_trials(methods=("simclr",), batch_sizes=(64,), seeds=(0, 1), fixed=fixed):
        result = fake_result(knobs)
        result["metrics"].update(knn_top1_10pct=0.5 + 0.01 * knobs["seed"], linear_top1_10pct=0.6,
                                 online_probe_top1=0.7)
        result["baselines"].update(random_init_knn_top1_10pct=0.3, random_init_linear_top1_10pct=0.4)
        trials.append(trial_row(trial_id, resolved_config(knobs), "ok", TrialResult.from_dict(result)))
    write_tables(tmp_path / "low", trials, [])
    write_report(tmp_path / "low")
    accuracy = markdown_table(read(tmp_path / "low" / "report.md"), "Online probe, fewer labels, transfer").iloc[0]
    assert mean_and_interval(accuracy["kNN top-1, 10% of labels (%)"]) == (50.5, (50.0, 51.0))
    assert accuracy["linear top-1, 10% of labels (%)"].startswith("60.0 [")
    assert accuracy["online probe top-1, last epoch (%)"].startswith("70.0 [")
    assert "100% of labels" not in read(tmp_path / "low" / "report.md")  # 1.0 is the plain kNN and linear top-1
    floors = markdown_table(read(tmp_path / "low" / "report.md"), "Their floors: the random-init backbone")
    assert floors["random-init linear top-1, 10% of labels (%)"].tolist() == ["40.0"] * 2  # a row per seed
    assert "random-init online probe" not in read(tmp_path / "low" / "report.md")
    assert "Their floors" not in read(sweep / "report.md")
    assert "Online probe, fewer labels, transfer" not in read(sweep / "report.md")



def test_legend_labels_elide_the_middle_of_long_settings_and_keep_them_apart():
    """A setting named by a long path made seaborn fail to lay out the training curves (a legend wider than the
    figure): legends show it shortened, unless two settings would then read alike."""
    paths = [f"data_dir /tmp/{'a-long-folder-name-' * 6}/{name}" for name in ("good", "corrupt")]
    short = legend_labels(["batch 16", *paths])
    assert short["batch 16"] == "batch 16"
    assert all(len(short[path]) <= LEGEND_LABEL_MAX and short[path].endswith(path[-10:]) for path in paths)
    alike = [f"{'x' * 60}{middle}{'y' * 60}" for middle in "ab"]
    assert legend_labels(alike) == {label: label for label in alike}


def test_two_sources_scored_on_different_splits_are_flagged_as_not_comparable(tmp_path, capsys):
    """A run scored on a validation split held out of train beside one scored on the test split: the protocols
    differ (protocol.PROTOCOL), so the comparison says so first and gives no B − A."""
    test_split = write_sweep(tmp_path / "test-split", planned_trials(methods=("simclr",), batch_sizes=(64,)))
    on_validation = {key: value for key, value in FIXED.items() if key != "test_subset"} | {"validation": 0.1}
    validation = write_sweep(tmp_path / "validation", planned_trials(methods=("simclr",), batch_sizes=(64,),
                                                                      fixed=on_validation))
    assert main(["report", str(test_split), str(validation)]) == 0
    markdown = read(test_split / "compare-validation.md")
    assert "## Protocols differ" in markdown and "validation split — in A but 0.1 in B" in markdown
    assert "test subset 2000 in A but all in B" in markdown


def test_a_result_written_before_its_floors_were_named_floors_still_reads():
    knobs = {**FIXED, "method": "simclr", "batch_size": 64, "seed": 0}
    old = fake_result(knobs)  # the floors under "baselines", as results before 2026-12-07 hold them
    new = {**{key: value for key, value in old.items() if key != "baselines"}, "floors": old["baselines"]}
    rows = [trial_row("t", resolved_config(knobs), "ok", TrialResult.from_dict(result)) for result in (old, new)]
    assert rows[0] == rows[1] and rows[0]["random_init_knn_top1"] == old["baselines"]["random_init_knn_top1"]


def test_a_result_json_written_by_the_version_before_the_typed_result_still_reads(tmp_path, capsys):
    """tests/fixtures/result-v1.json: `byol-bench train` at 83e9a99 (schema 1: no schema_version, floors under
    "baselines"). It reads as schema 2, its table row has every floor, and it reports."""
    written = json.loads(FIXTURE_V1.read_text())
    result = TrialResult.from_dict(written)
    assert "schema_version" not in written and result.schema_version == SCHEMA_VERSION == 2
    assert values(result.floors) == {**dict.fromkeys(columns(Floors)), **written["baselines"]}
    assert result.metrics.extra == {"knn_top1_25pct": written["metrics"]["knn_top1_25pct"],
                                    "linear_top1_25pct": written["metrics"]["linear_top1_25pct"]}
    again = result.to_dict()
    assert again["floors"] == {**dict.fromkeys(columns(Floors)), **written["baselines"]}
    assert {key: again["metrics"][key] for key in written["metrics"]} == written["metrics"]
    row = load_results(FIXTURE_V1).trials.iloc[0]
    assert row["random_init_linear_top1_25pct"] == written["baselines"]["random_init_linear_top1_25pct"]
    assert row["git_revision"] == written["provenance"]["git_revision"] and row["precision"] == written["run"]["precision"]
    copy = tmp_path / "old.json"
    copy.write_text(FIXTURE_V1.read_text())
    assert main(["report", str(copy)]) == 0
