"""Rows per second of the data audit on SST-2 (../shared/data/sst2), every check on.

    .venv/bin/python benchmarks/audit_speed.py
"""

import resource
import sys
import time
from pathlib import Path

from tuneline.data.audit import audit
from tuneline.data.io import read_rows
from tuneline.models import load_tokenizer, resolve_model

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def main() -> None:
    if not SST2.exists():
        sys.exit(f"{SST2} not found: this benchmark reads ../shared/data/sst2")
    t0 = time.perf_counter()
    splits = {"train": read_rows(SST2 / "train.jsonl", lenient=True),
              "validation": read_rows(SST2 / "validation.jsonl", lenient=True)}
    tok = load_tokenizer(resolve_model("minilm-l6").path)
    t1 = time.perf_counter()
    result = audit(splits, "classify", tokenizer=tok, max_length=64)
    t2 = time.perf_counter()
    rows = sum(result.rows.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"rows {rows}, read {t1 - t0:.1f} s, audit {t2 - t1:.1f} s, {rows / (t2 - t0):.0f} rows/s overall, "
          f"peak RSS {peak:.0f} MiB")
    for f in result.findings:
        print(f"  {f.severity:<8}{f.check:<20}{f.count}")


if __name__ == "__main__":
    main()
