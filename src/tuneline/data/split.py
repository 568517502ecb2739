"""Hold out validation / test rows from train when the recipe gives no file for them."""

from __future__ import annotations

import numpy as np

from ..errors import UserError


def split_indices(n: int, size: float, seed: int, strata) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (when every class has 2+ rows), seeded split of row positions 0..n-1:
    returns (kept, held_out), each sorted. Works on positions only, so a file too large for
    memory is split without its rows (`strata`: one label per row, any sortable values)."""
    idx = np.arange(n)
    stratify = strata
    if strata is not None:
        _, counts = np.unique(np.asarray(strata), return_counts=True)
        n_test = max(1, round(size * n))
        if counts.min() < 2 or n_test < len(counts):
            stratify = None
    # imported here: scikit-learn (with scipy) is 3 s of a command's start, and most runs give their splits
    from sklearn.model_selection import train_test_split

    keep, held = train_test_split(idx, test_size=size, random_state=seed, stratify=stratify)
    return np.sort(keep), np.sort(held)


def split_rows(rows, size: float, seed: int, strata: list | None, name: str):
    """Split Rows (or a streamed split, which has the same `subset`): returns (kept, held_out)."""
    if len(rows) < 3:  # nothing would be left to train on (scikit-learn's message names no file)
        raise UserError(f"{rows.path}: {len(rows)} rows, too few to hold out a {name} split from; add rows or "
                        f"give data.{name} as a file of its own")
    keep, held = split_indices(len(rows), size, seed, strata)
    return rows.subset(keep), rows.subset(held, path=f"{rows.path} ({name} split)")
