"""Near duplicates: texts whose normalised forms differ by a few small edits.

The measure is the edit similarity of the normalised texts (rapidfuzz's ratio: 1 - insertions and
deletions / total length) >= THRESHOLD, so one changed word in an eight-word sentence still counts,
which word-shingle Jaccard at 0.8 does not (one substitution needs 14+ words there).

Finding the pairs: MinHash signatures (datasketch) of 3-grams cut into LSH bands give
candidates; the candidates are verified with the edit similarity. Per row only the band keys are
kept (BANDS x 4 bytes), not the signature; the verification reads the candidate rows again. With 20
bands of 5 rows a pair becomes a candidate with probability 1 - (1 - J^5)^20 (J = 3-gram Jaccard):
0.98 for small edits of real rows, whose J is >= 0.63 for 95 % of them (measured on SST-2, support
intents and chats, Dolly prompts); 32-bit keys collide by chance now and then, which only adds a
candidate that the verification drops.
"""

from __future__ import annotations

import numpy as np

from .items import normalise

THRESHOLD = 0.8
NUM_PERM, BANDS = 100, 20
ROWS = NUM_PERM // BANDS
PARTNERS = 3  # in an LSH bucket each row is paired with this many train rows before it (linear, not quadratic)


def grams(text: str) -> list[int]:
    """The normalised text's 3-grams (of its UTF-8 bytes: one integer each, no string slicing),
    what the MinHash signature is made of; MinHash mixes them with its own hash (murmur3 finaliser)."""
    b = np.frombuffer(normalise(text).encode(), dtype=np.uint8).astype(np.uint32)
    if len(b) < 3:
        return [int.from_bytes(b.astype(np.uint8).tobytes() or b"\0", "big")]
    return np.unique((b[:-2] << 16) | (b[1:-1] << 8) | b[2:]).tolist()


def similarity(a: str, b: str) -> float:
    """Edit similarity of two normalised texts, 0..1."""
    from rapidfuzz import fuzz

    return fuzz.ratio(a, b) / 100


class Signer:
    """Text -> BANDS 32-bit LSH band keys."""

    def __init__(self):
        from datasketch import MinHash

        # one object, cleared per row (copying costs more than hashing); the grams are integers already
        self.minhash = MinHash(num_perm=NUM_PERM, hashfunc=int)
        # a random linear combination mod 2^64 of a band's values, top 32 bits: the band's key
        self.mult = np.random.default_rng(12345).integers(1, 2**63, size=ROWS, dtype=np.uint64) | np.uint64(1)

    def keys(self, text: str) -> np.ndarray:
        m = self.minhash
        m.clear()
        m.update_batch(grams(text))
        hv = m.hashvalues.astype(np.uint64).reshape(BANDS, ROWS)
        return ((hv * self.mult).sum(axis=1) >> np.uint64(32)).astype(np.uint32)


def candidate_pairs(keys: np.ndarray, eligible: np.ndarray, is_train: np.ndarray) -> np.ndarray:
    """Pairs (j, k) of row indices sharing a band key: j a train row, k a later train row or any
    evaluation row. `eligible` rows take part (first copies of train texts, evaluation rows
    that are not exact copies of a train row). Returns an (m, 2) int64 array, unique pairs.

    Within a band's bucket each row is paired with the PARTNERS train rows before it (in row
    order), not with every member: templated data makes buckets of thousands of rows, and all
    pairs would be quadratic. Twenty bands give each row different neighbours."""
    train = np.flatnonzero(eligible & is_train)
    evals = np.flatnonzero(eligible & ~is_train)
    n = np.int64(len(is_train))
    codes = np.zeros(0, dtype=np.int64)
    for b in range(keys.shape[1]):
        order = np.argsort(keys[train, b], kind="stable")  # stable: a bucket's rows stay in row order
        sk, rows = keys[train, b][order], train[order]
        found = [codes]
        for w in range(1, PARTNERS + 1):
            same = sk[w:] == sk[:-w]
            found.append(rows[:-w][same] * n + rows[w:][same])
        if len(evals) and len(sk):
            ek = keys[evals, b]
            end = np.searchsorted(sk, ek, side="right")  # just past the bucket's last train row
            for w in range(1, PARTNERS + 1):
                pos = end - w
                ok = (pos >= 0) & (sk[np.maximum(pos, 0)] == ek)
                found.append(rows[pos[ok]] * n + evals[ok])
        codes = np.unique(np.concatenate(found))  # merged band by band: memory holds distinct pairs only
    return np.stack([codes // n, codes % n], axis=1)
