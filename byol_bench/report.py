"""Comparison reports: a sweep's tables (or one trial's JSON) as tables and figures, in HTML and Markdown.

``write_report(source)`` reads ``results/<sweep>/`` (trials.parquet, epochs.parquet, manifest.json) or
one ``byol-bench train --out`` JSON and writes ``report.html`` (self-contained: figures embedded as
PNG), ``report.md`` and ``figures/<name>.png|svg``. ``write_comparison(a, b)`` puts two sources side
by side in ``compare-<b>.html|md`` inside a's report folder.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window (set before pyplot is imported)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from byol_bench.config import TrialConfig  # noqa: E402
from byol_bench.errors import UserError  # noqa: E402
from byol_bench.methods import METHODS, applicable  # noqa: E402
from byol_bench.results import FLOORS, METRICS, epoch_rows, trial_row, write_tables  # noqa: E402

# One row of every results table. batch_size is the global batch; trials that differ only in their DDP
# workers (a scaling study at one global batch) are different settings, not seeds of one.
GROUP = ["method", "batch_size", "momentum_schedule", "workers"]
NO_SCHEDULE = "-"  # the momentum schedule of a method without a target network
SOURCE_HINT = "give a sweep results folder (results/<sweep>) or a trial JSON written by 'byol-bench train --out'"

# label: (column, scale, decimals). Accuracies and fractions are shown in %.
ACCURACY_COLUMNS = {"kNN top-1 (%)": ("knn_top1", 100, 1), "kNN top-5 (%)": ("knn_top5", 100, 1),
                    "linear top-1 (%)": ("linear_top1", 100, 1), "linear top-5 (%)": ("linear_top5", 100, 1)}
FLOOR_COLUMNS = {"random-init kNN top-1 (%)": ("random_init_knn_top1", 100, 1),
                 "random-init kNN top-5 (%)": ("random_init_knn_top5", 100, 1),
                 "random-init linear top-1 (%)": ("random_init_linear_top1", 100, 1),
                 "random-init linear top-5 (%)": ("random_init_linear_top5", 100, 1),
                 "raw-pixels kNN top-1 (%)": ("raw_pixels_knn_top1", 100, 1),
                 "raw-pixels kNN top-5 (%)": ("raw_pixels_knn_top5", 100, 1)}
COST_COLUMNS = {"images/s": ("images_per_s", 1, 0), "step time (ms)": ("step_time_median_s", 1000, 1),
                "data wait (%)": ("data_wait_fraction", 100, 1), "peak memory (MiB)": ("peak_memory_bytes", 2**-20, 0),
                "pretraining (s)": ("pretrain_time_s", 1, 1)}
COMPARED = {"kNN top-1 (%)": ("knn_top1", 100, 1), "linear top-1 (%)": ("linear_top1", 100, 1),
            "images/s": ("images_per_s", 1, 0)}
PROVENANCE_COLUMNS = ["device_name", "threads", "git_revision", "torch", "lightly", "hostname"]
STATUS_MEANING = {"diverged": "the loss became non-finite; training stopped",
                  "collapsed": "the projections collapsed (effective rank below the threshold; see effective_rank)",
                  "incomplete": "started but did not finish (the sweep was interrupted; resume it with --resume)",
                  "missing": "in the manifest's grid but absent from trials.parquet",
                  "failed": "failed without an error message"}


# --- loading -------------------------------------------------------------------------------------


@dataclass
class Results:
    """One source's trials (every status) and epochs, with what the report needs filled in."""

    name: str
    source: Path
    report_dir: Path  # where this source's report files go
    trials: pd.DataFrame
    epochs: pd.DataFrame
    manifest: dict
    compute_unit: str  # "CPU-hours" or "GPU-hours", the unit of the trials' compute_hours column
    compute_basis: str  # how compute_hours was reckoned

    @property
    def finished(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "ok"]


