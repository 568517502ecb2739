"""label_noise: confident learning (cleanlab) on out-of-fold probabilities of a quick TF-IDF model,
fitted on a bounded uniform sample of the train rows (reservoir sampling while streaming)."""

from __future__ import annotations

import random
from collections import Counter

from .findings import Findings
from .items import Item

MAX_ROWS = 100_000          # the sample the quick model sees; larger train files are sampled
MAX_CHARS = 2_000           # of each input: the quick model needs the words, not whole documents
MAX_SAMPLE_CHARS = 10_000_000  # of the whole sample (TF-IDF bigrams of 100k long rows took ~1.5 GB); SST-2 has 4.6M


class Reservoir:
    """A uniform sample of at most `size` train rows and about MAX_SAMPLE_CHARS characters, kept in
    row order (Algorithm R, seeded). Over the character budget the sample shrinks by dropping random
    members: a random subset of a uniform sample is a uniform sample."""

    def __init__(self, size: int | None = None, seed: int = 0):
        self.size, self.seen, self.chars = size or MAX_ROWS, 0, 0
        self.rows: list[tuple[int, str, int, str, str]] = []  # (order, file, line, input, label)
        self.rng = random.Random(seed)

    def add(self, it: Item) -> None:
        row = (self.seen, it.file, it.line, it.input[:MAX_CHARS], it.target)
        self.seen += 1
        if len(self.rows) < self.size:
            self.rows.append(row)
        else:
            j = self.rng.randrange(self.seen)
            if j >= self.size:
                return
            self.chars -= len(self.rows[j][3])
            self.rows[j] = row
        self.chars += len(row[3])
        while self.chars > MAX_SAMPLE_CHARS and len(self.rows) > 1:
            self.size = len(self.rows) - 1
            gone = self.rows.pop(self.rng.randrange(len(self.rows)))
            self.chars -= len(gone[3])

    def sample(self) -> list[tuple[int, str, int, str, str]]:
        return sorted(self.rows)


def check_label_noise(res: Reservoir, out: Findings) -> None:
    train = res.sample()
    counts = Counter(r[4] for r in train)
    if len(counts) < 2 or min(counts.values()) < 3 or len(train) < 30:
        return
    import numpy as np
    from cleanlab.filter import find_label_issues
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    labels = sorted(counts)
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index[r[4]] for r in train])
    x = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=200_000).fit_transform(
        [r[3] for r in train])
    folds = min(5, min(counts.values()))
    probs = cross_val_predict(LogisticRegression(max_iter=300, C=20.0), x, y, cv=folds, method="predict_proba")
    accuracy = float((probs.argmax(1) == y).mean())
    if accuracy < 0.75:
        return  # the quick model is too weak to dispute anyone's labels (measured: false alarms below this)
    ranked = find_label_issues(y, probs, return_indices_ranked_by="self_confidence")
    # keep strong disputes only: the quick model is confident elsewhere and nearly rules out the label
    ranked = [i for i in ranked if probs[i][y[i]] < 0.15 and probs[i].max() >= 0.6]
    share = len(ranked) / len(train)
    sev = "warning" if share >= 0.01 else "info"
    sampled = f", fitted on a random sample of {len(train)} of {res.seen} train rows" if res.seen > len(train) else ""
    f = out.get("label_noise", sev, f"rows whose label a cross-validated quick model (accuracy {accuracy:.2f}"
                                    f"{sampled}) strongly disputes, most doubtful first")
    for i in ranked:
        _, file, line, _, label = train[i]
        f.add(file, line, label=label, suggested=labels[int(probs[i].argmax())],
              confidence_in_label=round(float(probs[i][y[i]]), 3))
