"""The compact per-row state of the audit and the checks that compare rows with each other.

Per usable row: source (split and file), line, 64-bit hashes of the normalised input and target,
a label id (labelled text) and the LSH band keys: about 105 bytes, whatever the length of the text. The checks
here (duplicates, conflicting labels, leakage, near duplicates, imbalance) run on these arrays.
"""

from __future__ import annotations

from array import array
from collections import Counter

import numpy as np

from . import near
from .findings import Findings
from .items import Item, normalise

_MASK = (1 << 64) - 1
LEAKAGE = ("leakage", "warning", "evaluation rows whose input also appears in train, exactly or nearly (edit similarity "
           f">= {near.THRESHOLD}): test scores will be too good")


def text_hash(text: str) -> int:
    return hash(normalise(text)) & _MASK  # siphash: collisions at 1e6 rows ~ 1e-7


class RowIndex:
    def __init__(self, labelled: bool, near_duplicates: bool = True):
        self.labelled = labelled                   # the targets are labels (else answers)
        self.sources: list[tuple[str, str]] = []   # (split, file) per source code
        self.labels: list[str] = []                # labelled: label id -> label
        self._label_ids: dict[str, int] = {}
        self._src, self._line = array("B"), array("I")
        self._inp, self._tgt, self._lab = array("Q"), array("Q"), array("i")
        self._keys = array("I")
        self.signer = near.Signer() if near_duplicates else None

    def source(self, split: str, file: str) -> int:
        self.sources.append((split, file))
        return len(self.sources) - 1

    def add(self, code: int, it: Item) -> None:
        self._src.append(code)
        self._line.append(it.line)
        self._inp.append(text_hash(it.input))
        self._tgt.append(text_hash(it.target))
        if self.labelled:
            lab = self._label_ids.setdefault(it.target, len(self._label_ids))
            if lab == len(self.labels):
                self.labels.append(it.target)
            self._lab.append(lab)
        else:
            self._lab.append(-1)
        if self.signer is not None:
            self._keys.frombytes(self.signer.keys(it.input).tobytes())

    def __len__(self) -> int:
        return len(self._line)

    def arrays(self) -> "Columns":
        return Columns(self)


class Columns:
    """The index as numpy arrays (views on the arrays above, no copies)."""

    def __init__(self, ix: RowIndex):
        self.ix = ix
        self.src = np.frombuffer(ix._src, dtype=np.uint8) if len(ix) else np.zeros(0, np.uint8)
        self.line = np.frombuffer(ix._line, dtype=np.uint32) if len(ix) else np.zeros(0, np.uint32)
        self.inp = np.frombuffer(ix._inp, dtype=np.uint64) if len(ix) else np.zeros(0, np.uint64)
        self.tgt = np.frombuffer(ix._tgt, dtype=np.uint64) if len(ix) else np.zeros(0, np.uint64)
        self.lab = np.frombuffer(ix._lab, dtype=np.int32) if len(ix) else np.zeros(0, np.int32)
        train_codes = [c for c, (split, _) in enumerate(ix.sources) if split == "train"]
        self.is_train = np.isin(self.src, train_codes)
        self.split_of = np.array([hash(split) & _MASK for split, _ in ix.sources] or [0], dtype=np.uint64)

    def file(self, k: int) -> str:
        return self.ix.sources[self.src[k]][1]

    def where(self, k: int) -> tuple[str, int]:
        return self.file(k), int(self.line[k])


def _first_of_group(*keys: np.ndarray) -> np.ndarray:
    """For each row, the index of the first row with the same keys."""
    n = len(keys[0])
    idx = np.arange(n)
    order = np.lexsort((idx, *reversed(keys)))  # primary key first; ties in row order
    same = np.ones(n, dtype=bool)
    if n:
        same[0] = False
        same[1:] = np.logical_and.reduce([k[order][1:] == k[order][:-1] for k in keys])
    group_start = np.maximum.accumulate(np.where(~same, np.arange(n), 0))
    first = np.empty(n, dtype=np.int64)
    first[order] = order[group_start]
    return first


def check_duplicates(c: Columns, out: Findings) -> list[int]:
    """Exact duplicates (input and target, normalised) within each split. Returns the repeats."""
    first = _first_of_group(c.src.astype(np.uint64), c.inp, c.tgt)
    repeats = np.flatnonzero(first != np.arange(len(first)))
    f = out.get("duplicates", "warning", "exact duplicates after normalising case, whitespace and punctuation")
    for k in repeats:
        f.add(*c.where(k), duplicate_of=int(c.line[first[k]]))
    return [int(k) for k in repeats]


