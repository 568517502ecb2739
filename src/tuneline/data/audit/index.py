"""The compact per-row state of the audit and the checks that compare rows with each other.

Per usable row: source (split and file), line, 64-bit hashes of the normalised input and target,
a label id (labelled text), a third 64-bit value (`alt`: a pair's rejected answer hashed, a
judgement's label 0/1, else 0) and the LSH band keys: about 113 bytes, whatever the length of the
text. The checks here (duplicates, conflicting labels, leakage, near duplicates, imbalance; for
preference rows identical and contradicting pairs, contradicting judgements, label balance) run
on these arrays.
"""

from __future__ import annotations

from array import array
from collections import Counter

import numpy as np

from . import near
from .findings import Findings
from .items import Item, normalise

_MASK = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: combines hashes in order
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
        self._alt = array("Q")
        self._keys = array("I")
        self.signer = near.Signer() if near_duplicates else None

    def source(self, split: str, file: str) -> int:
        self.sources.append((split, file))
        return len(self.sources) - 1

    def add(self, code: int, it: Item) -> None:
        self._src.append(code)
        self._line.append(it.line)
        inp = text_hash(it.input)
        if it.context:  # a prompt's system text tells prompts apart, but stays out of the near-duplicate text
            inp = (text_hash(it.context) * _MIX + inp) & _MASK
        self._inp.append(inp)
        self._tgt.append(text_hash(it.target))
        self._alt.append(int(it.label) if it.label is not None else text_hash(it.other) if it.other is not None else 0)
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
        self.alt = np.frombuffer(ix._alt, dtype=np.uint64) if len(ix) else np.zeros(0, np.uint64)
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


def check_duplicates(c: Columns, out: Findings, prompts_only: bool = False) -> list[int]:
    """Exact duplicates (input, target and alt, normalised) within each split; with `prompts_only`
    (GRPO prompts) the same prompt twice, whatever else the rows hold. Returns the repeats."""
    if prompts_only:
        first = _first_of_group(c.src.astype(np.uint64), c.inp)
        f = out.get("duplicate_prompts", "warning", "the same prompt more than once in a split (after normalising "
                    "case, whitespace and punctuation): it is sampled and rewarded that many times more often")
    else:
        first = _first_of_group(c.src.astype(np.uint64), c.inp, c.tgt, c.alt)
        f = out.get("duplicates", "warning", "exact duplicates after normalising case, whitespace and punctuation")
    repeats = np.flatnonzero(first != np.arange(len(first)))
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


def check_exact_leakage(c: Columns, out: Findings, all_copies: bool = False) -> list[int]:
    """Evaluation rows whose input is exactly a train row's. Returns the train rows: the first copies,
    or with `all_copies` every train row with a leaked input (preference rows: one prompt, many rows)."""
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
    if all_copies and leaked:
        leaked = np.flatnonzero(c.is_train & np.isin(c.inp, c.inp[evals[hit]])).tolist()
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


# -- preference rows ------------------------------------------------------------------

def _combine(*cols: np.ndarray) -> np.ndarray:
    """One 64-bit key per row from several hash columns, in order (wrapping arithmetic)."""
    h = np.zeros(len(cols[0]), dtype=np.uint64)
    for col in cols:
        h = h * np.uint64(_MIX) + col.astype(np.uint64)
    return h


def check_identical_pairs(c: Columns, out: Findings) -> list[int]:
    """Pairs whose chosen and rejected answers are equal after normalising: they teach nothing. An
    error where they are most of a split's pairs (the pairs were built wrongly). Returns the rows."""
    same = c.tgt == c.alt
    for code, (split, file) in enumerate(c.ix.sources):
        rows = np.flatnonzero((c.src == code) & same)
        total = int((c.src == code).sum())
        if not len(rows):
            continue
        if 2 * len(rows) > total:
            f = out.get("identical_pair", "error", "most pairs of a split have the same chosen and rejected answer "
                        "(after normalising case, whitespace and punctuation): the data teaches nothing; check how "
                        "the pairs were built")
        else:
            f = out.get("identical_pair", "warning", "pairs whose chosen and rejected answers are the same after "
                        "normalising case, whitespace and punctuation: they teach nothing")
        for k in rows:
            f.add(*c.where(k), split=split, identical_in_split=f"{len(rows)} of {total}")
    return np.flatnonzero(same).tolist()


