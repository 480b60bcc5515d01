"""How fast is the suite's trainer next to a plain lightly-example loop, and how much does the cached
linear probe save? (issue 6, "Performance")

Part 1, training throughput. Three contenders train the same model (same method class, same init seed)
with the same batch size, data, thread count, speed switches and SGD step:

  suite        batches from ``byol_bench.trial.batches.make_batches`` with ``augment="tensor"``: the views are
               made batched on the training device, in the training process (what ``run_trial`` does);
  plain        what lightly's examples do: lightly's PIL transforms (``PILViewDataset``, the method's
               recipe) in a DataLoader with --plain-workers workers (default 1), shuffle and drop_last;
  step alone   the suite's first batch over and over: no views to make, the most the step allows.

They run alternately, suite, step alone, plain, suite, ... for --rounds rounds, so that whatever else
the machine is doing slows them alike. Each round trains --warmup-steps untimed steps, then times
--steps steps; the table gives the median images/s of each over the rounds, the min and max, and the
ratio suite / plain (above 1: the suite is faster).

Part 2, linear probe. ``byol_bench.trial.evaluate.linear_probe`` trains on features extracted once; the
common alternative runs the frozen backbone on every batch of every epoch. Both train the same
classifier with ProbeRecipe's epochs, batch size, optimizer and schedule on the same images, from a
random-init backbone; the table gives both wall times (the cached one includes extracting the
features), the speed-up and both top-1 accuracies, which should agree to within ~0.5 points.

The table also gives the FLOP bound, the images/s the step's counted FLOPs (FlopCounterMode, one
step) would allow at the device's matrix-product peak (timed every round; the best round's), and the
suite's and the step's shares of it (MFU).

Run it (about 10 minutes on 2 idle CPU cores with the defaults; keep the machine otherwise idle):

    .venv/bin/python benchmarks/bench_trainer.py
    .venv/bin/python benchmarks/bench_trainer.py --method simclr --device cuda --threads 8 --out bench.json

Progress goes to stderr, the table to stdout, and every number to --out (JSON) when given.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from byol_bench.config import make_config
from byol_bench.data.datasets import load_data
from byol_bench.errors import UserError
from byol_bench.models.backbones import build_backbone
from byol_bench.models.methods import METHODS, uses_momentum
from byol_bench.models.momentum import parse_momentum_schedule
from byol_bench.trial.batches import make_batches
from byol_bench.trial.evaluate import ProbeRecipe, extract_features, linear_probe, topk_accuracy
from byol_bench.trial.instrument import matrix_product_flops, synchronize
from byol_bench.trial.loop import counted_train_step, resolve_precision, train_step
from byol_bench.trial.provenance import plugins_used, provenance
from byol_bench.trial.run import build_method, build_optimizer, resolve_device
from byol_bench.trial.schedules import learning_rate
from byol_bench.trial.views import PILViewDataset


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- part 1: training throughput -----------------------------------------------------------------


def lightly_example_batches(cfg, data, device, workers: int):
    """A function epoch -> (view0, view1) batches, made as lightly's examples make them."""
    dataset = PILViewDataset(data.pretrain_images, METHODS[cfg.method].views, data.image_size, data.channels,
                             data.mean, data.std)
    # persistent_workers keeps the workers alive across epochs and rounds, so their start-up falls in
    # the first round's warm-up steps and is never timed.
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(cfg.seed))

    def batches(epoch: int):
        for view0, view1 in loader:
            yield view0.to(device, non_blocking=True), view1.to(device, non_blocking=True)

    return batches


def one_batch_forever(cfg, data, device):
    """The suite's first batch, over and over: the step with no views to make, the trainer's ceiling."""
    views = next(make_batches(cfg, data, METHODS[cfg.method].views, device)(0))
    return lambda epoch: itertools.repeat(views)


