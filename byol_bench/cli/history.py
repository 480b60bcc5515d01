"""``byol-bench history`` and its subcommands: series and change points over revisions; check, add, backfill,
bisect."""

from __future__ import annotations

import argparse
from pathlib import Path


def history_dir(args) -> Path:
    """One rule for where the history lives: ``<results-dir>/history``, beside the sweeps that append to it
    (``history.history_beside``), unless --history-dir names another folder."""
    from byol_bench.regression.history import HISTORY_DIR

    return Path(args.history_dir) if args.history_dir else Path(args.results_dir) / HISTORY_DIR.name


def cmd_history(args) -> int:
    from byol_bench.regression.history import load_history, select, series_points, summary_table
    from byol_bench.report.regression import write_history_report

    folder = history_dir(args)
    points, changes = series_points(select(load_history(folder), args.metric, args.series))
    print(summary_table(points, changes).to_string(index=False))
    print(f"report: {write_history_report(folder, points, changes)}")
    return 0


def cmd_history_check(args) -> int:
    from byol_bench.regression.history import load_history, regressions, select, series_points

    _, changes = series_points(select(load_history(history_dir(args)), args.metric, args.series))
    found = regressions(changes, args.tolerance)
    for change in found.itertuples():
        print(f"REGRESSED {change.source} · {change.setting} · {change.metric} on {change.machine}: "
              f"{change.change_percent:+.1f}% between {change.before_revision[:12]} and {change.after_revision[:12]}")
    print(f"{len(found)} series regressed beyond {args.tolerance:g}% at their latest change point")
    return 1 if len(found) else 0


def cmd_history_add(args) -> int:
    from byol_bench.regression.history import append, bench_entry, sweep_entry

    for source in map(Path, args.sources):
        entry = sweep_entry(source) if source.is_dir() else bench_entry(source)
        added = append(entry, history_dir(args))
        print(f"{source}: {'appended' if added else 'in the history already'} ({len(entry)} values)")
    return 0


def cmd_history_backfill(args) -> int:
    from byol_bench.regression.backfill import backfill

    listed, failed = backfill(args.revisions, Path(args.sweep), history_dir(args), args.paths)
    print(f"backfill done; the sweep failed at {len(failed)} of {len(listed)} revision(s)"
          + (f": {', '.join(r[:12] for r in failed)}" if failed else ""))
    return 1 if len(failed) == len(listed) else 0  # nothing measured


def cmd_history_bisect(args) -> int:
    from byol_bench.regression.backfill import bisect

    found, baseline = bisect(args.revisions, Path(args.sweep), args.metric, args.setting, args.tolerance,
                             history_dir(args), args.paths)
    if found is None:
        print(f"bisect: {args.metric} of {args.setting} at the range's end is within {args.tolerance:g}% of "
              f"{baseline:.4g}: no regression to find")
        return 0
    print(f"bisect: the first regressed revision is {found[:12]} ({args.metric} of {args.setting} worse than "
          f"{baseline:.4g} by more than {args.tolerance:g}%)")
    return 1


def _history_options(parser: argparse.ArgumentParser, subcommand: bool, selects: bool = True) -> None:
    """The history commands' options, given before or after the subcommand (a subcommand's default leaves the
    history parser's value in place); ``selects``: --metric and --series too."""
    default = (lambda value: argparse.SUPPRESS) if subcommand else (lambda value: value)
    parser.add_argument("--results-dir", default=default("results"), help="the results folder whose history/ this "
                        "is, where its sweeps append themselves (default: results, so results/history)")
    parser.add_argument("--history-dir", default=default(None), help="a history folder elsewhere than "
                        "<results-dir>/history (e.g. make bench's)")
    if not selects:
        return
    parser.add_argument("--metric", default=default(None), help="one metric's series, e.g. images_per_s, knn_top1, "
                                                                "median_s (a benchmark's; default: every metric)")
    parser.add_argument("--series", metavar="FILTER", default=default(None),
                        help="only series whose sweep or setting contains FILTER, e.g. 'method=byol'")


def add_history_parser(commands) -> None:
    """``byol-bench history`` and its subcommands: check, add, backfill, bisect."""
    history = commands.add_parser("history", help="every sweep and 'make bench' run over revisions: series, change "
                                                  "points, a report; check, add, backfill, bisect")
    _history_options(history, subcommand=False)
    history.set_defaults(run=cmd_history)
    history_commands = history.add_subparsers(dest="history_command", parser_class=type(history))
    check = history_commands.add_parser("check", help="exit 1 when a series' latest change point is a regression "
                                                      "beyond the tolerance (for CI)")
    _history_options(check, subcommand=True)
    check.add_argument("--tolerance", type=float, default=5.0, metavar="PERCENT",
                       help="smallest regression that fails the check, in %% of the level before (default 5)")
    check.set_defaults(run=cmd_history_check)
    add = history_commands.add_parser("add", help="append finished sweeps (results/<sweep>) or pytest-benchmark JSONs "
                                                  "(results/benchmarks/*/*.json) to the history")
    add.add_argument("sources", nargs="+", metavar="SOURCE")
    _history_options(add, subcommand=True, selects=False)
    add.set_defaults(run=cmd_history_add)
    backfill = history_commands.add_parser("backfill", help="run a sweep at each revision of a range, each in a git "
                                                            "worktree, and append the results")
    backfill.add_argument("revisions", metavar="REV1..REV2", help="a git range: the revisions after REV1 up to REV2")
    backfill.add_argument("--sweep", required=True, metavar="FILE",
                          help="a small sweep file (it runs once per revision)")
    backfill.add_argument("--paths", nargs="+", default=["byol_bench"], metavar="PATH",
                          help="skip revisions that change none of these paths (default: byol_bench)")
    _history_options(backfill, subcommand=True, selects=False)
    backfill.set_defaults(run=cmd_history_backfill)
    bisect = history_commands.add_parser("bisect", help="find the first revision of a range where a sweep's metric "
                                                        "got worse (a binary search, each step a sweep in a worktree)")
    bisect.add_argument("revisions", metavar="GOOD..BAD", help="a git range: the baseline, then the revisions after "
                                                                "it up to BAD")
    bisect.add_argument("--sweep", required=True, metavar="FILE", help="a small sweep file (it runs once per step)")
    bisect.add_argument("--metric", required=True, help="the metric that got worse, e.g. knn_top1 or images_per_s")
    bisect.add_argument("--setting", required=True, metavar="TEXT",
                        help="the setting whose metric got worse, e.g. 'method=byol' (part of one setting's name)")
    bisect.add_argument("--tolerance", type=float, default=5.0, metavar="PERCENT",
                        help="how much worse than at GOOD counts as regressed, in %% (default 5)")
    bisect.add_argument("--paths", nargs="+", default=["byol_bench"], metavar="PATH",
                        help="skip revisions that change none of these paths (default: byol_bench)")
    _history_options(bisect, subcommand=True, selects=False)
    bisect.set_defaults(run=cmd_history_bisect)
