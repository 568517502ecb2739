"""Hold out validation / test rows from train when the recipe gives no file for them."""

from __future__ import annotations

from collections import Counter

from sklearn.model_selection import train_test_split

from .io import Rows


def split_rows(rows: Rows, size: float, seed: int, strata: list | None, name: str) -> tuple[Rows, Rows]:
    """Stratified (when every class has 2+ rows), seeded split: returns (kept, held_out)."""
    idx = list(range(len(rows)))
    stratify = strata
    if strata is not None:
        counts = Counter(strata)
        n_test = max(1, round(size * len(idx)))
        if min(counts.values()) < 2 or n_test < len(counts):
            stratify = None
    keep, held = train_test_split(idx, test_size=size, random_state=seed, stratify=stratify)
    keep.sort()
    held.sort()
    return rows.subset(keep), rows.subset(held, path=f"{rows.path} ({name} split)")
