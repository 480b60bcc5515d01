"""The report's figures. Each figure function returns a matplotlib figure, or a sentence saying why the
data cannot support it; ``save`` writes either as a Figure block."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window (set before pyplot is imported)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from byol_bench.models.methods import METHODS  # noqa: E402
from byol_bench.report.load import Results  # noqa: E402
from byol_bench.report.render import Figure  # noqa: E402
from byol_bench.report.tables import distinct, in_registry_order  # noqa: E402
from byol_bench.results.tables import write_atomic  # noqa: E402

# The floors each accuracy is read against: a method that does not beat them has learned nothing useful.
FLOOR_LINES = {"knn_top1": {"random_init_knn_top1": "random-init kNN", "raw_pixels_knn_top1": "raw-pixel kNN"},
               "linear_top1": {"random_init_linear_top1": "random-init linear"}}
FLOOR_CAPTION = "grey lines: the random-init and raw-pixel floors (mean over the trials drawn)"


def save(folder: Path, name: str, title: str, caption: str, figure) -> Figure:
    """Save a figure as PNG and SVG; ``figure`` may instead be the reason it cannot be drawn."""
    if isinstance(figure, str):
        for suffix in (".png", ".svg"):  # a file from an earlier report must not outlive its figure
            (folder / f"{name}{suffix}").unlink(missing_ok=True)
        return Figure(name, title, figure)
    svg, png = io.BytesIO(), io.BytesIO()
    figure.savefig(svg, format="svg", bbox_inches="tight", metadata={"Date": None})
    figure.savefig(png, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    write_atomic(folder / f"{name}.svg", svg.getvalue())
    write_atomic(folder / f"{name}.png", png.getvalue())
    return Figure(name, title, caption, png.getvalue())


# One colour per registered method, in the registry's order: apart for colour-blind readers and legible on white.
# seaborn's colorblind palette without its grey (the floors' colour), pale yellow, pale pink and tan (too close to
# the others), and brown, black, magenta and dark purple in their place.
METHOD_COLOURS = ("#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#8c564b", "#56b4e9", "#000000", "#e7298a",
                  "#591e71")


def method_palette(methods) -> dict:
    """One colour per method, the same in every figure and every report: a registered method's by its place in
    the registry (a plug-in's after the built-ins); any other method (from an older results folder) one of its own
    after them."""
    order = in_registry_order(methods)
    others = [method for method in order if method not in METHODS]
    beyond = len(METHODS) + len(others) - len(METHOD_COLOURS)  # plug-ins' methods, and ones no longer registered
    colours = [*METHOD_COLOURS, *sns.color_palette("husl", len(METHOD_COLOURS) + beyond)[len(METHOD_COLOURS):]]
    position = {method: index for index, method in enumerate([*METHODS, *others])}
    return {method: colours[position[method]] for method in order}


def _legend_outside(ax) -> None:
    """To the right of the axes, where it hides no data."""
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False)


def draw_floors(ax, trials: pd.DataFrame, accuracy: str) -> None:
    """The floors of an accuracy column (in %, the mean over ``trials``) as grey lines behind the data, each
    labelled at its left end (plain grey and solid: seaborn's dashes already tell momentum schedules apart).
    Drawn after the legend, which they stay out of."""
    for column, label in FLOOR_LINES[accuracy].items():
        floor = trials[column].astype(float).mean() * 100
        if np.isnan(floor):  # not measured: raw pixels only for small images
            continue
        ax.axhline(floor, color="0.6", linewidth=1, zorder=1, label=label)
        ax.annotate(label, (0, floor), xycoords=ax.get_yaxis_transform(), xytext=(4, 2), textcoords="offset points",
                    fontsize=8, color="0.3")


def _style(trials: pd.DataFrame) -> str:
    """The column a line's dashes or a point's marker follow: the momentum schedule, or where trials also differ
    in workers or the sweep's other axes, the whole variant."""
    return "variant" if trials["other_knobs"].any() else "momentum_schedule"


def _per_batch_size(finished: pd.DataFrame, panels: dict, palette: dict):
    """A panel per ``{column: (label, scale)}`` against the global batch (log2), a line per method and variant
    (momentum schedule, workers, the sweep's other axes); the floors in the accuracy panels."""
    if finished["global_batch_size"].nunique() < 2:
        return f"needs finished trials at two or more batch sizes (found {distinct(finished, 'global_batch_size', 'none')})"
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 2, 4), squeeze=False)
    batch_sizes = sorted(finished["global_batch_size"].unique())
    for index, (ax, (column, (label, scale))) in enumerate(zip(axes[0], panels.items())):
        sns.lineplot(finished.assign(value=finished[column] * scale), x="global_batch_size", y="value", hue="method",
                     hue_order=in_registry_order(finished["method"]), style=_style(finished), palette=palette,
                     markers=True, dashes=True, errorbar="sd",
                     err_style="bars", legend=index == len(panels) - 1, ax=ax)
        ax.set_xscale("log", base=2)
        ax.set_xticks(batch_sizes, [str(size) for size in batch_sizes])
        ax.minorticks_off()
        ax.set(xlabel="batch size", ylabel=label)
        if column in FLOOR_LINES:
            draw_floors(ax, finished, column)
    _legend_outside(ax)
    figure.tight_layout()
    return figure