def load_results(source: Path) -> Results:
    """A sweep results folder, or one trial JSON (whose tables are first written to ``<stem>-report/``)."""
    source = Path(source)
    if source.is_dir():
        return _load_tables(source, source.name, source)
    if source.is_file():
        return _load_trial_json(source)
    raise UserError(f"{source} does not exist; {SOURCE_HINT}")


def _load_trial_json(path: Path) -> Results:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not a readable JSON file ({error}); {SOURCE_HINT}") from None
    if not isinstance(result, dict) or not isinstance(result.get("config"), dict) or "status" not in result:
        raise UserError(f"{path} holds no 'status' and 'config'; {SOURCE_HINT}")
    report_dir = _writable(path.with_name(f"{path.stem}-report"))
    row = trial_row(path.stem, applicable(result["config"]), result["status"], result)
    write_tables(report_dir, [row], epoch_rows(path.stem, result))
    return _load_tables(report_dir, path.stem, path)


def _load_tables(folder: Path, name: str, source: Path) -> Results:
    trials_path, epochs_path = folder / "trials.parquet", folder / "epochs.parquet"
    if not trials_path.is_file():
        raise UserError(f"{folder} holds no trials.parquet; {SOURCE_HINT} (a sweep writes it when it ends; "
                        "finish an interrupted one with 'byol-bench sweep FILE --resume')")
    trials = _read_parquet(trials_path)
    trials["workers"] = trials["workers"].fillna(1).astype(int) if "workers" in trials else 1  # tables before DDP
    lacking = [column for column in ("trial_id", "status", "error", *GROUP, *METRICS, *FLOORS) if column not in trials]
    if lacking:
        raise UserError(f"{trials_path} lacks the columns {', '.join(lacking)}; it was not written by "
                        "'byol-bench sweep': re-run the sweep")
    no_epochs = pd.DataFrame(columns=["trial_id", "epoch", "loss"])
    epochs = _read_parquet(epochs_path) if epochs_path.is_file() else no_epochs
    manifest = _read_manifest(folder / "manifest.json")
    trials = _with_missing_trials(trials, manifest)
    trials["momentum_schedule"] = trials["momentum_schedule"].fillna(NO_SCHEDULE)
    # DDP trials: the batch that matters is the global one (per worker x workers)
    trials["batch_size"] = (trials["batch_size"] * trials["workers"]).astype(int)
    trials["setting"] = [f"batch {batch}" + ("" if schedule == NO_SCHEDULE else f", {schedule}")
                         + ("" if workers == 1 else f", {workers} workers")
                         for batch, schedule, workers in zip(trials["batch_size"], trials["momentum_schedule"],
                                                             trials["workers"])]
    hours, unit, basis = _compute_hours(trials, manifest)
    trials["compute_hours"] = hours
    # The axes come from the trials table, so they carry its filled-in defaults.
    epochs = trials[["trial_id", *GROUP, "setting"]].merge(
        epochs.drop(columns=[column for column in (*GROUP, "seed") if column in epochs]), on="trial_id")
    epochs = epochs.replace([np.inf, -np.inf], np.nan)  # a diverged trial's last loss
    return Results(name, source, folder, trials, epochs, manifest, unit, basis)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} cannot be read as Parquet ({reason}); re-run the sweep to rewrite it") from None


def _read_manifest(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); restore it or delete it to report without it") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} must hold a JSON object; restore it or delete it to report without it")
    return manifest


def _writable(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the report folder {folder} ({error.strerror}); check its permissions") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the report into {folder}; check its permissions")
    return folder


