"""Does the search beat the default recipe within a fixed budget? SST-2 with MiniLM on a CPU.

    python benchmarks/tune_sst2.py [--budget-minutes 8] [--out runs/bench-tune-sst2]

1. trains the recipe as written (tuneline's defaults: lr 5e-5 for full tuning, batch 16, linear
   schedule), with the same validation checks a trial gets, and reads its validation accuracy;
2. runs `tuneline tune` on the same recipe with --budget-minutes;
3. prints both validation accuracies (the objective) and, for information, both test accuracies.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(HERE / "tune_sst2.yaml"))
    ap.add_argument("--budget-minutes", type=float, default=8.0)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--out", default="runs/bench-tune-sst2")
    args = ap.parse_args()

    from tuneline.cli.app import quiet_libraries
    from tuneline.training.pipeline import train
    from tuneline.recipe import load_recipe
    from tuneline.tune.search import run_search
    from tuneline.tune.trial import objective_value, with_checks

    quiet_libraries()
    out = Path(args.out)
    recipe, base_dir = load_recipe(args.recipe)
    metric, checks = recipe.search.metric, recipe.search.evals_per_trial
    default = with_checks(recipe.model_copy(deep=True, update={"search": None}), str(base_dir), checks)

    t0 = time.time()
    run = train(default, output=out / "default", base_dir=base_dir, overwrite=True)
    default_seconds = time.time() - t0
    default_val = objective_value(run.path, metric)

    t0 = time.time()
    result = run_search(args.recipe, budget_seconds=args.budget_minutes * 60, nproc=args.nproc,
                        output=out / "study", overwrite=True)
    search_seconds = time.time() - t0
    s, best = result.summary, result.best

    rows = [
        ("default recipe", f"{default_val:.4f}", f"{run.eval['tuned'][metric]:.4f}", f"{default_seconds:.0f} s",
         f"lr {default.train.lr:g}, batch {default.train.batch_size}, {default.train.scheduler}"),
        (f"search, best of {sum(s['counts'].values())}", f"{best['value']:.4f}", f"{best['test'][metric]:.4f}",
         f"{search_seconds:.0f} s", ", ".join(f"{k.split('.')[-1]} {v:.3g}" if isinstance(v, float) else
                                             f"{k.split('.')[-1]} {v}" for k, v in best["params"].items())),
    ]
    print(f"\nSST-2, MiniLM-L6 full tuning, {recipe.data.max_rows} train rows, 1 epoch; budget "
          f"{args.budget_minutes:g} min, {args.nproc} process(es); trials: {json.dumps(s['counts'])}")
    head = ("run", f"validation {metric}", f"test {metric}", "wall", "hyperparameters")
    w = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    for i, r in enumerate((head, *rows)):
        print("  ".join(c.ljust(w[j]) for j, c in enumerate(r)))
        if i == 0:
            print("  ".join("-" * x for x in w))
    print(f"difference in validation {metric}: {best['value'] - default_val:+.4f}")
    if s.get("importances"):
        print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in s["importances"].items()))


if __name__ == "__main__":
    main()
