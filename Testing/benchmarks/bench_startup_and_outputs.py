"""Command-line start-up (best of 5 wall times) and the bundled sample's output size per --maps/--map-dtype.

Run: .venv/bin/python Testing/benchmarks/bench_startup_and_outputs.py  (prints two tables)
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "SegUncertaintyLib.cli"]
VARIANTS = {"all maps + probability, float32 (default)": [],
            "all maps + probability, float16": ["--map-dtype", "float16"],
            "entropy + mutual_information, float32": ["--maps", "entropy,mutual_information"],
            "entropy + mutual_information, float16": ["--maps", "entropy,mutual_information", "--map-dtype", "float16"]}


def best_wall(args: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(CLI + args, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    print(f"machine: {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, CPU only")
    print("| command | best of 5 (s) |\n|---|---|")
    for args in (["--help"], ["models"]):
        print(f"| seguncertainty {' '.join(args)} | {best_wall(args):.3f} |")
    print("\n| outputs of segment --sample --method ensemble --no-overview | bytes | MB |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in VARIANTS.items():
            out = Path(tmp) / str(len(list(Path(tmp).iterdir())))
            subprocess.run(CLI + ["segment", "--sample", "--method", "ensemble", "--no-overview", "--progress",
                                  "none", "--out", str(out), *extra], capture_output=True, check=True)
            size = sum(p.stat().st_size for p in out.iterdir())
            print(f"| {name} | {size} | {size / 1e6:.1f} |")


if __name__ == "__main__":
    main()