class TrainingLoop:
    """One contender: a fresh model, its optimizer, run_trial's own step, and an endless stream of view batches.

    Every contender takes the same step (``byol_bench.trial.loop.train_step`` at the scheduled lr: loss,
    backward, SGD; then the target update), so the difference between them is where the views come from.
    """

    def __init__(self, cfg, data, device, batches_of_epoch, total_steps: int):
        torch.manual_seed(cfg.seed)  # both contenders start from the same weights
        self.method = build_method(cfg, data.channels, data.image_size, device).train()
        self.optimizer = build_optimizer(cfg, self.method)
        self.model = torch.compile(self.method) if cfg.compile else self.method
        self.momentum = parse_momentum_schedule(cfg.momentum_schedule) if uses_momentum(METHODS[cfg.method]) else None
        self.cfg, self.total_steps, self.step = cfg, total_steps, 0
        # Epochs run back to back: a round may cross an epoch boundary, which costs what it costs in training.
        self.batches = itertools.chain.from_iterable(map(batches_of_epoch, itertools.count()))

    def train(self, steps: int) -> None:
        for _ in range(steps):
            self._step()

    def flops_per_image(self) -> float:
        """One eager step counted by FlopCounterMode, as a trial counts its first step."""
        return self._step(count_flops=True)

    def _step(self, count_flops: bool = False) -> float | None:
        views = next(self.batches)
        lr = learning_rate(self.step, self.total_steps, self.cfg.peak_lr, 0, self.cfg.lr_schedule)
        flops = None
        if count_flops:
            _, flops = counted_train_step(self.cfg, self.method, self.optimizer, views, lr)
        else:
            train_step(self.cfg, self.model, self.optimizer, views, lr)
        if self.momentum:
            self.method.update_target(self.momentum(self.step, self.total_steps))
        self.step += 1
        return flops


def images_per_second(loop: TrainingLoop, warmup_steps: int, steps: int, batch_size: int, device) -> float:
    # Untimed warm-up every round: in the first it absorbs allocation and the worker's start-up; in later
    # ones it consumes the batches the plain loader prefetched while the suite ran, and lets that worker
    # finish refilling its queue (competing for the CPU) before the suite's clock starts.
    loop.train(warmup_steps)
    synchronize(device)
    start = time.perf_counter()
    loop.train(steps)
    synchronize(device)
    return batch_size * steps / (time.perf_counter() - start)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}


def bench_training(cfg, args, data, device) -> dict:
    log(f"training: {cfg.method}, {data.name} ({len(data.pretrain_images)} images), {cfg.backbone}, "
        f"batch {cfg.batch_size}, {torch.get_num_threads()} threads, {device}")
    total_steps = args.rounds * (args.warmup_steps + args.steps)
    loops = {
        "suite": TrainingLoop(cfg, data, device, make_batches(cfg, data, METHODS[cfg.method].views, device), total_steps),
        "plain": TrainingLoop(cfg, data, device, lightly_example_batches(cfg, data, device, args.plain_workers), total_steps),
        "step alone": TrainingLoop(cfg, data, device, one_batch_forever(cfg, data, device), total_steps),
    }
    flops_per_image = loops["suite"].flops_per_image()
    dtype = torch.bfloat16 if resolve_precision(cfg.precision, device) == "bf16" else torch.float32
    speeds, peaks = {name: [] for name in loops}, []
    for round_index in range(args.rounds):
        # Alternate: suite, step alone, plain, suite, ... The peak is timed each round too, before the plain loop's
        # steps, while its loader worker idles with its queue full.
        for name in ("suite", "step alone"):
            speeds[name].append(images_per_second(loops[name], args.warmup_steps, args.steps, cfg.batch_size, device))
        peaks.append(matrix_product_flops(device, dtype, repeats=3))
        speeds["plain"].append(images_per_second(loops["plain"], args.warmup_steps, args.steps, cfg.batch_size, device))
        log(f"  round {round_index + 1}/{args.rounds}: " + ", ".join(f"{name} {speeds[name][-1]:.0f} img/s" for name in loops)
            + f", matrix product {peaks[-1] / 1e9:.0f} GFLOP/s")
    # The bound takes the fastest product of any round: noise only ever slows a timing, so this errs low on MFU.
    suite, plain, alone, peak = spread(speeds["suite"]), spread(speeds["plain"]), spread(speeds["step alone"]), max(peaks)
    return {"pretrain_images": len(data.pretrain_images), "suite_images_per_s": suite, "plain_images_per_s": plain,
            "step_alone_images_per_s": alone, "ratio_suite_over_step_alone": suite["median"] / alone["median"],
            "ratio_suite_over_plain": suite["median"] / plain["median"],
            "ratio_per_round": [s / p for s, p in zip(speeds["suite"], speeds["plain"])],
            # The FLOP bound: the step's counted FLOPs at the device's matrix-product peak; the suite's MFU is its share.
            "flops_per_image": flops_per_image, "peak_flops_per_s": spread(peaks),
            "flop_bound_images_per_s": peak / flops_per_image,
            "suite_mfu": suite["median"] * flops_per_image / peak, "step_alone_mfu": alone["median"] * flops_per_image / peak}


