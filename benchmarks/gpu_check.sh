#!/usr/bin/env bash
# One prepared check for a CUDA machine that has PyTorch but no network (and no Ray):
# installs the wheels brought along (lightly), runs the CUDA tests, one short trial per method on the
# GPU, then the performance goals: ResNet-18 at batch 512 on CIFAR-shaped (synthetic) data, the
# suite's trainer against the plain lightly loop (one speed switch at a time), and the trials' MFU.
#
#   benchmarks/gpu_check.sh OUT_DIR [WHEEL_DIR]     (WHEEL_DIR defaults to .whl; see README)
set -euo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [WHEEL_DIR]}
wheels=${2:-.whl}
mkdir -p "$out"
site=$(mktemp -d)
if compgen -G "$wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/pytest.txt"
for method in byol simclr simsiam; do
  python3 -m byol_bench.cli train --method "$method" --dataset synthetic --backbone resnet18 --batch-size 256 \
    --epochs 3 --device cuda --out "$out/trial-$method.json"
done
# Each speed switch alone (channels_last is the default); torch.compile only in a trial below, since the
# benchmark would compile each of its three contenders.
for variant in "fp32-nchw:--no-channels-last" "fp32:" "bf16:--precision bf16"; do
  name=bench-${variant%%:*}
  python3 benchmarks/bench_trainer.py --device cuda --dataset synthetic --backbone resnet18 --batch-size 512 \
    --subset 2000 --threads 8 --plain-workers 8 --steps 10 --rounds 3 --skip-probe ${variant#*:} --out "$out/$name.json" | tee "$out/$name.txt"
done
for variant in "fp32:" "bf16:--precision bf16" "bf16-compile:--precision bf16 --compile true"; do
  python3 -m byol_bench.cli train --method byol --dataset synthetic --backbone resnet18 --batch-size 512 --epochs 10 \
    --device cuda --probe-epochs 5 ${variant#*:} --out "$out/trial-byol512-${variant%%:*}.json"
done
python3 - "$out" <<'PY' | tee "$out/table.md"
import json, pathlib, sys
print("| trial | precision | compile | images/s | step median (s) | data wait | peak memory (MiB) | MFU | kNN top-1 | random-init kNN |")
print("|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(pathlib.Path(sys.argv[1]).glob("trial-*.json")):
    r = json.loads(path.read_text()); m = r["metrics"]
    print(f"| {path.stem} | {r['config']['precision']} | {r['config']['compile']} | {m['images_per_s']:.0f} | {m['step_time_median_s']:.4f} "
          f"| {m['data_wait_fraction']:.2f} | {m['peak_memory_bytes'] / 2**20:.0f} | {m['mfu']:.3f} | {m['knn_top1']:.3f} "
          f"| {r['baselines']['random_init_knn_top1']:.3f} |")
PY