def _with_missing_trials(trials: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    """Trials the manifest's grid plans that the table lacks, as rows with status 'missing'."""
    recorded, defaults = set(trials["trial_id"]), TrialConfig().to_dict()
    # Resolved as a recorded trial's config is: the defaults under its knobs, the knobs its method never reads blank.
    absent = [{"trial_id": planned["trial_id"], "status": "missing",
               **{key: value for key, value in applicable({**defaults, **planned.get("knobs", {})}).items() if key in trials}}
              for planned in manifest.get("grid") or [] if planned["trial_id"] not in recorded]
    return pd.concat([trials, pd.DataFrame(absent)], ignore_index=True) if absent else trials


def _compute_hours(trials: pd.DataFrame, manifest: dict) -> tuple[pd.Series, str, str]:
    """Pretraining time × what a trial held: GPU-hours when trials had GPUs, else CPU-hours."""
    resources = manifest.get("resources")
    workers = trials["workers"]
    if resources:  # a sweep: what Ray reserved for each worker of a trial
        gpus, cpus, held = resources.get("gpu", 0), resources.get("cpu", 1), "reserved for each worker"
    else:  # one trial: the device it ran on and its torch threads
        gpus = int(trials["device"].astype(str).str.startswith("cuda").any())
        cpus, held = trials["threads"].max() if trials["threads"].notna().any() else 1, "it used"
    if gpus:
        return (trials["pretrain_time_s"] * gpus * workers / 3600, "GPU-hours",
                f"pretraining time × the {gpus:g} GPU {held} × workers")
    return (trials["pretrain_time_s"] * cpus * workers / 3600, "CPU-hours",
            f"pretraining time × the {cpus:g} CPU {held} × workers")


# --- tables --------------------------------------------------------------------------------------


def _text(value) -> str:
    """A value as a table shows it: whole numbers without '.0', nothing as '—'."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _mean_std(values: pd.Series, scale: float, decimals: int) -> str:
    values = values.dropna().astype(float) * scale
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.{decimals}f}"
    return f"{values.mean():.{decimals}f} ± {values.std():.{decimals}f}"


def _distinct(trials: pd.DataFrame, column: str, empty: str = "—") -> str:
    """The column's different values, in order, as one string."""
    values = set(trials[column].dropna()) if column in trials else set()
    try:
        ordered = sorted(values)  # numbers in numeric order
    except TypeError:  # a column mixing kinds of values
        ordered = sorted(values, key=str)
    return ", ".join(_text(value) for value in ordered) or empty


def protocol(results: Results) -> str:
    """The protocol every number in the tables was measured with (several values where trials differ)."""
    trials = results.finished if not results.finished.empty else results.trials

    def value(column: str, empty: str = "—") -> str:
        return _distinct(trials, column, empty)

    return (f"Protocol: data set {value('dataset')} (train subset {value('subset', 'all')}, test subset "
            f"{value('test_subset', 'all')}), backbone {value('backbone')}, {value('epochs')} pretraining epochs; "
            f"kNN k = {value('knn_k')}, T = {value('knn_t')}; linear probe {value('probe_epochs')} epochs at lr "
            f"{value('probe_lr')} on frozen features; device {value('device')} ({value('device_name')}).")


def per_group(results: Results, columns: dict) -> pd.DataFrame:
    """One row per method × batch size × momentum schedule (× workers, shown when a trial has more than
    one): mean ± std over its finished seeds.

    Every group appears, also one whose trials all failed; n reads "k of m" when only k of its m
    trials finished.
    """
    rows, ddp = [], results.trials["workers"].max() > 1
    for (method, batch_size, schedule, workers), group in results.trials.groupby(GROUP, sort=True):
        finished = group[group["status"] == "ok"]
        row = {"method": method, "batch size": batch_size, "momentum schedule": schedule, **({"workers": workers} if ddp else {}),
               "n": str(len(finished)) if len(finished) == len(group) else f"{len(finished)} of {len(group)}"}
        row.update({label: _mean_std(finished[column], scale, decimals)
                    for label, (column, scale, decimals) in columns.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def anchor_table(results: Results) -> pd.DataFrame | None:
    """The manifest's published numbers next to ours: an anchor's keys that are trial columns select
    our finished trials, its accuracy keys are the published values (fractions, like ours)."""
    metrics = {column: label for label, (column, _, _) in ACCURACY_COLUMNS.items()}
    rows = []
    for anchor in results.manifest.get("anchors") or []:
        selection = {key: value for key, value in anchor.items() if key in results.trials and key not in metrics}
        matched = results.finished
        for key, value in selection.items():
            matched = matched[matched[key] == value]
        for column in (column for column in metrics if column in anchor):
            rows.append({"setting": ", ".join(f"{key} {value}" for key, value in selection.items()),
                         "metric": metrics[column], "published": f"{anchor[column] * 100:.1f}",
                         "ours": _mean_std(matched[column], 100, 1), "n": str(matched[column].notna().sum()),
                         "source": str(anchor.get("source", ""))})
    return pd.DataFrame(rows) if rows else None


def unfinished_table(results: Results) -> pd.DataFrame:
    """Every trial that is not 'ok', with its error text (or what its status means)."""
    unfinished = results.trials[results.trials["status"] != "ok"]
    return pd.DataFrame({
        "trial": unfinished["trial_id"], "status": unfinished["status"],
        "error": [error if isinstance(error, str) and error else STATUS_MEANING.get(status, "—")
                  for error, status in zip(unfinished["error"], unfinished["status"])],
    })


def status_counts(results: Results) -> str:
    total, counts = len(results.trials), results.trials["status"].value_counts()
    return f"{total} trial{'s' if total != 1 else ''}: " + ", ".join(f"{n} {status}" for status, n in counts.items())


# --- figures -------------------------------------------------------------------------------------
# Each figure function returns a matplotlib figure, or a sentence saying why the data cannot support it.


def _legend_outside(ax) -> None:
    """To the right of the axes, where it hides no data."""
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False)


def method_palette(methods) -> dict:
    """One colour per method, the same in every figure: the registry's order first, then any other."""
    order = [method for method in METHODS if method in set(methods)] + sorted(set(methods) - set(METHODS))
    return dict(zip(order, sns.color_palette("colorblind", len(order))))


def _per_batch_size(finished: pd.DataFrame, panels: dict, palette: dict):
    """A panel per ``{column: (label, scale)}`` against batch size (log2), a line per method and momentum schedule."""
    if finished["batch_size"].nunique() < 2:
        return f"needs finished trials at two or more batch sizes (found {_distinct(finished, 'batch_size', 'none')})"
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 2, 4), squeeze=False)
    batch_sizes = sorted(finished["batch_size"].unique())
    for index, (ax, (column, (label, scale))) in enumerate(zip(axes[0], panels.items())):
        sns.lineplot(finished.assign(value=finished[column] * scale), x="batch_size", y="value", hue="method",
                     style="momentum_schedule", palette=palette, markers=True, dashes=True, errorbar="sd",
                     err_style="bars", legend=index == len(panels) - 1, ax=ax)
        ax.set_xscale("log", base=2)
        ax.set_xticks(batch_sizes, [str(size) for size in batch_sizes])
        ax.minorticks_off()
        ax.set(xlabel="batch size", ylabel=label)
    _legend_outside(ax)
    figure.tight_layout()
    return figure


