"""Rows per second and peak memory of the data audit, every check on.

    .venv/bin/python benchmarks/audit_speed.py                  # SST-2 train + validation (68k rows)
    .venv/bin/python benchmarks/audit_speed.py --rows 1000000   # + a generated file of 1M rows (~400 MB)

The generated rows join 3-8 SST-2 phrases of one label (seeded), so the file is large and the
label check has something to learn. It is written to --tmp (default /tmp) and kept for reruns.
"""

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

import psutil

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def generate(path: Path, rows: int, seed: int = 0) -> None:
    by_label: dict[str, list[str]] = {}
    with open(SST2 / "train.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            by_label.setdefault(r["label"], []).append(r["text"])
    rng, labels = random.Random(seed), sorted(by_label)
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(rows):
            label = labels[i % len(labels)]
            text = " ; ".join(rng.choice(by_label[label]) for _ in range(rng.randint(3, 8)))
            f.write(json.dumps({"text": text, "label": label}) + "\n")
    tmp.rename(path)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=0, help="audit a generated file of this many rows instead of SST-2")
    ap.add_argument("--tmp", type=Path, default=Path("/tmp"))
    ap.add_argument("--no-label-noise", action="store_true")
    args = ap.parse_args()
    if not SST2.exists():
        sys.exit(f"{SST2} not found: this benchmark reads ../shared/data/sst2")
    from tuneline.data.audit import audit
    from tuneline.models import load_tokenizer, resolve_model

    if args.rows:
        big = args.tmp / f"audit_bench_{args.rows}.jsonl"
        if not big.exists():
            t = time.perf_counter()
            generate(big, args.rows)
            print(f"generated {big} ({big.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s")
        splits = {"train": big}
    else:
        splits = {"train": SST2 / "train.jsonl", "validation": SST2 / "validation.jsonl"}
    tok = load_tokenizer(resolve_model("minilm-l6").path)
    import cleanlab.filter, datasketch, ftfy, sklearn.linear_model  # noqa: F401,E401 - imports out of the timing
    size = sum(Path(p).stat().st_size for p in splits.values()) / 2**20
    setup = psutil.Process().memory_info().rss / 2**20
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = audit(splits, "labelled_text", tokenizer=tok, max_length=64, label_noise=not args.no_label_noise)
    secs, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rows = sum(result.rows.values())
    print(f"rows {rows} ({size:.0f} MiB of JSONL), audit {secs:.1f} s wall ({cpu:.1f} s CPU, load average "
          f"{psutil.getloadavg()[0]:.1f} on {psutil.cpu_count()} cores), {rows / secs:.0f} rows/s; "
          f"RSS after imports and tokenizer {setup:.0f} MiB, peak RSS {peak_mib():.0f} MiB")
    for f in result.findings:
        print(f"  {f.severity:<8}{f.check:<20}{f.count}")


if __name__ == "__main__":
    main()
