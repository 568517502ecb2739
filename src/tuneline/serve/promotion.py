"""Champion against challenger: per-row scores of held-out judged answers, the promotion rule
(serve/retrain.py's docstring, step 4) and the decision as printed."""

from __future__ import annotations

from .feedback import Judged


def sign_test(champion: list[float], challenger: list[float]) -> tuple[int, int, float]:
    """(rows the challenger wins, rows it loses, one-sided p-value that it wins no more than by chance)."""
    from scipy.stats import binomtest

    wins = sum(c > h for h, c in zip(champion, challenger))
    losses = sum(c < h for h, c in zip(champion, challenger))
    if wins + losses == 0:
        return 0, 0, 1.0
    return wins, losses, float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def decide(opts, champ_test, chal_test, champ_fb, chal_fb, champ_judged=(), chal_judged=()) -> dict:
    """The promotion rule (module docstring, 4): per-row scores of the test rows, the held-out
    corrections (0-1) and the held-out judged answers (signed mean log-probs) of both versions."""
    champ_judged, chal_judged = list(champ_judged), list(chal_judged)
    champ_all, chal_all = champ_test + champ_fb, chal_test + chal_fb
    gain = _mean(chal_all) - _mean(champ_all)
    test_drop = _mean(champ_test) - _mean(chal_test)
    jw, jl, jp = sign_test(champ_judged, chal_judged)
    if not champ_judged:  # the rule of corrections alone
        wins, losses, p = sign_test(champ_all, chal_all)
        sign_rows, gain_on = "test + held-out corrections", "test + held-out corrections"
    else:
        wins, losses, p = sign_test(champ_fb + champ_judged, chal_fb + chal_judged)
        sign_rows = "held-out feedback"
        if champ_fb:
            gain_on = "test + held-out corrections"
        else:
            gain, gain_on = (jw - jl) / len(champ_judged), "judged feedback (rows won - rows lost) / rows"
    reasons = []
    if gain < opts.margin:
        reasons.append(f"gain {gain:+.4f} on {gain_on} is under the margin {opts.margin}")
    if p > opts.max_p_value:
        reasons.append(f"sign test over {sign_rows}: p = {p:.3g} ({wins} rows better, {losses} worse) is over "
                       f"{opts.max_p_value}")
    if test_drop > opts.max_test_drop:
        reasons.append(f"the original test set drops by {test_drop:.4f} (allowed {opts.max_test_drop})")
    return {
        "wins": not reasons, "gain": round(gain, 4), "p_value": p, "rows_better": wins, "rows_worse": losses,
        "test_drop": round(test_drop, 4), "gain_on": gain_on, "sign_test_on": sign_rows,
        "champion": {"test": round(_mean(champ_test), 4), "feedback": round(_mean(champ_fb), 4),
                     "all": round(_mean(champ_all), 4),
                     "judged": round(_mean(champ_judged), 4) if champ_judged else None},
        "challenger": {"test": round(_mean(chal_test), 4), "feedback": round(_mean(chal_fb), 4),
                       "all": round(_mean(chal_all), 4),
                       "judged": round(_mean(chal_judged), 4) if chal_judged else None},
        "judged": {"rows": len(champ_judged), "rows_better": jw, "rows_worse": jl, "p_value": jp},
        "reasons": reasons or [(f"gain {gain:+.4f} on {gain_on} >= {opts.margin}, sign test over {sign_rows} "
                                f"p = {p:.3g} <= {opts.max_p_value}, test drop {test_drop:.4f} <= "
                                f"{opts.max_test_drop}")],
    }


def judged_scores(run, judged: list[Judged], batch_size: int | None = None) -> list[float]:
    """Per rated answer: the loaded version's mean log-prob per answer token of that answer given
    its prompt, + for a thumbs up and - for a thumbs down (0 for a row that cannot be encoded)."""
    import torch

    from ..data.batching import sorted_batches
    from ..data.chat import ensure_chat_template, with_system
    from ..recipe import eval_batch_size
    from ..tasks.generate import DROPPED, ChatEncoded, collate_chat, encode_row
    from ..tasks.logprobs import sequence_logps

    if not judged:
        return []
    tok, recipe = run.tokenizer, run.recipe
    batch_size = batch_size or eval_batch_size(recipe)
    ensure_chat_template(tok)
    options = recipe.generate.model_copy(update={"loss_on": "last_assistant"})
    enc, rows = ChatEncoded([], [], [], [], []), []
    for i, j in enumerate(judged):
        msgs = with_system(j.prompt, recipe.generate.system_prompt) + [{"role": "assistant", "content": j.answer}]
        ids, labels, status = encode_row(tok, msgs, options, run.max_length)
        if status & DROPPED:
            continue
        enc.input_ids.append(ids)
        enc.labels.append(labels)
        rows.append(i)
    scores = [0.0] * len(judged)
    device = next(run.model.parameters()).device
    with torch.no_grad():
        for idx in sorted_batches(enc.lengths, batch_size):
            b = {k: v.to(device) for k, v in collate_chat(enc, idx, tok.pad_token_id).items()}
            sums, counts = sequence_logps(run.model, b)
            for k, i in enumerate(idx):
                sign = 1.0 if judged[rows[i]].kind == "thumbs_up" else -1.0
                scores[rows[i]] = sign * float(sums[k]) / max(int(counts[k]), 1)
    return scores


def format_decision(d: dict) -> str:
    judged = d.get("judged") or {"rows": 0}
    extra = f" + {judged['rows']} held-out rated answers" if judged["rows"] else ""
    lines = []
    if d.get("objective"):
        lines.append(f"challenger learned by {d['objective']}" + _learned_text(d.get("learned_from") or {}))
    lines += [(f"{d['metric']} on the same rows ({d['test_rows']} test + {d['feedback_eval_rows']} held-out "
               f"corrections{extra}):"),
              f"  {'':<22}{'test':>8}{'feedback':>10}{'all':>8}" + (f"{'judged':>10}" if judged["rows"] else "")]
    for who in ("champion", "challenger"):
        s = d[who]
        line = f"  {who + ' ' + d[who + '_id']:<22}{s['test']:>8.4f}{s['feedback']:>10.4f}{s['all']:>8.4f}"
        if judged["rows"]:
            line += f"{s['judged']:>10.4f}"
        lines.append(line)
    if judged["rows"]:
        lines.append(f"  rated answers (mean log-prob per token, + liked / - disliked): challenger better on "
                     f"{judged['rows_better']}, worse on {judged['rows_worse']} of {judged['rows']}")
    verdict = ("PROMOTED: " + d["challenger_id"] + " now serves") if d["promoted"] else \
        ("WINS but not promoted (--no-promote)" if d["wins"] else
         "NOT PROMOTED: " + d["champion_id"] + " keeps serving")
    lines += [f"{verdict}", *("  " + r for r in d["reasons"])]
    return "\n".join(lines)


def _learned_text(learned: dict) -> str:
    keys = [("original", "original rows"), ("corrections", "corrections"), ("thumbs_up", "thumbs up"),
            ("thumbs_down", "thumbs down"), ("original_pairs", "original pairs"),
            ("correction_pairs", "correction pairs")]
    parts = [f"{learned[k]} {name}" for k, name in keys if learned.get(k)]
    return f" from {', '.join(parts)} ({learned['rows']} rows)" if parts and "rows" in learned else ""