def check_conflicts(c: Columns, out: Findings) -> None:
    train = np.flatnonzero(c.is_train)
    if not len(train):
        return
    inp, tgt = c.inp[train], c.tgt[train]
    order = np.lexsort((train, tgt, inp))
    si, st = inp[order], tgt[order]
    starts = np.flatnonzero(np.r_[True, si[1:] != si[:-1]])
    ends = np.r_[starts[1:], len(si)]
    mixed = [(s, e) for s, e in zip(starts, ends) if st[s] != st[e - 1]]  # sorted by target: first != last
    groups = sorted((np.sort(train[order[s:e]]) for s, e in mixed), key=lambda g: g[0])
    sev = "warning" if c.ix.labelled else "info"
    f = out.get("conflicting_labels", sev, "the same input with different labels or answers")
    for g in groups:
        labels = sorted({c.ix.labels[c.lab[k]] for k in g})[:5] if c.ix.labelled else None
        f.add(*c.where(g[0]), lines=[int(c.line[k]) for k in g][:10], labels=labels)


def check_exact_leakage(c: Columns, out: Findings) -> list[int]:
    """Evaluation rows whose input is exactly a train row's. Returns the train rows (first copies)."""
    train = np.flatnonzero(c.is_train)
    evals = np.flatnonzero(~c.is_train)
    if not len(train) or not len(evals):
        return []
    uniq, first = np.unique(c.inp[train], return_index=True)
    pos = np.clip(np.searchsorted(uniq, c.inp[evals]), 0, len(uniq) - 1)
    hit = uniq[pos] == c.inp[evals]
    leaked = []
    f = out.get(*LEAKAGE)
    for k, j in zip(evals[hit], train[first[pos[hit]]]):
        f.add(*c.where(k), train_line=int(c.line[j]), kind="exact")
        leaked.append(int(j))
    return sorted(set(leaked))


def near_candidates(c: Columns) -> np.ndarray:
    """Candidate pairs for near duplicates (train-train) and near leakage (train-evaluation)."""
    if c.ix.signer is None or len(c.line) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    keys = np.frombuffer(c.ix._keys, dtype=np.uint32).reshape(-1, near.BANDS)
    first_train = _first_of_group(np.where(c.is_train, 0, 1).astype(np.uint64), c.inp)
    n = len(c.line)
    train_first = c.is_train & (first_train == np.arange(n))
    # an evaluation row that is exactly a train row is leakage already, not a near one
    train_inputs = np.unique(c.inp[c.is_train])
    pos = np.clip(np.searchsorted(train_inputs, c.inp), 0, max(len(train_inputs) - 1, 0))
    exact = (train_inputs[pos] == c.inp) if len(train_inputs) else np.zeros(n, dtype=bool)
    eligible = train_first | (~c.is_train & ~exact)
    return near.candidate_pairs(keys, eligible, c.is_train)


def report_near(c: Columns, verified: list[tuple[int, int, float]], out: Findings) -> None:
    """Each train row with an earlier near-duplicate train row, each evaluation row with a near train row;
    the most similar partner is named."""
    best: dict[int, tuple[float, int]] = {}
    for j, k, sim in verified:
        if k not in best or sim > best[k][0]:
            best[k] = (sim, j)
    for k in sorted(best):
        sim, j = best[k]
        if c.is_train[k]:
            out.get("near_duplicates", "info", f"train rows nearly identical to an earlier train row (edit "
                    f"similarity >= {near.THRESHOLD} after normalising; MinHash LSH candidates)").add(
                *c.where(k), similar_to=int(c.line[j]), similarity=round(sim, 3))
    for k in sorted(best):
        sim, j = best[k]
        if not c.is_train[k]:
            out.get(*LEAKAGE).add(*c.where(k), train_line=int(c.line[j]), kind="near", similarity=round(sim, 3))


def check_imbalance(c: Columns, out: Findings) -> None:
    train = Counter(c.ix.labels[i] for i in c.lab[c.is_train].tolist()) if c.is_train.any() else Counter()
    if not train:
        return
    most, least = train.most_common()[0], train.most_common()[-1]
    ratio = most[1] / max(least[1], 1)
    dist = dict(sorted(train.items()))
    few = [lab for lab, n in train.items() if n < 5]
    sev = "warning" if ratio >= 10 or few or len(train) < 2 else "info"
    f = out.get("imbalance", sev, "label distribution in train (majority / minority ratio, labels with few rows)")
    f.count = len(few) if few else (1 if sev == "warning" else 0) or 1
    f.examples.append({"file": c.file(0), "line": None, "distribution": dist,
                       "majority_minority_ratio": round(ratio, 2), "labels_under_5_rows": few})
    if len(train) < 2:
        # every other label is "unseen" then; the one label is the cause worth naming
        out.get("imbalance", "error", f"only one label ({most[0]!r}) in train; a classifier needs 2 or more").add(
            c.file(int(np.flatnonzero(c.is_train)[0])), None, labels=list(train))
        return
    seen = np.array([c.ix.labels[i] in train for i in range(len(c.ix.labels))])
    for k in np.flatnonzero(~c.is_train & ~seen[c.lab]):
        out.get("imbalance", "error", "labels in validation/test that never occur in train").add(
            *c.where(k), label=c.ix.labels[c.lab[k]])
