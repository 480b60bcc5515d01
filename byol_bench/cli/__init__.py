"""The ``byol-bench`` command line. Every UserError ends as one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import Field, fields
from pathlib import Path

from byol_bench.cli.history import add_history_parser
from byol_bench.cli.models import add_model_parsers
from byol_bench.config import KEYS, OPTION_KNOBS, TrialConfig, folded, knob_types, make_config, parse_options, read_yaml
from byol_bench.errors import UserError
from byol_bench.regression.stats import MIN_EFFECT_POINTS
from byol_bench.results.tables import check_writable, write_atomic, write_json, write_json_or_fallback

DESCRIPTION = """\
Benchmark self-supervised learning methods for vision (BYOL, SimCLR, SimSiam, MoCo, Barlow Twins,
VICReg, NNCLR, DCL, DINO, SwAV): accuracy above the random-init and raw-pixel floors, speed and
memory, over grids of trials that Ray Tune runs on this machine or on a cluster.

The usual flow:
  byol-bench sweep benchmarks/sweeps/quick.yaml     a grid of trials: results/quick/, with a report
  byol-bench report results/quick                   its tables and figures again (given two: side by side)
  byol-bench baseline save results/quick --as main  keep it as the baseline 'main'
  byol-bench sweep benchmarks/sweeps/quick.yaml --results-dir results/new
                                                    after a change, the same grid again
  byol-bench compare main results/new/quick         verdicts against the baseline; exit 1 on regression
  byol-bench train --method simclr --epochs 4       or just one trial, written as one JSON result
"""
EPILOG = """\
Exit status: 0 done; 1 a trial failed or compare found a regression; 2 bad input (one line on
stderr, nothing written); 130 interrupted. 'byol-bench COMMAND --help' lists a command's options.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        raise UserError(f"{message}; see '{self.prog} --help'")