def accuracy_vs_batch_size(results: Results, palette: dict):
    return _per_batch_size(results.finished, {"knn_top1": ("kNN top-1 (%)", 100),
                                              "linear_top1": ("linear top-1 (%)", 100)}, palette)


def throughput_vs_batch_size(results: Results, palette: dict):
    return _per_batch_size(results.finished, {"images_per_s": ("training images/s", 1)}, palette)


def byol_vs_momentum(results: Results, palette: dict):
    """BYOL's accuracy per momentum schedule, a shade of BYOL's colour per batch size."""
    byol = results.finished[results.finished["method"] == "byol"]
    if byol.empty:
        return "no finished BYOL trials"
    if byol["momentum_schedule"].nunique() < 2:
        return ("needs finished BYOL trials with two or more momentum schedules "
                f"(found {_distinct(byol, 'momentum_schedule')})")
    batch_sizes = [str(size) for size in sorted(byol["batch_size"].unique())]
    # Shades of BYOL's own colour, so that the method keeps its colour; one shade per batch size.
    shades = dict(zip(batch_sizes, sns.dark_palette(palette["byol"], len(batch_sizes) + 1, reverse=True)))
    schedules = sorted(byol["momentum_schedule"].unique())
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (column, label) in zip(axes, (("knn_top1", "kNN top-1 (%)"), ("linear_top1", "linear top-1 (%)"))):
        sns.pointplot(byol.assign(value=byol[column] * 100, batch=byol["batch_size"].astype(str)),
                      x="momentum_schedule", y="value", order=schedules, hue="batch", hue_order=batch_sizes,
                      palette=shades, errorbar="sd", dodge=0.2 if len(batch_sizes) > 1 else False,  # seaborn divides by levels - 1
                      capsize=0.1, ax=ax)
        ax.set(xlabel="momentum schedule", ylabel=label)
    axes[0].get_legend().remove()  # the same legend twice: keep the right-hand one
    axes[1].get_legend().set_title("batch size")
    _legend_outside(axes[1])
    figure.tight_layout()
    return figure