def accuracy_vs_batch_size(results: Results, palette: dict):
    return _per_batch_size(results.finished, {"knn_top1": ("kNN top-1 (%)", 100),
                                              "linear_top1": ("linear top-1 (%)", 100)}, palette)


def throughput_vs_batch_size(results: Results, palette: dict):
    return _per_batch_size(results.finished, {"images_per_s": ("training images/s", 1)}, palette)


def byol_vs_momentum(results: Results, palette: dict):
    """BYOL's accuracy per momentum schedule, a shade of BYOL's colour per batch size (and other knobs)."""
    byol = results.finished[results.finished["method"] == "byol"]
    if byol.empty:
        return "no finished BYOL trials"
    if byol["momentum_schedule"].nunique() < 2:
        return ("needs finished BYOL trials with two or more momentum schedules "
                f"(found {distinct(byol, 'momentum_schedule')})")
    # One shade of BYOL's own colour per batch (and other knobs), so that the method keeps its colour; in the
    # settings' order (numbers as numbers: 512 before 1024).
    byol = byol.assign(batch=[f"{batch}, {knobs}" if knobs else str(batch)
                              for batch, knobs in zip(byol["global_batch_size"], byol["other_knobs"])])
    batches = [rows["batch"].iloc[0] for _, rows in byol.groupby(["global_batch_size", "workers", *results.other_axes])]
    shades = dict(zip(batches, sns.dark_palette(palette["byol"], len(batches) + 1, reverse=True)))
    schedules = sorted(byol["momentum_schedule"].unique())
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (column, label) in zip(axes, (("knn_top1", "kNN top-1 (%)"), ("linear_top1", "linear top-1 (%)"))):
        sns.pointplot(byol.assign(value=byol[column] * 100),
                      x="momentum_schedule", y="value", order=schedules, hue="batch", hue_order=batches,
                      palette=shades, errorbar="sd",
                      dodge=0.2 if len(batches) > 1 else False,  # seaborn divides by levels - 1
                      capsize=0.1, ax=ax)
        ax.set(xlabel="momentum schedule", ylabel=label)
        draw_floors(ax, byol, column)
    axes[0].get_legend().remove()  # the same legend twice: keep the right-hand one
    axes[1].get_legend().set_title("batch size" + (", knobs" if byol["other_knobs"].any() else ""))
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
    groups = (results.finished.groupby([*results.group, "variant", "other_knobs"], as_index=False)
              .agg(hours=("compute_hours", "mean"), accuracy=("knn_top1", "mean")).dropna())
    if len(groups) < 2:
        return "needs two or more finished settings with a pretraining time and a kNN accuracy"
    groups["accuracy"] *= 100
    front = groups[pareto_front(groups["hours"], groups["accuracy"])].sort_values("hours")
    figure, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(groups, x="hours", y="accuracy", hue="method", hue_order=in_registry_order(groups["method"]),
                    style=_style(groups), palette=palette, s=70, ax=ax)
    ax.plot(front["hours"], front["accuracy"], drawstyle="steps-post", color="0.35", linestyle="--", label="Pareto front")
    ax.scatter(front["hours"], front["accuracy"], s=220, facecolors="none", edgecolors="0.35")
    for row in front.itertuples():
        ax.annotate(f"b{row.global_batch_size}", (row.hours, row.accuracy), xytext=(6, -12), textcoords="offset points",
                    fontsize=8)
    if groups["hours"].max() > 10 * groups["hours"].min():
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set(xlabel=f"{results.compute_unit} per trial ({results.compute_basis})", ylabel="kNN top-1 (%)")
    ax.legend()
    _legend_outside(ax)
    draw_floors(ax, results.finished, "knn_top1")
    figure.tight_layout()
    return figure


LEGEND_LABEL_MAX = 48  # characters: seaborn fails to lay out a figure whose legend is wider than the figure itself


def legend_labels(labels) -> dict:
    """Each label shortened to fit a legend, its middle elided (a setting's path, say), unless two would read alike."""
    half = LEGEND_LABEL_MAX // 2
    short = {label: label if len(label) <= LEGEND_LABEL_MAX else f"{label[:half - 1]}…{label[-half:]}"
             for label in labels}
    return short if len(set(short.values())) == len(short) else {label: label for label in labels}


