#!/usr/bin/env bash
# One prepared check for a CUDA machine that has PyTorch but no network, no Ray and no lightly. It installs
# the wheels brought along (benchmarks/device_wheels.sh builds them) into a folder on PYTHONPATH and starts
# nothing else. Then, the parts most likely to find something first: the CUDA tests; a real Ray Tune sweep
# (benchmarks/sweeps/gpu-check.yaml: two trials share the GPU); the trainer benchmark at ResNet-18, batch
# 512, bf16 + channels_last, eager and compiled, then fp32 in channels_last and NCHW (one speed switch at a
# time); BYOL trials at batch 512 in fp32, bf16 and bf16 compiled for their MFU; one short trial per method.
# Every output and a Markdown table (OUT_DIR/table.md) go to OUT_DIR.
#
#   benchmarks/gpu_check.sh OUT_DIR [WHEEL_DIR]              (WHEEL_DIR defaults to .whl)
#   GPU_CHECK_CPU=1 benchmarks/gpu_check.sh OUT_DIR WHEEL_DIR   every part shrunk to a few minutes on a CPU:
#                                                             checks the plumbing where there is no GPU
#
# Each part runs under its own time limit, cut to what is left of GPU_CHECK_BUDGET_S (default 480 s): a
# hang costs only its part, a part with too little time left is skipped, and the table is always written.
# The exit status is 0 when every part passed.
set -euo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [WHEEL_DIR]}
wheels=${2:-.whl}
mkdir -p "$out"
out=$(cd "$out" && pwd)
deadline=$((SECONDS + ${GPU_CHECK_BUDGET_S:-480}))
scratch=$(mktemp -d)  # the installed wheels and Ray's checkpoints: large, and of no use afterwards
trap 'rm -rf "$scratch"' EXIT

device=cuda sweep=benchmarks/sweeps/gpu-check.yaml shrink_trial=() shrink_bench=() slower=1
if [[ ${GPU_CHECK_CPU:-0} == 1 ]]; then  # flags given last win, so these replace the GPU sizes below
  device=cpu sweep=$out/gpu-check-cpu.yaml slower=4  # even shrunk, a part takes longer on 2 cores than on the GPU
  shrink_trial=(--backbone small-cnn --batch-size 64 --subset 512 --test-subset 200 --epochs 2 --probe-epochs 5 --threads 2)
  shrink_bench=(--backbone small-cnn --batch-size 64 --subset 512 --threads 2 --plain-workers 1 --steps 2 --rounds 1)
fi

