"""Training on data larger than memory: a generated 1M-row classify corpus, streamed.

    .venv/bin/python benchmarks/streaming_1m.py [--rows 1000000] [--compare-rows 200000] [--steps 50]

Writes the corpus (texts of 20-60 words, 4 labels) to --dir (default /tmp/tuneline-streaming-1m),
then runs `tuneline train` on MiniLM (minilm-l6, full) for --steps optimizer steps:

1. streaming on the whole corpus, first run (builds the token cache),
2. the same again (reuses the cache),
3. on the first --compare-rows rows: in memory (data.streaming: false), then streamed.

Each run is a separate process, sampled every 0.1 s for its resident memory. Printed per run:
preparation time (start until the first training step), tokenisation rows/s (the cache's own
timing), peak RSS, and peak RSS without file-backed pages (the memory-mapped cache counts in RSS
as it is read, but the kernel can drop those pages at any time), and the cache file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

CUES = {
    "world": ["election", "minister", "border", "embassy", "treaty", "parliament", "refugees", "summit"],
    "sports": ["match", "goal", "coach", "season", "tournament", "striker", "league", "victory"],
    "business": ["shares", "profit", "merger", "investors", "revenue", "market", "quarterly", "bank"],
    "science": ["research", "molecule", "telescope", "species", "experiment", "genome", "physics", "climate"],
}


def vocabulary() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "src" / "tuneline" / "resources" / "general_english.txt").read_text()
    return sorted(set(re.findall(r"[a-z]{2,}", text.lower())))


def write_corpus(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words, labels = vocabulary(), list(CUES)
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            label = labels[rng.randrange(4)]
            n = rng.randint(20, 60)
            text = rng.choices(words, k=n - 2) + rng.choices(CUES[label], k=2)
            rng.shuffle(text)
            f.write(json.dumps({"text": " ".join(text), "label": label}) + "\n")


def head(src: Path, dst: Path, rows: int) -> None:
    with src.open("rb") as f, dst.open("wb") as g:
        for i, line in enumerate(f):
            if i >= rows:
                break
            g.write(line)


def run_train(recipe: Path, out: Path, home: Path, streaming: bool) -> dict:
    cmd = [sys.executable, "-m", "tuneline.cli", "train", str(recipe), "-o", str(out), "--overwrite",
           "--set", f"data.streaming={'true' if streaming else 'false'}"]
    env = {**os.environ, "TUNELINE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"rss": 0, "anon": 0, "prep_rss": 0, "prep_anon": 0}
    done, preparing = threading.Event(), threading.Event()
    preparing.set()

    def sample():
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                m = p.memory_info()
            except psutil.Error:
                break
            peak["rss"] = max(peak["rss"], m.rss)
            peak["anon"] = max(peak["anon"], m.rss - m.shared)
            if preparing.is_set():  # until the first training step
                peak["prep_rss"], peak["prep_anon"] = peak["rss"], peak["anon"]
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    first_step, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if first_step is None and line.startswith("Training "):
            first_step = time.perf_counter() - t0
            preparing.clear()
    proc.wait()
    done.set()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit("".join(lines[-40:]) + f"\ntuneline train failed (exit {proc.returncode})")
    said = "".join(lines)
    tok = re.search(r"tokenised in ([\d.]+) s \(([\d,]+) rows/s, (\d+) processes\)", said)
    audit = re.search(r"\(([\d.]+) s; details in the run's audit.json\)", said)
    return {"prepare_s": round(first_step or wall, 1), "wall_s": round(wall, 1),
            "peak_rss_mib": round(peak["rss"] / 2**20), "peak_anon_mib": round(peak["anon"] / 2**20),
            "prepare_peak_rss_mib": round(peak["prep_rss"] / 2**20),
            "prepare_peak_anon_mib": round(peak["prep_anon"] / 2**20),
            "tokenise_s": float(tok.group(1)) if tok else None,
            "tokenise_rows_per_s": int(tok.group(2).replace(",", "")) if tok else None,
            "tokenise_processes": int(tok.group(3)) if tok else None,
            "audit_s": float(audit.group(1)) if audit else None}


def cache_mib(home: Path) -> float:
    files = list((home / "cache" / "tokens").glob("*.arrow"))
    return round(sum(f.stat().st_size for f in files) / 2**20, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--compare-rows", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/tuneline-streaming-1m"))
    ap.add_argument("--runs", default="stream 1st,stream cached,memory slice,stream slice",
                    help="which of the four runs, comma-separated")
    args = ap.parse_args()
    d = args.dir
    d.mkdir(parents=True, exist_ok=True)
    big = d / f"train-{args.rows}.jsonl"
    if not big.exists():
        t0 = time.perf_counter()
        write_corpus(big, args.rows)
        print(f"corpus: {args.rows:,} rows, {big.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t0:.0f} s -> {big}")
    small = d / f"train-{args.compare_rows}.jsonl"
    if not small.exists():
        head(big, small, args.compare_rows)

    results = {}
    for name, data, streaming in (("stream 1st", big, True), ("stream cached", big, True),
                                  ("memory slice", small, False), ("stream slice", small, True)):
        if name not in args.runs.split(","):
            continue
        rows = args.rows if data == big else args.compare_rows
        # held-out splits of ~2,000 rows each: evaluation stays cheap whatever the corpus size
        share = max(0.001, round(2000 / rows, 4))
        recipe = d / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({
            "task": "classify", "model": "minilm-l6", "method": "full",
            "data": {"train": str(data), "validation_size": share, "test_size": share},
            "train": {"max_steps": args.steps, "batch_size": 32, "max_length": 128, "lr": 5e-5, "log_every": 10},
            "eval": {"counterfactuals": False}}))
        home = d / ("home-" + data.stem)
        results[name] = r = run_train(recipe, d / "run", home, streaming)
        r["rows"], r["steps"] = rows, args.steps
        r["cache_mib"] = cache_mib(home) if streaming else None
        print(f"{name:<14} {json.dumps(r)}", flush=True)
    saved = d / "results.json"
    results = {**(json.loads(saved.read_text()) if saved.exists() else {}), **results}
    saved.write_text(json.dumps(results, indent=1))
    print(f"\n{'run':<14} {'rows':>9} {'prepare s':>9} {'tokenise rows/s':>15} {'peak RSS MiB':>12} "
          f"{'w/o mapped':>10} {'prep peak':>9} {'cache MiB':>9}")
    for name, r in results.items():
        print(f"{name:<14} {r['rows']:>9,} {r['prepare_s']:>9} {str(r['tokenise_rows_per_s'] or '-'):>15} "
              f"{r['peak_rss_mib']:>12} {r['peak_anon_mib']:>10} {r.get('prepare_peak_rss_mib', '-'):>9} "
              f"{str(r['cache_mib'] or '-'):>9}")


if __name__ == "__main__":
    main()
