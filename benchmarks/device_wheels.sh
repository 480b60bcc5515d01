#!/usr/bin/env bash
# Builds the wheels benchmarks/gpu_check.sh installs on a CUDA machine that has PyTorch, pandas and pyarrow
# but no network, no Ray and no lightly. A device run carries them as an ignored folder within its 64 MiB
# limit, the repo included, and a full Ray wheel alone is over it: Ray is repacked without what Tune and
# Train never import (Java jars, RLlib, Serve, LLM, the dashboard's web client, source maps).
#
#   benchmarks/device_wheels.sh [--python 3.12] [--dest .whl]
#
# --python is the target interpreter's version: the device's is 3.12; give this machine's to check the set
# here (install it with `pip install --no-index --no-deps --target DIR` into a venv without Ray).
# Runs pip download, so it needs PyPI. DEST's old wheels are removed: two versions of one package in it
# would stop the install.
set -euo pipefail
python_version=3.12 dest=.whl
while (($#)); do
  case $1 in
    --python) python_version=${2:?}; shift 2 ;;
    --dest) dest=${2:?}; shift 2 ;;
    *) echo "usage: benchmarks/device_wheels.sh [--python 3.12] [--dest .whl]" >&2; exit 2 ;;
  esac
done
# The versions the test suite runs with, pinned so the device runs what was tested here: pydantic-core is the
# one pydantic pins, and protobuf must be new enough for the code Ray generated with it.
packages=(
  lightly==1.6.0 lightning-utilities==0.15.3 ray==2.60.0  # lightly's transforms import lightning-utilities
  # Ray's own requirements and its tune/train extras' that an image of python, torch and pandas lacks
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  click==8.5.1 msgpack==1.2.4 protobuf==7.36.2 packaging==26.4 tensorboardX==2.6.5
  requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.19.post1 charset-normalizer==3.5.3
)
# Binary wheels are tagged manylinux_2_N with the oldest glibc they need; pip matches the tags listed exactly.
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done

start=$SECONDS
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$python_version" --implementation cp "${platforms[@]}" -d "$download" "${packages[@]}"
mkdir -p "$dest"
rm -f "$dest"/*.whl
find "$download" -type f -name '*.whl' ! -name 'ray-*' -exec mv {} "$dest" \;

# Ray without the parts Tune and Train never import. Unchanged files keep their RECORD lines (same hashes),
# and each kept entry keeps its ZipInfo, so the executables (raylet, gcs_server) stay executable.
python3 - "$download"/ray-*.whl "$dest" <<'PY'
import csv, io, pathlib, re, sys, zipfile

source, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
unused = re.compile(r"^ray/(jars|rllib|serve|llm|dashboard/client/build)/|\.map$")
with zipfile.ZipFile(source) as wheel, zipfile.ZipFile(dest / source.name, "w", zipfile.ZIP_DEFLATED) as stripped:
    for entry in wheel.infolist():
        if unused.search(entry.filename):
            continue
        data = wheel.read(entry)
        if re.fullmatch(r"ray-[^/]+\.dist-info/RECORD", entry.filename):  # Ray's own, not its vendored packages
            rows = [row for row in csv.reader(io.StringIO(data.decode())) if row and not unused.search(row[0])]
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows(rows)
            data = text.getvalue().encode()
        stripped.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
PY

ls -1s --block-size=K "$dest"/*.whl
total=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
built=("$dest"/*.whl)
echo "${#built[@]} wheels in $dest for cp${python_version/./}: $((total / 1024 / 1024)) MiB, built in $((SECONDS - start)) s"
if ((total > 60 * 1024 * 1024)); then
  echo "over 60 MiB: with the repo this would not fit in the 64 MiB a device run carries" >&2
  exit 1
fi