def _version() -> str:
    """This package's version and torch's and lightly's, read from the installed metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("byol-bench", "torch", "lightly"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return f"byol-bench {found['byol-bench']} (torch {found['torch']}, lightly {found['lightly']})"


def flag(key: str) -> str:
    """A config key's command-line flag: --batch-size; an options knob's, given once per option: --method-option."""
    return f"--{key.replace('_', '-')}".removesuffix("s" if key in OPTION_KNOBS else "")


def _add_knob_flag(parser: argparse.ArgumentParser, knob: Field) -> None:
    """``--knob-name VALUE`` for a config field; its text is typed and checked by make_config, as YAML is."""
    rule, kinds = knob.metadata, knob_types(knob.name)
    if rule["choices"] or bool in kinds:  # a knob of bool or text (compile) takes one word more: auto
        metavar = "{" + ",".join(rule["choices"] or ("true", "false", *(["auto"] if str in kinds else []))) + "}"
    else:
        metavar = "TEXT" if kinds[0] is str else kinds[0].__name__.upper()
    notes = [f"> {rule['above']}"] if rule["above"] is not None else []
    notes += [f">= {rule['at_least']}"] if rule["at_least"] is not None else []
    if knob.default is not None:
        notes.append(f"default: {str(knob.default).lower() if isinstance(knob.default, bool) else knob.default}")
    if rule["options"]:  # one flag per option, repeated: --method-option tau=0.1 --method-option weight=2
        parser.add_argument(flag(knob.name), dest=knob.name, action="append", metavar="NAME=VALUE", help=rule["help"])
        return
    parser.add_argument(flag(knob.name), dest=knob.name, metavar=metavar,
                        help=f"{rule['help']} ({'; '.join(notes)})" if notes else rule["help"])


def cmd_train(args) -> int:
    from dataclasses import replace

    import torch.distributed as dist

    from byol_bench.trial.distributed import join_torchrun, rank
    from byol_bench.results.weights import keep_weights, train_weights_paths
    from byol_bench.trial.run import resolve_device, run_trial
    from byol_bench.trial.weights import backbone_bytes

    values = read_yaml(args.config) if args.config else {}
    if isinstance(values.get("config"), dict) and "status" in values:  # a trial's result JSON: run its config again
        values = {key: value for key, value in values["config"].items() if value is not None}
    for key in KEYS:
        given = getattr(args, key)
        if isinstance(given, list):  # an options knob's flags, each name=value, over the config file's options
            values[key] = {**folded(values).get(key, {}), **parse_options(key, ",".join(given))}
        elif given is not None:
            values[key] = given
    cfg = make_config(values)
    out = Path(args.out or f"results/trials/{cfg.method}-{cfg.dataset}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    if dist.is_torchelastic_launched():  # one rank of torchrun's: join its group, on this rank's GPU
        cfg = replace(cfg, device=str(join_torchrun(resolve_device(cfg.device))))
    writes = rank() == 0  # every rank returns the same result; one writes it
    if writes:
        check_writable(out, "output path", "choose another --out", file=True)
    weights = []
    result = run_trial(cfg, save_backbone=lambda backbone: weights.append(backbone_bytes(backbone, {"trial": out.stem})))
    if dist.is_initialized():  # a rank that failed has exited above, and torchrun stopped the others
        dist.destroy_process_group()
    if not writes:
        return 0 if result.status == "ok" else 1
    written = write_json_or_fallback(out, result.to_dict())
    print(f"wrote {written}")
    if weights and written == out:
        print(f"wrote {keep_weights(weights[0], result, out.stem, *train_weights_paths(out))} and its model card")
    return 0 if result.status == "ok" and written == out else 1


def cmd_sweep(args) -> int:
    from byol_bench.plan.sweep_file import describe, expand, load_sweep
    from byol_bench.on_ray.sweep import run_sweep

    sweep = load_sweep(args.file)
    if sweep.search:
        raise UserError(f"{args.file} has a search section: run it with 'byol-bench tune {args.file}'")
    if args.max_concurrent is not None and (args.max_concurrent < 1 or args.resume):
        raise UserError("--max-concurrent takes a number >= 1 and applies to a new sweep (Ray keeps a resumed "
                        "sweep's own); leave it out with --resume")
    if args.resume and (args.track or args.tracking_uri):
        raise UserError("--track and --tracking-uri apply to a new sweep (a resumed sweep logs to the trackers it "
                        "started with); leave them out with --resume")
    if args.dry_run:
        print(describe(sweep, expand(sweep)))
        return 0
    return run_sweep(sweep, Path(args.results_dir), address=args.address, resume=args.resume,
                     max_concurrent=args.max_concurrent, storage=args.storage, track=args.track,
                     tracking_uri=args.tracking_uri, verbose=args.verbose)


def cmd_tune(args) -> int:
    from byol_bench.plan.tune_file import describe_search, load_tune
    from byol_bench.on_ray.tuning import run_tune

    search = load_tune(args.file)
    if args.resume and (args.track or args.tracking_uri):
        raise UserError("--track and --tracking-uri apply to a new tune (a resumed one logs to the trackers it "
                        "started with); leave them out with --resume")
    if args.dry_run:
        print(describe_search(search))
        return 0
    return run_tune(search, Path(args.results_dir), address=args.address, resume=args.resume, track=args.track,
                    tracking_uri=args.tracking_uri, verbose=args.verbose)


def cmd_baseline_save(args) -> int:
    from byol_bench.regression.compare import save_baseline

    print(f"saved {save_baseline(args.sweep, args.name, Path(args.baselines_dir))}")
    return 0


def cmd_compare(args) -> int:
    from byol_bench.regression.compare import Tolerances, compare_runs, load_run
    from byol_bench.report.regression import to_markdown

    baselines = Path(args.baselines_dir)
    baseline, candidate = load_run(args.baseline, baselines), load_run(args.candidate, baselines)
    tolerances = Tolerances(acc_points=args.acc_tol, speed_percent=args.speed_tol, memory_percent=args.memory_tol)
    comparison = compare_runs(baseline, candidate, tolerances)
    markdown = to_markdown(comparison)
    print(markdown)
    folder = Path(args.candidate) if Path(args.candidate).is_dir() else baselines / args.candidate
    stem = f"regression-vs-{Path(str(args.baseline).rstrip('/')).name}"  # two baselines of one sweep: two files
    write_json(folder / f"{stem}.json", comparison.to_dict())
    write_atomic(folder / f"{stem}.md", (markdown + "\n").encode())
    print(f"wrote {folder / stem}.md and .json")
    if (folder / "trials.parquet").exists():  # a sweep: its report shows the verdicts too
        from byol_bench.report import write_report

        print(f"report: {write_report(folder, acc_points=args.acc_tol)}")
    return 1 if comparison.regressed else 0


def cmd_data(args) -> int:
    from byol_bench.data.datasets import DATASETS, load_data

    data = load_data(args.name, args.data_dir, image_size=args.image_size, download=not args.offline,
                     store_dir=args.store_dir, store_size=args.store_size)  # its image store built where missing
    print(f"{data.name} ({DATASETS[data.name].description}): {len(data.pretrain_images)} pretraining, {len(data.train_images)} train, "
          f"{len(data.test_images)} test images of {data.channels}x{data.image_size}x{data.image_size}, "
          f"{data.num_classes} classes")
    return 0


def cmd_report(args) -> int:
    from byol_bench.report import write_comparison, write_report

    if args.other:
        path = write_comparison(Path(args.source), Path(args.other))
    else:
        path = write_report(Path(args.source), heatmap_axes=tuple(args.heatmap), acc_points=args.acc_tol)
    print(f"report: {path}")
    return 0


def _add_ray_flags(command: argparse.ArgumentParser) -> None:
    """The flags of the commands that run trials on Ray Tune (sweep, tune): where, what is shown, where to, tracking."""
    command.add_argument("--address", help="a running Ray cluster: auto, or ray://host:port (default: a local cluster)")
    command.add_argument("--verbose", action="store_true", help="also show Ray Tune's trial tables and every worker's "
                                                                "own log lines (default: one line per trial epoch)")
    command.add_argument("--results-dir", default="results", help="where results/<sweep-name>/ goes (default: results)")
    command.add_argument("--track", action="append", default=[], metavar="TRACKER",
                         help="also log every trial (its knobs, per-epoch history, final metrics) to mlflow, "
                              "tensorboard or wandb; repeat for more than one (each needs its extra: pip install "
                              "'byol-bench[TRACKER]')")
    command.add_argument("--tracking-uri", metavar="URI",
                         help="MLflow's store for --track mlflow: sqlite:///PATH.db or an MLflow server's "
                              "http(s)://HOST:PORT (default: sqlite:///<results>/<sweep>/mlflow.db)")


def _add_train_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", metavar="FILE", help="a YAML file of trial keys (a trial's result JSON too: "
                                                          "its config); flags given here override it")
    command.add_argument("--out", metavar="FILE",
                         help="the result JSON (default: results/trials/<method>-<dataset>-seed<seed>-<time>.json); "
                              "the backbone's weights and model card go beside it")
    for knob in fields(TrialConfig):
        _add_knob_flag(command, knob)


def _add_trial_parsers(commands) -> None:
    """The commands that run trials: train (one), sweep (a grid on Ray Tune), tune (a search, then a sweep)."""
    train = commands.add_parser("train", help="run one trial: pretrain, measure, evaluate, write a JSON result",
                                description="Run one trial: measure the floors, pretrain, evaluate the frozen backbone "
                                            "(kNN and linear probe), write a JSON result. Every config key is a flag; "
                                            "a flag overrides the same key in --config. 'null' empties an optional key.")
    _add_train_flags(train)
    train.set_defaults(run=cmd_train)

    sweep = commands.add_parser("sweep", help="run a grid of trials on Ray Tune (local cluster, or --address)")
    sweep.add_argument("file", help="a sweep file, e.g. benchmarks/sweeps/quick.yaml")
    sweep.add_argument("--resume", action="store_true", help="continue the sweep in the results folder: finished trials are kept")
    sweep.add_argument("--dry-run", action="store_true", help="print the expanded trial table and resources, then exit")
    sweep.add_argument("--max-concurrent", type=int, help="run at most N trials at once")
    sweep.add_argument("--storage", help="a URI every Ray node can reach (s3://…, gs://…, file:///shared/…) for the "
                                         "trials' checkpoints and Ray state (default: inside the results folder)")
    _add_ray_flags(sweep)
    sweep.set_defaults(run=cmd_sweep)

    tune = commands.add_parser("tune", help="a tuned comparison: the same search budget for every method on a "
                                             "validation split, then its best settings over seeds",
                               description="Search each method's knobs with the same budget (Ray Tune: Optuna or "
                                           "random sampling, ASHA stopping), scored on a validation split held out "
                                           "of the train split; then run each method's best values (and defaults) "
                                           "over the final seeds on the test split, as a sweep with its report.")
    tune.add_argument("file", help="a sweep file with a search section, e.g. benchmarks/sweeps/tune-quick.yaml")
    tune.add_argument("--resume", action="store_true", help="continue the tune in the results folder: finished "
                                                            "search trials and final runs are kept")
    tune.add_argument("--dry-run", action="store_true", help="print each method's search space and the budget, "
                                                             "then exit")
    _add_ray_flags(tune)
    tune.set_defaults(run=cmd_tune)


def _add_results_parsers(commands) -> None:
    """The commands that read results: baseline, compare, report; and data, which readies a data set."""
    baseline = commands.add_parser("baseline", help="keep a sweep as a baseline for regression checks")
    baseline_commands = baseline.add_subparsers(dest="baseline_command", required=True, parser_class=_Parser)
    save = baseline_commands.add_parser("save", help="copy a sweep's trial table and manifest to results/baselines/NAME")
    save.add_argument("sweep", help="a finished sweep folder, e.g. results/quick")
    save.add_argument("--as", dest="name", required=True, help="the baseline's name")
    save.add_argument("--baselines-dir", default="results/baselines", help="where baselines live")
    save.set_defaults(run=cmd_baseline_save)

    compare = commands.add_parser("compare", help="verdicts of a candidate sweep against a baseline; exit 1 on regression")
    compare.add_argument("baseline", help="a saved baseline's name or folder, or a sweep folder")
    compare.add_argument("candidate", help="a sweep folder (or a saved baseline)")
    compare.add_argument("--acc-tol", type=float, default=MIN_EFFECT_POINTS, metavar="POINTS",
                         help=f"smallest accuracy change that counts (default {MIN_EFFECT_POINTS})")
    compare.add_argument("--speed-tol", type=float, default=10.0, metavar="PERCENT", help="allowed images/s drop (default 10)")
    compare.add_argument("--memory-tol", type=float, default=10.0, metavar="PERCENT", help="allowed peak-memory growth (default 10)")
    compare.add_argument("--baselines-dir", default="results/baselines", help="where baselines live")
    compare.set_defaults(run=cmd_compare)

    data = commands.add_parser("data", help="make sure a data set is present (downloading it if allowed) and describe it")
    data.add_argument("name", help="a registered data set, e.g. fashion-mnist")
    data.add_argument("--data-dir", help="the data root (torchvision layout) or ImageFolder tree")
    data.add_argument("--offline", action="store_true", help="only look on disk; never download")
    data.add_argument("--build", action="store_true", help="build its image store now, ahead of a sweep (any data set "
                                                            "with files is stored on first use anyway), saying its size "
                                                            "and how long decoding took")
    data.add_argument("--image-size", type=int, help="an ImageFolder tree's trial image size (its store is larger)")
    data.add_argument("--store-dir", help="where image stores live (default: <data root>/stores)")
    data.add_argument("--store-size", type=int, help="an ImageFolder tree's stored side (default: image size x 256/224)")
    data.set_defaults(run=cmd_data)

    report = commands.add_parser("report", help="tables and figures (HTML + Markdown) for a sweep or a trial JSON; "
                                                "given two, put them side by side")
    report.add_argument("source", help="a sweep's results folder (results/<sweep>) or a trial JSON from 'train --out'")
    report.add_argument("other", nargs="?", help="a second sweep or trial JSON: compare it with the first "
                                                 "(written into the first's folder as compare-<other>.html/.md)")
    report.add_argument("--heatmap", nargs=2, metavar=("ROWS", "COLUMNS"), default=["method", "global_batch_size"],
                        help="the two trial columns the mean-kNN heatmap spans (default: method global_batch_size)")
    report.add_argument("--acc-tol", type=float, default=MIN_EFFECT_POINTS, metavar="POINTS",
                        help="the accuracy difference the seeds-needed table sizes the seeds for, and below which a "
                             f"ranking is flagged (default {MIN_EFFECT_POINTS})")
    report.set_defaults(run=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="byol-bench", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_trial_parsers(commands)
    _add_results_parsers(commands)
    add_history_parser(commands)
    add_model_parsers(commands, train_flags=_add_train_flags, train=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UserError as error:
        print(f"byol-bench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("byol-bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return 0