def pareto_front(cost: pd.Series, value: pd.Series) -> pd.Series:
    """True where no other point is at most as costly and at least as good (one of them strictly)."""
    on_front = pd.Series(False, index=cost.index)
    best = -np.inf
    for index in pd.DataFrame({"cost": cost, "value": -value}).sort_values(["cost", "value"]).index:
        if value.loc[index] > best:
            on_front.loc[index], best = True, value.loc[index]
    return on_front


def accuracy_vs_compute(results: Results, palette: dict):
    """Each setting's mean kNN accuracy against its mean compute, with the Pareto front marked."""
    groups = (results.finished.groupby(GROUP, as_index=False)
              .agg(hours=("compute_hours", "mean"), accuracy=("knn_top1", "mean")).dropna())
    if len(groups) < 2:
        return "needs two or more finished settings with a pretraining time and a kNN accuracy"
    groups["accuracy"] *= 100
    front = groups[pareto_front(groups["hours"], groups["accuracy"])].sort_values("hours")
    figure, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(groups, x="hours", y="accuracy", hue="method", style="momentum_schedule", palette=palette, s=70, ax=ax)
    ax.plot(front["hours"], front["accuracy"], drawstyle="steps-post", color="0.35", linestyle="--", label="Pareto front")
    ax.scatter(front["hours"], front["accuracy"], s=220, facecolors="none", edgecolors="0.35")
    for row in front.itertuples():
        ax.annotate(f"b{row.batch_size}", (row.hours, row.accuracy), xytext=(6, -12), textcoords="offset points", fontsize=8)
    if groups["hours"].max() > 10 * groups["hours"].min():
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set(xlabel=f"{results.compute_unit} per trial ({results.compute_basis})", ylabel="kNN top-1 (%)")
    ax.legend()
    _legend_outside(ax)
    figure.tight_layout()
    return figure


def training_curves(results: Results, palette: dict):
    """Loss (and the kNN monitor, where it ran) per epoch: a column per method, a row per curve."""
    if results.epochs["loss"].notna().sum() == 0:
        return "no per-epoch rows (epochs.parquet is missing or empty)"
    curves = {"loss": "training loss"}
    if "knn_top1" in results.epochs and results.epochs["knn_top1"].notna().any():
        curves["knn_top1"] = "kNN top-1 (monitor)"
    long = (results.epochs.melt(id_vars=["trial_id", "method", "setting", "epoch"], value_vars=list(curves),
                                var_name="curve", value_name="value").dropna(subset=["value"]))
    long["curve"] = long["curve"].map(curves)
    grid = sns.relplot(long, kind="line", x="epoch", y="value", row="curve", col="method", hue="method", style="setting",
                       palette=palette, markers=True, errorbar="sd", height=2.8, aspect=1.3,
                       facet_kws={"sharey": False, "margin_titles": True})
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    grid.set_ylabels("")
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return grid.figure


