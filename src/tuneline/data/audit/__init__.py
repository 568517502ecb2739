"""The data audit: what is wrong with the rows before any training time is spent.

Each finding has a stable check name, a severity (error | warning | info), a count and
examples with file and line. Checks: invalid_rows, empty_text, encoding, format (chat rows,
incl. template overflow), duplicates, near_duplicates, conflicting_labels, leakage, imbalance,
too_long, pii, label_noise; for preference rows (data/preference.py) empty_prompt, and pairs:
empty_side, identical_pair, contradicting_pairs; judgements: empty_side,
contradicting_judgements, label_balance; prompts: duplicate_prompts. Leakage of preference rows
is the same prompt in train and a held-out split. Files are streamed: memory holds a compact state per row
(index.py), not the rows. The audit checks row shapes (items.py), not tasks: a task names its
shape in `Task.data_shape`.
"""

from .driver import AuditResult, audit, guess_shape
from .findings import Finding, Findings, error_summary, format_table
from .items import Item, normalise
from .row_checks import find_pii, mask

__all__ = ["AuditResult", "Finding", "Findings", "Item", "audit", "error_summary", "find_pii", "format_table",
           "guess_shape", "mask", "normalise"]
