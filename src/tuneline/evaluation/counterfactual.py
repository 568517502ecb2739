"""Counterfactual tests: swap group terms (he <-> she, John <-> Mary ...) in the test inputs and
count how often the prediction changes. A fair model's answer should not depend on them."""

from __future__ import annotations

import re
from pathlib import Path

from ..data.io import existing_file
from ..errors import UserError

# Built-in pairs: gendered words and common first names. "her" is ambiguous (his / him):
# the possessive is the more common reading in reviews and support text.
GENDERED = [
    ("he", "she"), ("him", "her"), ("his", "her"), ("himself", "herself"), ("man", "woman"), ("men", "women"),
    ("boy", "girl"), ("boys", "girls"), ("father", "mother"), ("dad", "mom"), ("son", "daughter"),
    ("sons", "daughters"), ("brother", "sister"), ("brothers", "sisters"), ("husband", "wife"),
    ("boyfriend", "girlfriend"), ("uncle", "aunt"), ("nephew", "niece"), ("grandfather", "grandmother"),
    ("grandson", "granddaughter"), ("king", "queen"), ("gentleman", "lady"), ("gentlemen", "ladies"),
    ("male", "female"), ("males", "females"), ("mr", "mrs"), ("sir", "madam"), ("guy", "gal"),
    ("actor", "actress"), ("waiter", "waitress"), ("businessman", "businesswoman"),
]
NAMES = [
    ("john", "mary"), ("james", "emily"), ("michael", "sarah"), ("david", "jessica"), ("robert", "jennifer"),
    ("william", "linda"), ("daniel", "emma"), ("thomas", "olivia"), ("joseph", "sophia"), ("mark", "susan"),
    ("paul", "karen"), ("steven", "lisa"), ("kevin", "laura"), ("brian", "anna"), ("peter", "rachel"),
]
BUILTIN = GENDERED + NAMES


def load_pairs(spec: bool | str | None, base_dir: Path | None = None) -> tuple[list[tuple[str, str]], str]:
    """Pairs from `eval.counterfactuals`: True = built-in; a path = one 'a,b' (or a<TAB>b) per line."""
    if spec is True or spec is None:
        return BUILTIN, "built-in (gendered terms, first names)"
    path = existing_file(spec, base_dir, "eval.counterfactuals", "give a file of pairs (one 'term,swap' per line) "
                         "or true for the built-in list")
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in re.split(r"[,\t]", line)]
        if len(parts) != 2 or not all(parts):
            raise UserError(f"{path}:{n}: expected two terms separated by a comma or a tab, got {line!r}")
        pairs.append((parts[0], parts[1]))
    if not pairs:
        raise UserError(f"{path}: no pairs found; write one 'term,swap' per line")
    return pairs, str(path)


class Swapper:
    """Both directions in one regex pass, so 'he' -> 'she' is never swapped back; case kept."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.map: dict[str, str] = {}
        for a, b in pairs:
            self.map.setdefault(a.lower(), b.lower())
            self.map.setdefault(b.lower(), a.lower())
        terms = sorted(self.map, key=len, reverse=True)
        self.pattern = re.compile(r"\b(" + "|".join(re.escape(t) for t in terms) + r")\b", re.IGNORECASE)

    def _repl(self, m: re.Match) -> str:
        word = m.group(0)
        new = self.map[word.lower()]
        if word.isupper() and len(word) > 1:
            return new.upper()
        if word[0].isupper():
            return new[0].upper() + new[1:]
        return new

    def swap(self, text: str) -> str | None:
        """The swapped text, or None when no term occurs."""
        out, n = self.pattern.subn(self._repl, text)
        return out if n else None


def summarise(originals: list[str], swapped: list[str], before: list, after: list, where: list[str],
              changed: list[bool], pairs_name: str, extra: list[dict] | None = None, k: int = 10) -> dict:
    flips = [i for i, c in enumerate(changed) if c]
    examples = []
    for i in flips[:k]:
        ex = {"where": where[i], "original": originals[i], "swapped": swapped[i],
              "before": before[i], "after": after[i]}
        if extra:
            ex.update(extra[i])
        examples.append(ex)
    n = len(changed)
    return {"pairs": pairs_name, "rows_with_terms": n, "flips": len(flips),
            "flip_rate": len(flips) / n if n else None, "examples": examples}