# --- part 2: linear probe ------------------------------------------------------------------------


def probe_backbone_in_loop(backbone, data, recipe: ProbeRecipe, seed: int, device):
    """The probe without a feature cache: the frozen backbone (eval mode, no grad) runs on every batch.

    Everything else is linear_probe's: standardised features, classifier init, AdamW, cosine decay,
    batch order. Returns test-set class scores.
    """
    def features(images):  # eval mode and no grad, exactly as the cached features are extracted
        return extract_features(backbone, images, data.mean, data.std, device, batch_size=recipe.batch_size)

    # First pass: the train set's feature mean and std, accumulated so that no features are kept.
    count, total, total_sq = len(data.train_images), 0.0, 0.0
    for start in range(0, count, recipe.batch_size):
        batch = features(data.train_images[start : start + recipe.batch_size]).double()
        total, total_sq = total + batch.sum(0), total_sq + (batch * batch).sum(0)
    mean = total / count
    std = ((total_sq - count * mean * mean) / (count - 1)).clamp_min(0).sqrt().clamp_min(1e-6)
    mean, std = mean.float(), std.float()

    g = torch.Generator().manual_seed(seed)
    classifier = nn.Linear(len(mean), data.num_classes).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier.reset_parameters()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = max(1, -(-count // recipe.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.epochs * steps_per_epoch)
    labels = data.train_labels.to(device)
    for _ in range(recipe.epochs):
        order = torch.randperm(count, generator=g)
        for start in range(0, count, recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            x = (features(data.train_images[idx]) - mean) / std
            loss = F.cross_entropy(classifier(x), labels[idx.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        return classifier((features(data.test_images) - mean) / std)


def timed(function, device):
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - start


def bench_probe(cfg, args, data, device) -> dict:
    recipe = ProbeRecipe(epochs=args.probe_epochs)
    torch.manual_seed(cfg.seed)
    backbone, _ = build_backbone(cfg.backbone, data.channels, data.image_size)
    backbone = backbone.to(device).eval()
    test_labels = data.test_labels.to(device)
    log(f"probe: {len(data.train_images)} train / {len(data.test_images)} test images, {recipe.epochs} epochs, "
        f"random-init {cfg.backbone}")

    def cached():
        train = extract_features(backbone, data.train_images, data.mean, data.std, device)
        test = extract_features(backbone, data.test_images, data.mean, data.std, device)
        return linear_probe(train, data.train_labels.to(device), test, data.num_classes, recipe, cfg.seed)

    cached_scores, cached_s = timed(cached, device)
    log(f"  cached features: {cached_s:.1f} s")
    in_loop_scores, in_loop_s = timed(lambda: probe_backbone_in_loop(backbone, data, recipe, cfg.seed, device), device)
    log(f"  backbone in the loop: {in_loop_s:.1f} s")
    return {"train_images": len(data.train_images), "test_images": len(data.test_images), "recipe": asdict(recipe),
            "cached_s": cached_s, "backbone_in_loop_s": in_loop_s, "speedup": in_loop_s / cached_s,
            "cached_top1": topk_accuracy(cached_scores, test_labels)[1],
            "backbone_in_loop_top1": topk_accuracy(in_loop_scores, test_labels)[1]}


# --- report --------------------------------------------------------------------------------------


def print_table(cfg, args, device, training: dict, probe: dict | None) -> None:
    precision = resolve_precision(cfg.precision, device)
    switches = [precision, "channels_last" if cfg.channels_last else "NCHW"] + (["compile"] if cfg.compile else [])
    print(f"training throughput: {cfg.method}, {cfg.dataset} ({training['pretrain_images']} images), {cfg.backbone}, "
          f"batch {cfg.batch_size}, {torch.get_num_threads()} threads, {device}, {' + '.join(switches)}; "
          f"{args.rounds} rounds x {args.steps} timed steps, alternating")
    print(f"  {'':34} {'median img/s':>12} {'min':>8} {'max':>8}")
    for key, label in (("suite_images_per_s", "suite (tensor views, make_batches)"),
                       ("plain_images_per_s", f"plain (lightly PIL, {args.plain_workers} workers)"),
                       ("step_alone_images_per_s", "step alone (one fixed batch)")):
        row = training[key]
        print(f"  {label:34} {row['median']:12.0f} {row['min']:8.0f} {row['max']:8.0f}")
    per_round = training["ratio_per_round"]
    print(f"  {'ratio suite / plain':34} {training['ratio_suite_over_plain']:12.2f} {min(per_round):8.2f} "
          f"{max(per_round):8.2f}   (min/max: per-round ratios)")
    print(f"  {'ratio suite / step alone':34} {training['ratio_suite_over_step_alone']:12.2f}   (the cost of making views)")
    print(f"  {'FLOP bound':34} {training['flop_bound_images_per_s']:12.0f}   "
          f"({training['flops_per_image'] / 1e6:.0f} MFLOP per image at a {precision} matrix-product peak of "
          f"{training['peak_flops_per_s']['max'] / 1e9:.0f} GFLOP/s, the best round's)")
    print(f"  {'suite / FLOP bound (MFU)':34} {100 * training['suite_mfu']:11.1f}%")
    print(f"  {'step alone / FLOP bound':34} {100 * training['step_alone_mfu']:11.1f}%   (what the kernels allow)")
    if probe is None:
        return
    print(f"\nlinear probe: {probe['train_images']} train / {probe['test_images']} test images, "
          f"{probe['recipe']['epochs']} epochs, batch {probe['recipe']['batch_size']}, random-init {cfg.backbone}")
    print(f"  {'':34} {'wall s':>12} {'top-1 %':>8}")
    print(f"  {'cached features (linear_probe)':34} {probe['cached_s']:12.1f} {100 * probe['cached_top1']:8.2f}")
    print(f"  {'backbone in the loop':34} {probe['backbone_in_loop_s']:12.1f} {100 * probe['backbone_in_loop_top1']:8.2f}")
    print(f"  {'speed-up':34} {probe['speedup']:11.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--method", default="byol", choices=sorted(METHODS))
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--backbone", default="small-cnn")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--subset", type=int, default=10000, help="pretraining images (seeded, stratified)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps at the start of every round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--plain-workers", type=int, default=1,
                        help="DataLoader workers of the plain loop (1 on a 2-core CPU; more on a GPU machine)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="the suite's and the plain loop's step (auto: as a trial resolves it)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="NHWC model and views, for both contenders")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training loss")
    parser.add_argument("--probe-epochs", type=int, default=ProbeRecipe().epochs)
    # Small, so that 100 epochs with the backbone in the loop take about a minute on 2 CPU cores.
    parser.add_argument("--probe-train-images", type=int, default=2000)
    parser.add_argument("--probe-test-images", type=int, default=1000)
    parser.add_argument("--skip-probe", action="store_true")
    parser.add_argument("--out", help="write every number to this JSON file")
    args = parser.parse_args()
    if min(args.steps, args.rounds, args.probe_epochs) < 1 or args.warmup_steps < 0:
        parser.error("--steps, --rounds and --probe-epochs must be at least 1, --warmup-steps at least 0")

    try:
        cfg = make_config({"method": args.method, "dataset": args.dataset, "backbone": args.backbone,
                           "batch_size": args.batch_size, "subset": args.subset, "threads": args.threads,
                           "device": args.device, "augment": "tensor", "precision": args.precision,
                           "channels_last": args.channels_last, "compile": args.compile})
        device = resolve_device(cfg.device)
        torch.set_num_threads(cfg.threads)
        # Both data sets are loaded first, so that a bad size fails before minutes of training.
        training_data = load_data(cfg.dataset, cfg.data_dir, cfg.subset, seed=cfg.seed)
        try:
            probe_data = None if args.skip_probe else load_data(
                cfg.dataset, cfg.data_dir, args.probe_train_images, args.probe_test_images, seed=cfg.seed)
        except UserError as error:
            raise UserError(f"probe data (--probe-train-images, --probe-test-images): {error}") from None
    except UserError as error:
        sys.exit(f"error: {error}")
    training = bench_training(cfg, args, training_data, device)
    probe = None if args.skip_probe else bench_probe(cfg, args, probe_data, device)
    print_table(cfg, args, device, training, probe)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": cfg.to_dict(), "steps": args.steps, "warmup_steps": args.warmup_steps,
                       "rounds": args.rounds, "training": training, "probe": probe,
                       "provenance": asdict(provenance(device, cfg.seed, plugins_used(cfg.method, cfg.backbone)))},
                      f, indent=2)
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