# Per-epoch accuracies the training curves draw where a trial recorded them, each against its floors.
MONITORS = {"knn_top1": ("kNN top-1 (%, monitor)", "knn_top1"),
            "online_probe_top1": ("online probe top-1 (%)", "linear_top1")}


def training_curves(results: Results, palette: dict):
    """Loss, and the kNN monitor and the online probe in % where they ran (with the kNN or linear floors), per
    epoch: a row per method, a column per curve."""
    if results.epochs["loss"].notna().sum() == 0:
        return "no per-epoch rows (epochs.parquet, or the trial JSON's history, is missing or empty)"
    curves = {"loss": "training loss"}
    epochs = results.epochs
    for column, (label, _) in MONITORS.items():
        if column in epochs and epochs[column].notna().any():
            curves[column] = label
            epochs = epochs.assign(**{column: epochs[column] * 100})
    long = (epochs.melt(id_vars=["trial_id", "method", "setting", "epoch"], value_vars=list(curves),
                        var_name="curve", value_name="value").dropna(subset=["value"]))
    long["curve"] = long["curve"].map(curves)
    long["setting"] = long["setting"].map(legend_labels(long["setting"].unique()))
    methods = in_registry_order(long["method"])
    grid = sns.relplot(long, kind="line", x="epoch", y="value", row="method", row_order=methods, col="curve",
                       col_order=list(curves.values()), hue="method", hue_order=methods, style="setting",
                       palette=palette, markers=True, errorbar="sd", height=2.2, aspect=1.8,
                       facet_kws={"sharey": False, "margin_titles": True})
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    grid.set_ylabels("")
    floors_of = {label: floors for label, floors in MONITORS.values()}
    for (method, curve), ax in grid.axes_dict.items():
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if curve in floors_of:
            draw_floors(ax, results.trials[results.trials["method"] == method], floors_of[curve])
    return grid.figure


def heatmap(results: Results, rows: str, columns: str):
    """Mean kNN top-1 over two trial columns."""
    finished = results.finished.dropna(subset=["knn_top1"])
    table = finished.pivot_table(index=rows, columns=columns, values="knn_top1", aggfunc="mean") * 100
    if table.size < 2:
        return f"needs finished trials at two or more values of {rows} or {columns}"
    if rows == "method":  # the registry's order, as in every other figure
        table = table.reindex(in_registry_order(table.index))
    figure, ax = plt.subplots(figsize=(2 + 1.1 * table.shape[1], 1.5 + 0.6 * table.shape[0]))
    sns.heatmap(table, annot=True, fmt=".1f", cmap="viridis", cbar_kws={"label": "mean kNN top-1 (%)"}, ax=ax)
    ax.set(xlabel=columns, ylabel=rows)
    ax.tick_params(axis="y", rotation=0)  # method names read across
    figure.tight_layout()
    return figure


def improvement_probabilities(improvements: pd.DataFrame):
    """P(A > B) per pair of contenders with its 95% interval, a panel per ranked accuracy (rliable's figure);
    a pair with one seed a side at some batch size is a hollow point without a bar; one with one seed a side at every
    batch size is not drawn (not tested)."""
    improvements = improvements.dropna(subset=["p"])
    if improvements.empty:
        return ("needs two or more methods (or variants) with finished trials at a common batch size, and more than "
                "one seed a side at one of them")
    metrics = list(dict.fromkeys(improvements["metric"]))
    pairs = list(dict.fromkeys(zip(improvements["a"], improvements["b"])))
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics) + 3, 1.2 + 0.4 * len(pairs)), sharey=True,
                                squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = improvements[improvements["metric"] == metric]
        y = [pairs.index(pair) for pair in zip(rows["a"], rows["b"])]
        for position, p, interval in zip(y, rows["p"], rows["interval"]):
            if interval is None:
                ax.plot(p, position, "o", mfc="none", color="0.35")
            else:
                ax.errorbar(p, position, xerr=[[p - interval[0]], [interval[1] - p]], fmt="o", color="#0173b2",
                            capsize=3)
        ax.axvline(0.5, color="0.6", linewidth=1, zorder=0)
        ax.set(xlim=(-0.02, 1.02), xlabel=f"P(A > B), {metric}")
    axes[0][0].set_yticks(range(len(pairs)), [f"{a} > {b}" for a, b in pairs])
    axes[0][0].invert_yaxis()
    figure.tight_layout()
    return figure


