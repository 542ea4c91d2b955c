"""Size and load time of a `spo inspect` page, against the budget of docs/inspect.md
(an iteration of 512 episodes: under 5 MB, loaded in under 3 s by a headless browser).

    spo train --config smoke --output-dir runs/smoke-512 \\
        sampling.prompts_per_iteration=64 sampling.group_size=8 iterations=1
    python benchmarks/bench_inspect.py runs/smoke-512 [--loads 5]

"Loaded" is from the start of navigation to the moment the page has drawn its charts and
the first page of episodes of the newest iteration (the `data-ready` mark its script sets),
in a fresh tab each time, in Debian's chromium driven by playwright (`make install-browser`).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from spo.inspect.page import write_page
from spo.inspect.run_data import episode_files, read_lines


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_times(page: Path, loads: int, chromium: str) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        for _ in range(loads):
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            t0 = time.perf_counter()
            tab.goto(page.as_uri())
            tab.wait_for_selector("body[data-ready='1']", timeout=60_000)
            times.append(time.perf_counter() - t0)
            tab.close()
        browser.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    files = episode_files(args.run_dir)
    newest = max(files)
    episodes = len(read_lines(files[newest]))
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        t0 = time.perf_counter()
        write_page(args.run_dir, page, [str(newest)])
        build = time.perf_counter() - t0
        size = page.stat().st_size
        times = load_times(page, args.loads, args.chromium)
    print(f"{datetime.date.today()}, {os.cpu_count()}-core {cpu_name()}")
    print(f"iteration {newest}: {episodes} episodes")
    print(f"page: {size / 1e6:.2f} MB (built in {build:.1f} s, tokenizer and imports included)")
    print(f"load to ready, {len(times)} fresh tabs: median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s, max {max(times):.2f} s")


if __name__ == "__main__":
    main()