def heatmap(results: Results, rows: str, columns: str):
    """Mean kNN top-1 over two trial columns."""
    finished = results.finished.dropna(subset=["knn_top1"])
    table = finished.pivot_table(index=rows, columns=columns, values="knn_top1", aggfunc="mean") * 100
    if table.size < 2:
        return f"needs finished trials at two or more values of {rows} or {columns}"
    figure, ax = plt.subplots(figsize=(2 + 1.1 * table.shape[1], 1.5 + 0.6 * table.shape[0]))
    sns.heatmap(table, annot=True, fmt=".1f", cmap="viridis", cbar_kws={"label": "mean kNN top-1 (%)"}, ax=ax)
    ax.set(xlabel=columns, ylabel=rows)
    figure.tight_layout()
    return figure


# --- documents -----------------------------------------------------------------------------------


@dataclass
class Table:
    title: str
    frame: pd.DataFrame
    above: str = ""  # the protocol, or what the table holds


@dataclass
class Figure:
    name: str  # the file stem under figures/
    title: str
    caption: str
    png: bytes | None = None  # None: skipped, for the reason in caption


Section = tuple[str, list]  # a heading and its blocks: paragraphs (str), Tables and Figures


def _escape_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for block in blocks:
            if isinstance(block, Table):
                lines += [f"### {block.title}", ""] + ([block.above, ""] if block.above else [])
                frame = block.frame
                lines.append("| " + " | ".join(map(_escape_cell, frame.columns)) + " |")
                lines.append("|" + "---|" * len(frame.columns))
                lines += ["| " + " | ".join(map(_escape_cell, row)) + " |" for row in frame.itertuples(index=False)]
                lines.append("")
            elif isinstance(block, Figure) and block.png is not None:
                lines += [f"### {block.title}", "", f"![{block.title}](figures/{block.name}.png)", "",
                          f"{block.caption} ([SVG](figures/{block.name}.svg))", ""]
            elif isinstance(block, Figure):
                lines += [f"### {block.title}", "", f"*Not drawn: {block.caption}.*", ""]
            else:
                lines += [block, ""]
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td:not(:last-child) { white-space: nowrap; }
th { background: #f2f2f2; }
.above { color: #555; font-size: 0.9em; }
.skipped { color: #a33; font-style: italic; }
figure { margin: 1em 0 2em; }
img { max-width: 100%; }
"""


def to_html(title: str, sections: list[Section]) -> str:
    escape = html.escape
    parts = [f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>',
             # An empty icon: the browser asks for no favicon file, which a report folder has not.
             f'<link rel="icon" href="data:,"><style>{STYLE}</style></head><body>', f"<h1>{escape(title)}</h1>"]
    for heading, blocks in sections:
        parts.append(f"<h2>{escape(heading)}</h2>")
        for block in blocks:
            if isinstance(block, Table):
                parts.append(f"<h3>{escape(block.title)}</h3>")
                if block.above:
                    parts.append(f'<p class="above">{escape(block.above)}</p>')
                parts.append(block.frame.to_html(index=False, border=0, escape=True))
            elif isinstance(block, Figure) and block.png is not None:
                data = base64.b64encode(block.png).decode("ascii")
                parts.append(f'<h3>{escape(block.title)}</h3><figure><img src="data:image/png;base64,{data}" '
                             f'alt="{escape(block.title)}"><figcaption>{escape(block.caption)} '
                             f'(<a href="figures/{block.name}.svg">SVG</a>)</figcaption></figure>')
            elif isinstance(block, Figure):
                parts.append(f'<h3>{escape(block.title)}</h3><p class="skipped">Not drawn: {escape(block.caption)}.</p>')
            else:
                parts.append(f"<p>{escape(block)}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _write_documents(folder: Path, stem: str, title: str, sections: list[Section]) -> Path:
    (folder / f"{stem}.md").write_text(to_markdown(title, sections), encoding="utf-8")
    path = folder / f"{stem}.html"
    path.write_text(to_html(title, sections), encoding="utf-8")
    return path


def _draw(folder: Path, name: str, title: str, caption: str, figure) -> Figure:
    """Save a figure as PNG and SVG; ``figure`` may instead be the reason it cannot be drawn."""
    if isinstance(figure, str):
        for suffix in (".png", ".svg"):  # a file from an earlier report must not outlive its figure
            (folder / f"{name}{suffix}").unlink(missing_ok=True)
        return Figure(name, title, figure)
    figure.savefig(folder / f"{name}.svg", bbox_inches="tight", metadata={"Date": None})
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    (folder / f"{name}.png").write_bytes(buffer.getvalue())
    return Figure(name, title, caption, buffer.getvalue())


# --- the reports ---------------------------------------------------------------------------------


def _overview(results: Results) -> list[str]:
    manifest = results.manifest
    lines = [f"Source: {results.source}. {status_counts(results)}."]
    if manifest:
        resources = ", ".join(f"{count:g} {kind.upper()}" for kind, count in (manifest.get("resources") or {}).items())
        lines.insert(0, manifest.get("description") or f"Sweep {manifest.get('sweep', results.name)}.")
        lines.append(f"Started {manifest.get('started')}, finished {manifest.get('finished') or 'not recorded'}; "
                     f"complete: {manifest.get('complete')}. Resources per worker: {resources or 'not recorded'}.")
    lines.append("Accuracies are in %, as mean ± std over the finished seeds; n counts those seeds "
                 "('k of m' when only k of a setting's m trials finished).")
    return lines


def _figures(results: Results, folder: Path, rows: str, columns: str) -> list[Figure]:
    palette = method_palette(results.trials["method"].unique())
    seeds = "error bars ±1 std over seeds"
    return [
        _draw(folder, "accuracy_vs_batch_size", "Accuracy vs batch size",
              f"kNN and linear top-1 per method against batch size (log2); {seeds}",
              accuracy_vs_batch_size(results, palette)),
        _draw(folder, "byol_vs_momentum", "BYOL accuracy vs momentum schedule",
              f"BYOL's kNN and linear top-1 per momentum schedule, a shade per batch size; {seeds}",
              byol_vs_momentum(results, palette)),
        _draw(folder, "throughput_vs_batch_size", "Throughput vs batch size",
              f"training images/s per method against batch size (log2); {seeds}",
              throughput_vs_batch_size(results, palette)),
        _draw(folder, "accuracy_vs_compute", f"Accuracy vs {results.compute_unit}",
              f"mean kNN top-1 per setting against {results.compute_unit} ({results.compute_basis}); "
              "the dashed line joins the Pareto front (ringed, labelled with the batch size)",
              accuracy_vs_compute(results, palette)),
        _draw(folder, "training_curves", "Training curves",
              "training loss per epoch and, where --knn-monitor-every was set, the kNN monitor's top-1 "
              "(fraction); mean and ±1 std over seeds", training_curves(results, palette)),
        _draw(folder, "heatmap", f"Mean kNN top-1: {rows} × {columns}",
              f"mean kNN top-1 (%) over finished trials, {rows} × {columns}", heatmap(results, rows, columns)),
    ]


def _regression_checks(folder: Path) -> list:
    """The verdicts of every `byol-bench compare` run against this sweep as the candidate."""
    from byol_bench.compare import notes, verdict_table

    blocks = []
    for path in sorted(folder.glob("regression-vs-*.json")):
        comparison = json.loads(path.read_text(encoding="utf-8"))
        blocks.append(Table(f"Against baseline {comparison['baseline']}", verdict_table(comparison)))
        blocks += notes(comparison)
    return blocks or ["None yet: `byol-bench compare BASELINE this-folder` adds its verdicts here."]


def write_report(source: Path, heatmap_axes: tuple[str, str] = ("method", "batch_size")) -> Path:
    """Tables and figures for a sweep folder or a trial JSON; returns the path of report.html."""
    results = load_results(source)
    for axis in heatmap_axes:
        if axis not in results.trials:
            raise UserError(f"heatmap axis '{axis}' is not a column of the trials table; choose config keys "
                            "such as method, batch_size, momentum_schedule, seed")
    above = protocol(results)
    anchors = anchor_table(results)
    unfinished = unfinished_table(results)
    cost = {**COST_COLUMNS, results.compute_unit: ("compute_hours", 1, 3)}
    provenance = pd.DataFrame({"what": PROVENANCE_COLUMNS,
                               "values": [_distinct(results.trials, column) for column in PROVENANCE_COLUMNS]})
    sections = [
        ("Overview", _overview(results)),
        ("Results per method × batch size × momentum schedule", [
            Table("Accuracy", per_group(results, ACCURACY_COLUMNS), above),
            Table("Published numbers next to ours", anchors, above) if anchors is not None
            else "No published numbers: " + ("the manifest records no anchors (add 'anchors' to the sweep file)."
                                             if results.manifest else "a single trial has no manifest to record them."),
            Table("Speed and cost", per_group(results, cost), f"{above} {results.compute_unit}: {results.compute_basis}."),
            Table("Floors: random-init backbone and raw pixels", per_group(results, FLOOR_COLUMNS), above),
        ]),
        ("Trials that did not finish", [Table("Failed, diverged, incomplete and missing trials", unfinished, above)
                                        if len(unfinished) else "Every trial finished."]),
        ("Regression checks", _regression_checks(results.report_dir)),
        ("Figures", _figures(results, _writable(results.report_dir / "figures"), *heatmap_axes)),
        ("Provenance", [Table("Devices, versions and hosts of the trials", provenance)]),
    ]
    return _write_documents(results.report_dir, "report", f"byol-bench report: {results.name}", sections)


def _group_means(results: Results) -> pd.DataFrame:
    """n and the mean of each compared column over the finished seeds, per method × batch size × schedule."""
    means = {column: (column, "mean") for column, _, _ in COMPARED.values()}
    return results.finished.groupby(GROUP).agg(n=("trial_id", "size"), **means)


def comparison_table(first: Results, second: Results) -> pd.DataFrame:
    """Groups matched by method, batch size, momentum schedule and workers: A's and B's means and B − A."""
    both = _group_means(first).merge(_group_means(second), how="outer", left_index=True, right_index=True,
                                     suffixes=("_a", "_b")).reset_index()
    table = pd.DataFrame({"method": both["method"], "batch size": both["batch_size"],
                          "momentum schedule": both["momentum_schedule"], "workers": both["workers"],
                          "n A": both["n_a"].map(_text), "n B": both["n_b"].map(_text)})
    if (table["workers"] == 1).all():
        table = table.drop(columns="workers")
    for label, (column, scale, decimals) in COMPARED.items():
        a, b = both[f"{column}_a"] * scale, both[f"{column}_b"] * scale
        for side, values, spec in (("A", a, f".{decimals}f"), ("B", b, f".{decimals}f"), ("B − A", b - a, f"+.{decimals}f")):
            table[f"{label} {side}"] = ["—" if np.isnan(value) else format(value, spec) for value in values]
    return table


def write_comparison(first: Path, second: Path) -> Path:
    """Two sources side by side, written into the first one's report folder; returns the HTML path."""
    a, b = load_results(first), load_results(second)
    unfinished = [Table(f"{side}: {results.name}", unfinished_table(results))
                  for side, results in (("A", a), ("B", b)) if (results.trials["status"] != "ok").any()]
    sections = [
        ("Sources", [f"A: {a.source}. {status_counts(a)}. {protocol(a)}",
                     f"B: {b.source}. {status_counts(b)}. {protocol(b)}",
                     "Means over finished seeds; a setting only one side ran shows — on the other."]),
        ("Side by side", [Table("A and B per method × batch size × momentum schedule", comparison_table(a, b))]),
        ("Trials that did not finish", unfinished or ["Every trial of both finished."]),
    ]
    return _write_documents(_writable(a.report_dir), f"compare-{b.name}",
                            f"byol-bench comparison: {a.name} vs {b.name}", sections)
