"""docs/measurements.md: every figure the README and docs quote, each with the command that measured it, the machine
and the date, written from docs/measurements.json (the records) by this script and by nothing else.

    python benchmarks/measurements.py measure demo     # runs make demo, records its time and every trial vs its floors
    python benchmarks/measurements.py measure test     # runs make test, records its time and test count
    python benchmarks/measurements.py measure ci       # CI as it runs: .ci/run in a fresh clone of HEAD, set-up included
    python benchmarks/measurements.py measure store    # runs benchmarks/bench_store.py, records what it printed
    python benchmarks/measurements.py record demo results/quick   # records a finished quick sweep instead
    python benchmarks/measurements.py                  # writes docs/measurements.md from the records again

A record is kept per (what, machine): measuring again on the same machine replaces it, another machine adds one.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECORDS, PAGE = REPO / "docs" / "measurements.json", REPO / "docs" / "measurements.md"
FRESH_CLONE = Path("/tmp/byol-bench-fresh-clone")
COMMANDS = {"demo": ["make", "demo"], "test": ["make", "test"],
            "ci": ["bash", "-c", f"rm -rf {FRESH_CLONE} && git clone -q . {FRESH_CLONE} && CI=true bash {FRESH_CLONE}/.ci/run"],
            "store": [sys.executable, "benchmarks/bench_store.py"]}
TITLES = {"demo": "make demo: the quick sweep", "test": "make test", "ci": "CI: .ci/run in a fresh clone",
          "store": "The image store at scale"}


def machine() -> str:
    """The CPU's model, its cores here, and the widest vector units torch may use (what sets a CPU's speed)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    units = "AMX" if "amx_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "-"
    emulated = os.environ.get("ONEDNN_MAX_CPU_ISA") == "AVX2" and units != "AVX2"
    return f"{model}, {os.cpu_count()} cores, {units}{' (AVX2 emulated)' if emulated else ''}"


def demo_record(folder: Path) -> dict:
    """A finished quick sweep: its wall time (the manifest's start to finish) and each trial against its floors."""
    import pandas as pd

    sys.path.insert(0, str(REPO))
    from byol_bench.protocol import floors_under

    manifest = json.loads((folder / "manifest.json").read_text())
    started, finished = (datetime.datetime.strptime(manifest[key], "%Y-%m-%dT%H:%M:%S%z") for key in ("started", "finished"))
    trials = pd.read_parquet(folder / "trials.parquet")
    rows = [{"trial": row["trial_id"], "status": row["status"], "knn_top1": row["knn_top1"],
             "linear_top1": row["linear_top1"], "random_init_knn_top1": row["random_init_knn_top1"],
             "random_init_linear_top1": row["random_init_linear_top1"],
             "raw_pixels_knn_top1": row["raw_pixels_knn_top1"], "images_per_s": row["images_per_s"],
             "precision": row["precision"], "under": floors_under(row)} for row in trials.to_dict("records")]
    return {"sweep_s": (finished - started).total_seconds(), "trials": rows}


def run(what: str) -> dict:
    start = time.perf_counter()
    done = subprocess.run(COMMANDS[what], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(COMMANDS[what])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    record = {"wall_s": seconds}
    if what == "demo":
        record.update(demo_record(REPO / "results" / "quick"))
    elif what in ("test", "ci"):
        passed = re.search(r"(\d+) passed.*? in ([\d.]+)s", done.stdout)
        record.update(passed=int(passed.group(1)), pytest_s=float(passed.group(2)))
    else:
        record["lines"] = done.stdout.strip().splitlines()
    return record


def save(what: str, record: dict) -> None:
    records = json.loads(RECORDS.read_text()) if RECORDS.exists() else []
    tree = FRESH_CLONE if what == "ci" else REPO  # where the command ran: its environment and its revision
    size = sum(path.stat().st_size for path in (tree / ".venv").rglob("*") if path.is_file() and not path.is_symlink())
    command = "CI=true bash .ci/run in a fresh clone of HEAD" if what == "ci" else " ".join(COMMANDS[what])
    revision = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=tree, capture_output=True, text=True).stdout.strip()
    record = {"what": what, "command": command.replace(sys.executable, "python"), "machine": machine(),
              "date": datetime.date.today().isoformat(), "revision": revision or None, "environment_gib": size / 2**30, **record}
    records = [r for r in records if (r["what"], r["machine"]) != (what, record["machine"])] + [record]
    RECORDS.write_text(json.dumps(records, indent=1) + "\n")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _section(what: str, records: list[dict]) -> list[str]:
    lines = [f"## {TITLES[what]}", ""]
    for record in records:
        timed = f"{_minutes(record['wall_s'])} in all" if record["wall_s"] is not None else "set-up not timed"
        at = f" at {record['revision']}" if record.get("revision") else ""
        lines += [f"`{record['command']}`{at} on {record['machine']}, {record['date']}: {timed}"
                  + (f", the sweep {_minutes(record['sweep_s'])}." if "sweep_s" in record else ".")
                  + (f" ({record['passed']} passed; pytest {_minutes(record['pytest_s'])})." if "passed" in record else "")
                  + f" The environment (.venv) took {record['environment_gib']:.1f} GiB of disk.", ""]
        if "trials" in record:
            lines += ["| trial | precision | kNN top-1 | random-init kNN | raw-pixel kNN | linear top-1 | random-init "
                      "linear | images/s | under a floor |", "|---|---|---|---|---|---|---|---|---|"]
            lines += [f"| {t['trial']} | {t['precision']} | {t['knn_top1']:.3f} | {t['random_init_knn_top1']:.3f} | "
                      f"{t['raw_pixels_knn_top1']:.3f} | {t['linear_top1']:.3f} | {t['random_init_linear_top1']:.3f} | "
                      f"{t['images_per_s']:.0f} | {'; '.join(t['under']) or '—'} |" for t in record["trials"]]
            lines.append("")
        if "lines" in record:
            lines += ["```", *record["lines"], "```", ""]
    return lines


def render() -> None:
    records = json.loads(RECORDS.read_text()) if RECORDS.exists() else []
    lines = ["# Measurements", "", "Written by `python benchmarks/measurements.py` from `docs/measurements.json`; each "
             "figure with the command that measured it, the machine (CPU model, cores, the widest vector units: AVX2 "
             "CPUs train in fp32, AMX ones in bf16) and the date. Measure again: `python benchmarks/measurements.py "
             "measure demo|test|ci|store` (with `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2` an AVX-512 CPU runs as an "
             "AVX2 one).", ""]
    for what in TITLES:
        found = [record for record in records if record["what"] == what]
        lines += _section(what, found) if found else [f"## {TITLES[what]}", "", "Not measured yet.", ""]
    PAGE.write_text("\n".join(lines))
    print(f"wrote {PAGE}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["measure"] and len(argv) == 2 and argv[1] in COMMANDS:
        save(argv[1], run(argv[1]))
        if argv[1] == "ci":
            shutil.rmtree(FRESH_CLONE)  # its environment is several GiB
    elif argv[:2] == ["record", "demo"] and len(argv) == 3:
        save("demo", {"wall_s": None, **demo_record(Path(argv[2]))})
    elif argv:
        sys.exit(__doc__)
    render()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