def check_contradicting_pairs(c: Columns, out: Findings) -> None:
    """The same prompt with chosen and rejected swapped in another row of the split: the two rows
    cancel out. Reported at the later row, naming the earlier one."""
    if not len(c.line):
        return
    forward = _combine(c.src, c.inp, c.tgt, c.alt)
    swapped = _combine(c.src, c.inp, c.alt, c.tgt)
    order = np.argsort(forward, kind="stable")  # equal keys in row order: searchsorted finds the first
    keys = forward[order]
    pos = np.clip(np.searchsorted(keys, swapped), 0, len(keys) - 1)
    hit = (keys[pos] == swapped) & (c.tgt != c.alt)  # an identical pair is its own swap: identical_pair's
    f = out.get("contradicting_pairs", "warning", "the same prompt with chosen and rejected swapped in another row "
                "of the split: the two rows cancel out; keep the right one")
    for k in np.flatnonzero(hit):
        j = int(order[pos[k]])
        if j < k:
            f.add(*c.where(k), contradicts_line=int(c.line[j]))


def check_contradicting_judgements(c: Columns, out: Findings) -> None:
    """The same prompt and completion labelled both true and false within a split."""
    n = len(c.line)
    if not n:
        return
    first = _first_of_group(c.src.astype(np.uint64), c.inp, c.tgt)
    lab = c.alt.astype(np.int64)
    lo, hi = np.full(n, 2, np.int64), np.full(n, -1, np.int64)
    np.minimum.at(lo, first, lab)
    np.maximum.at(hi, first, lab)
    rows = np.flatnonzero((lo[first] == 0) & (hi[first] == 1))
    if not len(rows):
        return
    rows = rows[np.argsort(first[rows], kind="stable")]
    starts = np.flatnonzero(np.r_[True, first[rows][1:] != first[rows][:-1]])
    f = out.get("contradicting_judgements", "warning", "the same prompt and completion labelled both desirable "
                "(true) and undesirable (false): the labels cancel out; keep the right one")
    for s, e in zip(starts, np.r_[starts[1:], len(rows)]):
        g = rows[s:e]
        f.add(*c.where(g[0]), desirable_lines=[int(c.line[k]) for k in g if lab[k] == 1][:5],
              undesirable_lines=[int(c.line[k]) for k in g if lab[k] == 0][:5])


KTO_RATIO = 10  # beyond 1:10 desirable : undesirable (either way) a warning


def check_label_balance(c: Columns, out: Findings) -> None:
    """KTO learns from desirable and undesirable answers: train with one label only is an error (a
    held-out split with one label a warning: its measures see one side), beyond 1:KTO_RATIO a warning."""
    for code, (split, file) in enumerate(c.ix.sources):
        labels = c.alt[c.src == code]
        good, bad = int((labels == 1).sum()), int((labels == 0).sum())
        if not good + bad:
            continue
        counts = {"split": split, "desirable": good, "undesirable": bad}
        if not good or not bad:
            only = "desirable (true)" if good else "undesirable (false)"
            if split == "train":
                out.get("label_balance", "error", f"train holds only {only} judgements; KTO learns from the contrast "
                        "and needs both: add rows labelled " + ("false" if good else "true")).add(file, None, **counts)
            else:
                out.get("label_balance", "warning", "a held-out split holds judgements of one label only: its "
                        "KTO measures see one side").add(file, None, **counts)
            continue
        ratio = max(good, bad) / min(good, bad)
        if split == "train" and ratio > KTO_RATIO:
            rare = "desirable" if good < bad else "undesirable"
            out.get("label_balance", "warning", f"desirable : undesirable judgements in train beyond 1:{KTO_RATIO}; "
                    "KTO's desirable_weight / undesirable_weight can compensate (weight x count of each side about "
                    "even, the desirable side 1 to 4/3 times the other)").add(
                file, None, **counts, ratio=round(ratio, 2),
                suggest=f"{rare}_weight: {round(max(good, bad) / min(good, bad), 2)} (the other 1.0)")
        elif split == "train":
            out.get("label_balance", "info", "desirable : undesirable judgements in train").add(
                file, None, **counts, ratio=round(ratio, 2))