def search_trace(results: Results, palette: dict):
    """Each method's search: the validation kNN top-1 of every search trial in the order they were sampled, a
    filled marker for a trial that trained every epoch, a hollow one (labelled with its last epoch) for one
    ASHA stopped early, a ring around the chosen one."""
    search = results.search.dropna(subset=["knn_top1"])
    if search.empty:
        return "no search trial reported a validation kNN"
    methods = in_registry_order(search["method"])
    figure, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods) + 1, 3.4), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        trials = search[search["method"] == method].assign(value=lambda frame: frame["knn_top1"] * 100)
        full, early = trials[~trials["stopped_early"]], trials[trials["stopped_early"]]
        ax.scatter(full["trial"], full["value"], color=palette[method], s=40, label="every epoch")
        ax.scatter(early["trial"], early["value"], facecolors="none", edgecolors=palette[method], s=40,
                   label="stopped early")
        for row in early.itertuples():
            ax.annotate(f"e{row.epochs}", (row.trial, row.value), xytext=(4, -10), textcoords="offset points",
                        fontsize=7, color="0.3")
        best = trials[trials["chosen"]]
        ax.scatter(best["trial"], best["value"], s=200, facecolors="none", edgecolors="0.2", label="chosen")
        ax.set(title=method, xlabel="search trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("validation kNN top-1 (%)")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    figure.tight_layout()
    return figure


def embedding_maps(results: Results):
    """Small multiples of the embedding maps, coloured by class: the random-init backbone's, then one trial's per
    method (its lowest finished seed, at its first setting)."""
    maps = results.embeddings
    chosen = results.finished[results.finished["trial_id"].isin(set(maps["trial_id"]))]
    if chosen.empty:
        return "no finished trial drew an embedding map (set embedding_map: true)"
    chosen = chosen.sort_values(["seed", "global_batch_size", "setting"]).drop_duplicates("method")
    chosen = chosen.set_index("method").loc[in_registry_order(chosen["method"])]
    first = chosen["trial_id"].iloc[0]
    panels = [("random init", maps[(maps["trial_id"] == first) & (maps["map"] == "random_init")])]
    panels += [(f"{method}\n{trial.setting}, seed {trial.seed}", maps[(maps["trial_id"] == trial.trial_id)
                                                                     & (maps["map"] == "trained")])
               for method, trial in chosen.iterrows()]
    figure, axes = plt.subplots(1, len(panels), figsize=(2.8 * len(panels) + 1.5, 3.2), squeeze=False)
    for ax, (title, points) in zip(axes[0], panels):
        sns.scatterplot(points, x="x", y="y", hue="label", palette="tab10", s=6, linewidth=0, legend=ax is axes[0][-1],
                        ax=ax)
        ax.set(title=title, xticks=[], yticks=[], xlabel="", ylabel="")
    sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False, title="class", markerscale=2)
    figure.tight_layout()
    return figure


def history_series(points: pd.DataFrame, changes: pd.DataFrame):
    """One metric's runs against the revision, a panel per source, protocol and machine type (series of other
    machines or protocols are never drawn together), a colour per setting: each run a dot, the levels between change
    points a step line with its noise band, each change point a dashed line labelled with its size."""
    if points.empty:
        return "no runs of this metric"
    panel_keys = ["source", "protocol", "machine"]
    panels = list(points.groupby(panel_keys, sort=False))
    figure, axes = plt.subplots(len(panels), 1, figsize=(11, 3.4 * len(panels)), squeeze=False)
    for ax, (panel, runs) in zip(axes[:, 0], panels):
        revisions = list(dict.fromkeys(runs["revision"]))  # the runs come oldest commit first
        position = runs["revision"].map({revision: index for index, revision in enumerate(revisions)})
        colours = dict(zip(runs["setting"].unique(), sns.color_palette("colorblind", runs["setting"].nunique())))
        for setting, rows in runs.groupby("setting", sort=False):
            x, band = position[rows.index], 2 * rows["noise"]
            ax.scatter(x, rows["value"], color=colours[setting], s=14, label=setting, zorder=3)
            ax.step(x, rows["level"], where="mid", color=colours[setting], linewidth=1)
            ax.fill_between(x, rows["level"] - band, rows["level"] + band, step="mid", color=colours[setting],
                            alpha=0.15)
        for change in changes.merge(runs[["setting", "metric", *panel_keys]].drop_duplicates()).itertuples():
            at = revisions.index(change.after_revision) - 0.5
            ax.axvline(at, color=colours[change.setting], linestyle="--", linewidth=1)
            ax.annotate(f"{change.change_percent:+.0f}%", (at, 1), xycoords=ax.get_xaxis_transform(), xytext=(2, -10),
                        textcoords="offset points", fontsize=8, color=colours[change.setting])
        ax.set_xticks(range(len(revisions)), [revision[:7] for revision in revisions], rotation=45, fontsize=7)
        ax.set_title(" · ".join(panel), fontsize=9)
        ax.set(xlabel="revision (oldest commit first)", ylabel=runs["metric"].iloc[0])
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    figure.tight_layout()
    return figure
