"""The data audit against defects planted at known lines in copies of real files.

    .venv/bin/python benchmarks/audit_planted.py [--rows 5000] [--per-class 20] [--seed 0] [--json out.json]

For each dataset (SST-2 and the support intents for classify; support chats and Dolly
instructions for generate) a slice of the clean train file and the clean test file are copied,
each defect class is planted at random lines, and the audit runs on the original slice and on the
planted copy. Printed per check: lines planted, how many of them the audit names (recall), and
what the audit reports on the clean original (false alarms, or real defects of the original).

The planting is also what tests/test_audit_planted.py runs on small synthetic files.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {  # name: (task, train, test, max_length)
    "sst2": ("classify", "sst2/train.jsonl", "sst2/validation.jsonl", 128),
    "intent": ("classify", "support/intent_train.jsonl", "support/intent_test.jsonl", 128),
    "support": ("generate", "support/train.jsonl", "support/test.jsonl", 512),
    "instructions": ("generate", "instructions/train.jsonl", "instructions/test.jsonl", 512),
}

# -- row access: classify {"text", "label"}, chats {"messages": [user, assistant, ...]} ---------------

def get_input(row: dict) -> str:
    return row["text"] if "text" in row else next(m["content"] for m in row["messages"] if m["role"] == "user")


def set_input(row: dict, text: str) -> dict:
    row = copy.deepcopy(row)
    if "text" in row:
        row["text"] = text
    else:
        next(m for m in row["messages"] if m["role"] == "user")["content"] = text
    return row


def get_target(row: dict) -> str:
    return row["label"] if "label" in row else row["messages"][-1]["content"]


def set_target(row: dict, target: str) -> dict:
    row = copy.deepcopy(row)
    if "label" in row:
        row["label"] = target
    else:
        row["messages"][-1]["content"] = target
    return row


# -- the defects -----------------------------------------------------------------------------------

FILLER = ["really", "quite", "very", "just", "also", "still", "even", "so", "the", "a"]
NON_ASCII = ["café", "naïve", "déjà vu", "“quoted”", "it’s", "façade", "jalapeño", "Zürich", "coöperate", "€5"]
CONTROL = ["\x07", "\x1b", "\x00", "\x08", "\x0c"]
LUHN_CARDS = ["4111 1111 1111 1111", "5500-0000-0000-0004", "4012888888881881", "378282246310005",
              "6011 1111 1111 1117", "5105 1051 0510 5100", "4242424242424242", "3530 1113 3330 0000"]


def small_edit(text: str, rng: random.Random) -> str:
    """One or two small edits: a word replaced, inserted, dropped or swapped, or a typo."""
    words = text.split()
    for _ in range(rng.choice((1, 1, 2))):
        if len(words) < 2:
            words.append(rng.choice(FILLER))
            continue
        i = rng.randrange(len(words))
        op = rng.choice(("replace", "insert", "delete", "swap", "typo"))
        if op == "replace":
            words[i] = rng.choice(FILLER)
        elif op == "insert":
            words.insert(i, rng.choice(FILLER))
        elif op == "delete":
            del words[i]
        elif op == "swap" and i + 1 < len(words):
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            w = words[i]
            j = rng.randrange(len(w))
            words[i] = w[:j] + rng.choice("abcdefghijklmnopqrstuvwxyz") + w[j + 1:]
    return " ".join(words)


def pii_text(k: int, rng: random.Random) -> str:
    n = rng.randrange(100, 999)
    return [
        lambda: f"mail me at jane.roe{n}@example.org",
        lambda: f"call +1 415 555 0{n}",
        lambda: f"my number is (020) 7946 0{n}",
        lambda: f"ring 0171 234 5{n}",
        lambda: f"card {rng.choice(LUHN_CARDS)} please",
        lambda: f"from ip 192.168.{n % 256}.{rng.randrange(1, 255)}",
        lambda: f"contact {rng.choice(['bob', 'ann.lee', 'k_smith'])}+{n}@mail.co.uk",
        lambda: f"server 10.{n % 256}.0.{rng.randrange(1, 255)} is mine",
    ][k % 8]()


def mojibake(text: str, rng: random.Random) -> str:
    words = text.split()
    words.insert(rng.randrange(len(words) + 1), rng.choice(NON_ASCII))
    return " ".join(words).encode("utf-8").decode("cp1252", errors="replace")


class Plan:
    """The planted copy as a list of lines, each tagged with the check expected to name it."""

    def __init__(self, rows: list[dict]):
        self.lines: list[tuple[bytes, str | None]] = [(self.enc(r), None) for r in rows]

    @staticmethod
    def enc(row: dict) -> bytes:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode()

    def replace(self, i: int, data: bytes, tag: str) -> None:
        self.lines[i] = (data, tag)

    def insert_after(self, i: int, data: bytes, tag: str, rng: random.Random) -> None:
        """Somewhere after line i (duplicates and conflicts are reported at the later copy)."""
        self.lines.insert(rng.randrange(i + 1, len(self.lines) + 1), (data, tag))

    def write(self, path: Path) -> dict[str, set[int]]:
        expected: dict[str, set[int]] = defaultdict(set)
        with open(path, "wb") as f:
            for n, (data, tag) in enumerate(self.lines, start=1):
                f.write(data)
                if tag:
                    expected[tag].add(n)
        return dict(expected)


def plant(train: list[dict], test: list[dict], task: str, per_class: int, max_length: int, seed: int,
          out_dir: Path) -> tuple[Path, Path, dict]:
    """Write planted copies of train and test into out_dir. Returns (train, test, {check: {(split, line)}})."""
    rng = random.Random(seed)
    tr, te = Plan(train), Plan(test)
    pool = list(range(len(train)))
    rng.shuffle(pool)
    labels = sorted({r["label"] for r in train}) if task == "classify" else []

    def take(k: int, min_words: int = 0) -> list[int]:
        got = [i for i in pool if len(get_input(train[i]).split()) >= min_words][:k]
        for i in got:
            pool.remove(i)
        return got

    def other_label(lab: str) -> str:
        return rng.choice([x for x in labels if x != lab])

    n = per_class
    # rows changed in place
    for k, i in enumerate(take(n)):
        tr.replace(i, tr.enc(set_input(train[i], f"{get_input(train[i])} {pii_text(k, rng)}")), "pii")
    for i in take(n, min_words=3):
        tr.replace(i, tr.enc(set_input(train[i], mojibake(get_input(train[i]), rng))), "encoding")
    for i in take(n // 2):
        t = get_input(train[i])
        j = rng.randrange(len(t) + 1)
        tr.replace(i, tr.enc(set_input(train[i], t[:j] + rng.choice(CONTROL) + t[j:])), "encoding")
    for i in take(n // 2):
        data = tr.enc(train[i])
        tr.replace(i, data[:len(data) // 2] + b"\xff\xfe" + data[len(data) // 2:], "encoding")
    for k, i in enumerate(take(n)):
        if k % 2:
            tr.replace(i, tr.enc(train[i])[: -12] + b"\n", "invalid_rows")     # cut short
        else:
            tr.replace(i, tr.enc({"text": get_input(train[i])} if task == "classify" else {"text": "no messages"}),
                       "invalid_rows")                                         # a field missing
    for i in take(n):
        tr.replace(i, tr.enc(set_input(train[i], rng.choice(["", "   ", "\n\t "]))), "empty_text")
    if task == "classify":
        flips = max(n, len(train) // 50)  # 2 % of the rows
        for i in take(flips):
            tr.replace(i, tr.enc(set_target(train[i], other_label(train[i]["label"]))), "label_noise")
    # too long: the input repeated well past max_length tokens
    for i in take(n // 2 if task == "generate" else n):
        t = get_input(train[i])
        long = " ".join([t] * (3 * max_length // max(1, len(t.split())) + 1))
        tr.replace(i, tr.enc(set_input(train[i], long)),
                   "too_long" if task == "classify" else "format")  # a cut single-turn prompt is an overflow
    if task == "generate":
        for i in take(n // 2):  # long history, short last exchange: truncation cuts old turns only
            r = train[i]
            filler = " ".join([get_input(r)] * (3 * max_length // max(1, len(get_input(r).split())) + 1))
            msgs = [{"role": "user", "content": filler}, {"role": "assistant", "content": "noted"}] + r["messages"]
            tr.replace(i, tr.enc({**r, "messages": msgs}), "too_long")
        for k, i in enumerate(take(n)):
            r, m = train[i], copy.deepcopy(train[i]["messages"])
            if k % 4 == 0:
                m = m[::-1]                                                       # assistant first
            elif k % 4 == 1:
                m = m[:1]                                                         # no answer
            elif k % 4 == 2:
                m = m[:1] + [{"role": "system", "content": "be brief"}] + m[1:]  # system in the middle
            else:                                                                 # the answer overflows
                m[-1]["content"] = " ".join([m[-1]["content"]] * (3 * max_length // max(1, len(m[-1]["content"].split())) + 1))
            tr.replace(i, tr.enc({**r, "messages": m}), "format")
    # rows added after their source (duplicates and conflicts are named at the later copy);
    # after every in-place change, since an insertion shifts the indices of the rows after it
    for k, i in enumerate(take(n)):
        r = train[i]
        if k % 2:  # the same after normalising case, spacing and punctuation
            r = set_input(r, get_input(r).upper().replace(" ", "  ") + " !")
        tr.insert_after(tr.lines.index((tr.enc(train[i]), None)), tr.enc(r), "duplicates", rng)
    for i in take(n, min_words=4):
        r = set_input(train[i], small_edit(get_input(train[i]), rng))
        tr.insert_after(tr.lines.index((tr.enc(train[i]), None)), tr.enc(r), "near_duplicates", rng)
    for i in take(n):
        donor = train[rng.choice(pool)]
        r = set_target(train[i], other_label(train[i]["label"]) if task == "classify" else get_target(donor))
        tr.insert_after(tr.lines.index((tr.enc(train[i]), None)), tr.enc(r), "conflicting_labels", rng)
    # leakage: train rows copied into the test file, exactly and with small edits
    for k, i in enumerate(take(n, min_words=4)):
        r = train[i] if k % 2 else set_input(train[i], small_edit(get_input(train[i]), rng))
        te.insert_after(rng.randrange(len(te.lines)), te.enc(r), "leakage", rng)
    train_path, test_path = out_dir / "train.jsonl", out_dir / "test.jsonl"
    expected = {c: {("train", x) for x in lines} for c, lines in tr.write(train_path).items()}
    for c, lines in te.write(test_path).items():
        expected.setdefault(c, set()).update(("test", x) for x in lines)
    return train_path, test_path, expected


# -- scoring ---------------------------------------------------------------------------------------

def named_lines(result, files: dict[str, str]) -> dict[str, set]:
    """check -> {(split, line)} of every line a finding names (conflicts name all their lines)."""
    split_of = {str(Path(p)): s for s, p in files.items()}
    got: dict[str, set] = defaultdict(set)
    for f in result.findings:
        for ex in f.examples:
            split = split_of.get(str(Path(ex["file"])))
            for line in [ex.get("line"), *(ex.get("lines") or [])]:
                if line is not None:
                    got[f.check].add((split, line))
    return got


def run_audit(train: Path, test: Path, task: str, tokenizer, max_length: int):
    from tuneline.data.audit import audit, findings
    from tuneline.tasks import get_task

    findings.MAX_EXAMPLES = 10**9  # every line, to score recall
    return audit({"train": train, "test": test}, get_task(task).data_shape, tokenizer=tokenizer,
                 max_length=max_length)


def score(name: str, task: str, rows: int, per_class: int, seed: int, tokenizer, work: Path) -> list[dict]:
    train_file, test_file, max_length = DATA / DATASETS[name][1], DATA / DATASETS[name][2], DATASETS[name][3]
    rng = random.Random(seed)
    train = [json.loads(x) for x in train_file.read_text(encoding="utf-8").splitlines()]
    train = rng.sample(train, min(rows, len(train)))
    test = [json.loads(x) for x in test_file.read_text(encoding="utf-8").splitlines()]
    clean_dir, dirty_dir = work / name / "clean", work / name / "planted"
    clean_dir.mkdir(parents=True)
    dirty_dir.mkdir(parents=True)
    clean_train, clean_test = clean_dir / "train.jsonl", clean_dir / "test.jsonl"
    clean_train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train), encoding="utf-8")
    clean_test.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in test), encoding="utf-8")
    p_train, p_test, expected = plant(train, test, task, per_class, max_length, seed, dirty_dir)
    clean = run_audit(clean_train, clean_test, task, tokenizer, max_length)
    dirty = run_audit(p_train, p_test, task, tokenizer, max_length)
    found = named_lines(dirty, {"train": str(p_train), "test": str(p_test)})
    clean_counts = defaultdict(int)
    for f in clean.findings:
        if f.check != "imbalance" or f.severity != "info":
            clean_counts[f.check] += f.count
    out = []
    for check in sorted(set(expected) | set(clean_counts)):
        want = expected.get(check, set())
        hit = want & found.get(check, set())
        out.append({"dataset": name, "check": check, "planted": len(want), "found": len(hit),
                    "recall": round(len(hit) / len(want), 3) if want else None,
                    "clean_findings": clean_counts.get(check, 0),
                    "missed": sorted(x[1] for x in want - hit)[:8]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000, help="train rows sampled from each file")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from tuneline.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model("minilm-l6").path)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            task = DATASETS[name][0]
            table += score(name, task, args.rows, args.per_class, args.seed, tok, Path(tmp))
    print(f"{'dataset':<13}{'check':<20}{'planted':>8}{'found':>7}{'recall':>8}{'clean':>7}  missed lines (first 8)")
    for r in table:
        rec = f"{r['recall']:.2f}" if r["recall"] is not None else "-"
        print(f"{r['dataset']:<13}{r['check']:<20}{r['planted']:>8}{r['found']:>7}{rec:>8}{r['clean_findings']:>7}  "
              f"{r['missed'] or ''}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    sys.exit(main())
