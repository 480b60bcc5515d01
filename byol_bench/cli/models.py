"""The commands about models: ``methods`` (what can be trained, and where it comes from), ``evaluate`` (the suite's
evaluation of a backbone trained elsewhere) and ``check-method`` (a plug-in method against the built-ins' checks)."""

from __future__ import annotations

import functools
import importlib.metadata
import time
from pathlib import Path

from byol_bench.errors import UserError


def cmd_methods(args) -> int:
    from byol_bench.models.backbones import BACKBONE_ORIGINS, BACKBONES, FAMILIES
    from byol_bench.models.method import method_options
    from byol_bench.models.methods import METHOD_ORIGINS, METHODS
    from byol_bench.models.plugins import BACKBONE_GROUP, BROKEN, METHOD_GROUP

    def defaults(values: dict) -> str:
        return ", ".join(f"{key}={value}" for key, value in values.items()) or "-"

    print(f"methods (more come from installed packages' '{METHOD_GROUP}' entry points):")
    rows = [(name, METHOD_ORIGINS[name], f"options: {defaults(method_options(method))}; "
                                         f"config keys: {defaults(method.config_keys)}")
            for name, method in METHODS.items()]
    print(_table(rows))
    print(f"\nbackbones (more come from '{BACKBONE_GROUP}' entry points):")
    rows = [(name, BACKBONE_ORIGINS[name], "") for name in BACKBONES]
    for family in FAMILIES:
        try:
            origin = f"{family} {importlib.metadata.version(family)}"
        except importlib.metadata.PackageNotFoundError:
            origin = "not installed: pip install 'byol-bench[timm]'"
        rows.append((f"{family}:NAME", origin, f"any {family} model by name, e.g. "
                                               + ("torchvision:resnet34" if family == "torchvision"
                                                  else "timm:vit_tiny_patch16_224 with backbone_options.patch_size=4")))
    print(_table(rows))
    if BROKEN:
        print("\nplug-ins that cannot be used (the rest work):")
        print("\n".join(f"  {found}" for found in BROKEN))
    return 0


def _table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in (0, 1)]
    return "\n".join(f"  {name.ljust(widths[0])}  {origin.ljust(widths[1])}  {what}".rstrip() for name, origin, what in rows)


def cmd_evaluate(args, train) -> int:
    """``train(args)`` with ``backbone_weights``: no pretraining, the whole evaluation beside the same architecture's
    floors."""
    args.backbone_weights, args.epochs = args.weights, "0"
    if args.out is None:
        name = Path(args.weights.split(":")[-1]).stem.replace(".", "-")
        args.out = f"results/trials/evaluate-{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    return train(args)


def cmd_check_method(args) -> int:
    from byol_bench.errors import unknown
    from byol_bench.models.methods import METHODS
    from byol_bench.models.plugins import broken
    from byol_bench.trial.conformance import check_method

    if args.name not in METHODS:
        found = broken("method", args.name)
        raise UserError(str(found)) if found else unknown("method", args.name, METHODS)
    print(f"checking method {args.name} (a tiny trial on synthetic images, one thread; about a minute)")
    checks = check_method(args.name, log=print)
    if not checks[0].passed:
        print(checks[0])
    failed = [check.name for check in checks if not check.passed]
    print(f"{args.name}: " + (f"FAILED {', '.join(failed)}" if failed else f"passed all {len(checks)} checks"))
    return 1 if failed else 0


def add_model_parsers(commands, train_flags, train) -> None:
    """``train_flags(parser)`` adds train's flags and ``train(args)`` runs a trial (evaluate is one)."""
    evaluate = commands.add_parser(
        "evaluate", help="the whole evaluation (kNN, linear probe, low-label, transfer, floors) of a backbone "
                         "trained elsewhere", description="Evaluate a backbone this suite did not train as a trial "
        "does, beside the floors of the same architecture: kNN, linear probe, and with their knobs low-label, transfer "
        "and the embedding map. The result is an ordinary trial result with no pretraining epochs (the weights' origin "
        "and SHA-256 in its provenance). Loading is strict: wrappers' prefixes (module., backbone., encoder., model.) "
        "are stripped and a classifier left out; anything else that differs is refused.")
    evaluate.add_argument("weights", help="a .safetensors, .pt or .pth state_dict (one this suite saved, or any), "
                                          "torchvision:MODEL.WEIGHTS or timm:NAME (downloads)")
    train_flags(evaluate)
    evaluate.set_defaults(run=functools.partial(cmd_evaluate, train=train))

    check = commands.add_parser("check-method", help="run the checks every built-in method passes on a method "
                                                     "(a plug-in's): exit 1 naming what failed",
                                description="Interface, declared views, the loss falls on a fixed batch, a target "
                                            "network gets no gradient and moves only by its update, a checkpoint "
                                            "resumes bit-identically, two DDP ranks train the weights of one worker. "
                                            "From a plug-in's pytest: byol_bench.trial.conformance.check_method(NAME).")
    check.add_argument("name", help="a method's name (byol-bench methods lists them)")
    check.set_defaults(run=cmd_check_method)

    methods = commands.add_parser("methods", help="list every method and backbone: built-in, or from which package "
                                                  "(and version), with each method's options and defaults")
    methods.set_defaults(run=cmd_methods)