if compgen -G "$wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$scratch/site" "$wheels"/*.whl
fi
export PYTHONPATH="$PWD:$scratch/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
python3 - "$device" <<'PY' | tee "$out/device.txt"
import importlib.util, sys, torch
assert sys.argv[1] == "cpu" or torch.cuda.is_available(), "no CUDA device"
import lightly  # every part needs it; Ray only the sweep, which fails on its own without it
ray = "ray " + __import__("ray").__version__ if importlib.util.find_spec("ray") else "no ray"
print("torch", torch.__version__, torch.cuda.get_device_name() if sys.argv[1] == "cuda" else "cpu", "| lightly",
      lightly.__version__, "|", ray)
PY
if [[ $device == cpu ]]; then  # the same sweep, on the CPU at the small CNN's size
  python3 - benchmarks/sweeps/gpu-check.yaml "$sweep" <<'PY'
import sys, yaml
sweep = yaml.safe_load(open(sys.argv[1]))
sweep["trial"].update(backbone="small-cnn", batch_size=64, subset=512, test_subset=200, epochs=2, probe_epochs=5,
                      knn_monitor_every=1)
sweep["resources"] = {"cpu": 1, "gpu": 0}
yaml.safe_dump(sweep, open(sys.argv[2], "w"), sort_keys=False)
PY
fi

# part NAME LIMIT_S COMMAND...: runs COMMAND with its output in OUT_DIR/NAME.txt, for at most LIMIT_S or what
# is left of the budget, and records its exit status and seconds in parts.tsv; a failure does not stop the check.
: >"$out/parts.tsv"
part() {
  local name=$1 limit=$2 start=$SECONDS rc=0
  shift 2
  local left=$((deadline - SECONDS))
  if ((left < 30)); then
    printf '%s\tskipped (out of time)\t0\n' "$name" >>"$out/parts.tsv"
    return
  fi
  limit=$((limit * slower))
  ((limit <= left)) || limit=$left
  echo "== $name (at most $limit s)"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$out/$name.txt" || rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$out/parts.tsv"
}

part pytest 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
# Ray's state (checkpoints) goes to scratch, so that OUT_DIR keeps the tables, manifest and report only;
# --verbose keeps Tune's tables and the workers' own output in sweep.txt, for a failure seen only there.
part sweep 240 python3 -m byol_bench.cli sweep "$sweep" --results-dir "$out" --storage "file://$scratch/ray" --verbose
# The trainer benchmark: the suite (tensor views + step), the step alone and the plain lightly loop, each the
# longer with --compile, since each of the three compiles its own model.
for variant in "bf16:--precision bf16" "bf16-compile:--precision bf16 --compile" "fp32:--precision fp32" "fp32-nchw:--precision fp32 --no-channels-last"; do
  name=bench-${variant%%:*}
  # shellcheck disable=SC2086  # the variant's flags are words
  part "$name" "$([[ $name == *compile ]] && echo 240 || echo 120)" python3 benchmarks/bench_trainer.py \
    --device "$device" --dataset synthetic --backbone resnet18 --batch-size 512 --subset 2000 --threads 8 \
    --plain-workers 8 --steps 10 --rounds 3 --skip-probe ${variant#*:} "${shrink_bench[@]}" --out "$out/$name.json"
done
for variant in "fp32:--precision fp32 --compile false" "bf16:--precision bf16 --compile false" "bf16-compile:--precision bf16 --compile true"; do
  name=trial-byol512-${variant%%:*}
  # shellcheck disable=SC2086
  part "$name" "$([[ $name == *compile ]] && echo 180 || echo 90)" python3 -m byol_bench.cli train --method byol \
    --dataset synthetic --backbone resnet18 --batch-size 512 --epochs 10 --device "$device" --probe-epochs 5 \
    ${variant#*:} "${shrink_trial[@]}" --out "$out/$name.json"
done
for method in byol simclr simsiam; do
  part "trial-$method" 60 python3 -m byol_bench.cli train --method "$method" --dataset synthetic --backbone resnet18 \
    --batch-size 256 --epochs 3 --device "$device" "${shrink_trial[@]}" --out "$out/trial-$method.json"
done

python3 - "$out" <<'PY' | tee "$out/table.md"
import json, pathlib, sys
import pandas as pd

out = pathlib.Path(sys.argv[1])
def f(value, spec, scale=1):  # a missing number (a failed part, a metric the device lacks) prints as a dash
    return "–" if value is None or value != value else format(value / scale, spec)

parts = [line.split("\t") for line in (out / "parts.tsv").read_text().splitlines()]
print("| part | status | seconds |\n|---|---|---|")
for name, status, seconds in parts:
    status = {"0": "ok", "124": "timed out", "137": "timed out"}.get(status, status if "skipped" in status else f"exit {status}")
    print(f"| {name} | {status} | {seconds} |")
results = [out / f"{name}.json" for name, *_ in parts if (out / f"{name}.json").exists()]  # in the order they ran

print("\n| trainer benchmark | suite images/s (min–max) | step alone images/s | plain images/s | suite / plain "
      "| suite MFU | step alone MFU |\n|---|---|---|---|---|---|---|")
for path in (path for path in results if path.stem.startswith("bench-")):
    t = json.loads(path.read_text())["training"]
    s = t["suite_images_per_s"]
    print(f"| {path.stem} | {s['median']:.0f} ({s['min']:.0f}–{s['max']:.0f}) | {t['step_alone_images_per_s']['median']:.0f} "
          f"| {t['plain_images_per_s']['median']:.0f} | {t['ratio_suite_over_plain']:.2f} | {t['suite_mfu']:.3f} "
          f"| {t['step_alone_mfu']:.3f} |")

print("\n| trial | status | precision | compiled | compile (s) | images/s | step median (s) | data wait "
      "| peak memory (MiB) | MFU | kNN top-1 | random-init kNN |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
for path in (path for path in results if path.stem.startswith("trial-")):
    r = json.loads(path.read_text())
    m = r["metrics"]
    print(f"| {path.stem} | {r['status']} | {r['run']['precision']} | {r['run']['compiled']} "
          f"| {f(m.get('compile_time_s'), '.1f')} | {f(m['images_per_s'], '.0f')} | {f(m['step_time_median_s'], '.4f')} "
          f"| {f(m['data_wait_fraction'], '.2f')} | {f(m['peak_memory_bytes'], '.0f', 2**20)} | {f(m['mfu'], '.3f')} "
          f"| {f(m['knn_top1'], '.3f')} | {f(r.get('floors', r.get('baselines', {})).get('random_init_knn_top1'), '.3f')} |")

sweep = out / "gpu-check" / "trials.parquet"
if sweep.exists():
    print("\n| sweep trial (Ray Tune) | status | device | images/s | peak memory (MiB) | kNN top-1 | linear top-1 "
          "| random-init kNN |\n|---|---|---|---|---|---|---|---|")
    for _, t in pd.read_parquet(sweep).iterrows():
        print(f"| {t['trial_id']} | {t['status']} | {t.get('device')} {t.get('device_name')} | {f(t['images_per_s'], '.0f')} "
              f"| {f(t['peak_memory_bytes'], '.0f', 2**20)} | {f(t['knn_top1'], '.3f')} | {f(t['linear_top1'], '.3f')} "
              f"| {f(t['random_init_knn_top1'], '.3f')} |")
    report = out / "gpu-check" / "report.html"
    print(f"\nreport: {'gpu-check/report.html' if report.exists() else 'missing'}")
PY
if grep -qv $'\t0\t' "$out/parts.tsv"; then
  echo "not every part passed: see $out/table.md and $out/PART.txt" >&2
  exit 1
fi
