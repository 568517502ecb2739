"""Evaluation: baseline(s) and difference, calibration, slices, counterfactuals, forgetting, saved
predictions that recompute to eval.json, the report, the model card, report/compare commands."""

import json
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu
from sklearn.metrics import accuracy_score, f1_score

import tuneline
from tuneline.errors import UserError
from tuneline.evaluation.calibration import calibration
from tuneline.evaluation.counterfactual import Swapper, load_pairs
from tuneline.evaluation.slices import slice_metrics
from tuneline.evaluation.zero_shot import parse_label

from conftest import WORDS, write_jsonl, write_recipe

GROUP_WORDS = ["he said", "she said", "my husband thinks", "my wife thinks", "John says", "Mary says"]


def group_rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        words = rng.sample(["the", "product", "it", "was", "box", "price"], 3) + [rng.choice(WORDS[label])]
        rng.shuffle(words)
        rows.append({"text": f"{rng.choice(GROUP_WORDS)} {' '.join(words)}", "label": label,
                     "channel": rng.choice(["web", "app"])})
    return rows


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tuneline", *map(str, args)], capture_output=True, text=True, cwd=cwd)


# -- units ----------------------------------------------------------------------------------------
def test_ece_matches_hand_computation():
    probs = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]]
    y = [0, 1, 1, 0]
    cal = calibration(probs, y, n_bins=10)
    # bins: 0.9 -> (0.8,0.9] acc 1; 0.8 -> (0.7,0.8] acc 0; 0.7 -> (0.6,0.7] acc 1; 0.55 -> (0.5,0.6] acc 0
    want = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(0 - 0.55)) / 4
    assert cal["ece"] == pytest.approx(want)
    assert sum(b["count"] for b in cal["bins"]) == 4


def test_swapper_both_ways_keeps_case_and_words():
    sw = Swapper([("he", "she"), ("John", "Mary")])
    assert sw.swap("He said she would call John.") == "She said he would call Mary."
    assert sw.swap("THE HELMET is here") is None  # whole words only
    assert sw.swap("nothing to swap") is None


def test_pairs_file_errors_name_the_line(tmp_path):
    f = tmp_path / "pairs.txt"
    f.write_text("# comment\nking,queen\nbroken line\n")
    with pytest.raises(UserError, match=r"pairs.txt:3"):
        load_pairs(str(f))
    f.write_text("king\tqueen\nprince, princess\n")
    assert load_pairs(str(f))[0] == [("king", "queen"), ("prince", "princess")]


def test_parse_label():
    labels = ["negative", "neutral", "positive", "very positive"]
    assert parse_label("Positive.", labels) == 2
    assert parse_label("The label is: very positive", labels) == 3
    assert parse_label("I think negative, not positive", labels) == 0
    assert parse_label("no idea", labels) is None


def test_slices_gap_ignores_tiny_slices():
    recs = [{"g": "a"}] * 6 + [{"g": "b"}] * 6 + [{"g": "c"}] * 2
    correct = [1] * 6 + [1, 1, 1, 0, 0, 0] + [0, 0]
    out = slice_metrics("g", recs, lambda idx: {"accuracy": sum(correct[i] for i in idx) / len(idx)}, "accuracy")
    assert out["gap"] == pytest.approx(0.5) and out["best"] == "a" and out["worst"] == "b"
    assert [s["value"] for s in out["slices"]] == ["a", "b", "c"]
    with pytest.raises(UserError, match="not in the test rows"):
        slice_metrics("nope", recs, lambda idx: {}, "accuracy")


# -- a classifier run, end to end ------------------------------------------------------------------
@pytest.fixture(scope="module")
def cls_run(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("eval_cls")
    write_jsonl(tmp / "train.jsonl", group_rows(150, 1))
    write_jsonl(tmp / "test.jsonl", group_rows(48, 2))
    recipe = write_recipe(tmp / "recipe.yaml", task="classify", model=str(tiny_bert), method="full",
                          data={"train": "train.jsonl", "test": "test.jsonl"},
                          train={"epochs": 6, "lr": 2e-3, "batch_size": 8, "max_length": 32, "seed": 3},
                          eval={"slices": ["channel"]}, output=str(tmp / "run"))
    tuneline.train(recipe)
    return tmp / "run"


def test_classify_eval_json_has_everything(cls_run):
    ev = json.loads((cls_run / "eval.json").read_text())
    assert ev["baseline"]["kind"] == "majority_class"
    assert ev["difference"]["accuracy"] == pytest.approx(ev["tuned"]["accuracy"] - ev["baseline"]["accuracy"])
    assert 0 <= ev["tuned"]["calibration"]["ece"] <= 1
    assert ev["slices"][0]["column"] == "channel" and {s["value"] for s in ev["slices"][0]["slices"]} == {"web", "app"}
    cf = ev["counterfactuals"]
    assert cf["rows_with_terms"] == 48 and 0 <= cf["flips"] <= 48  # every test text names a group
    assert ev["forgetting"] == {"measured": False,
                                "reason": "the base model is not a causal language model (no next-token head)"}
    assert "zero_shot" not in ev  # an encoder is no chat model
    assert len(ev["most_confident_errors"]) <= 10


def test_classify_numbers_recompute_from_predictions(cls_run):
    ev = json.loads((cls_run / "eval.json").read_text())
    preds = [json.loads(l) for l in (cls_run / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == ev["n"] == 48
    y, p = [r["label"] for r in preds], [r["pred"] for r in preds]
    assert ev["tuned"]["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert ev["tuned"]["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", labels=ev["labels"], zero_division=0))
    probs = np.array([r["probs"] for r in preds])
    assert [ev["labels"][i] for i in probs.argmax(1)] == p
    # slice accuracy recomputed by joining predictions to the test file through file:line
    test_rows = [json.loads(l) for l in (cls_run.parent / "test.jsonl").read_text().splitlines()]
    channel = [test_rows[int(r["where"].rsplit(":", 1)[1]) - 1]["channel"] for r in preds]
    for s in ev["slices"][0]["slices"]:
        idx = [i for i, c in enumerate(channel) if c == s["value"]]
        assert s["n"] == len(idx)
        assert s["accuracy"] == pytest.approx(accuracy_score([y[i] for i in idx], [p[i] for i in idx]))
    # the report shows the same numbers
    page = (cls_run / "report.html").read_text()
    assert f"{ev['tuned']['accuracy']:.4f}" in page and f"{ev['baseline']['accuracy']:.4f}" in page
    assert f"{ev['tuned']['calibration']['ece']:.4f}" in page


def test_report_sections_and_model_card(cls_run):
    page = (cls_run / "report.html").read_text()
    for anchor in ("id='results'", "id='forgetting'", "id='curves'", "id='confusion'", "id='calibration'",
                   "id='errors'", "id='slices'", "id='counterfactuals'", "id='audit'", "id='run'", "id='recipe'"):
        assert anchor in page, anchor
    assert "alt='learning-rate schedule'" in page and "alt='reliability diagram'" in page
    assert "src='http" not in page and 'src="http' not in page  # self-contained
    # the nav links every section the page has, and only those
    nav = page[page.index("<nav>"):page.index("</nav>")]
    ids = re.findall(r"<h2 id='([^']+)'", page)
    assert re.findall(r"href='#([^']+)'", nav) == ids and "per-class" in ids and "diagnostics" in ids
    assert "alt='label distribution'" in page and "hardware</th><td>device cpu" in page  # tables, not JSON
    assert "Set by this run" in page and "<details><summary>The whole resolved recipe" in page
    card = (cls_run / "MODEL_CARD.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    for section in ("## Intended use", "## Training data", "## Training procedure", "## Evaluation",
                    "## Bias, risks and limitations"):
        assert section in card
    assert "Counterfactual swaps" in card and "by `channel`" in card


def test_report_command_rebuilds_and_compare(cls_run, tmp_path):
    (cls_run / "report.html").unlink()
    r = run_cli("report", cls_run)
    assert r.returncode == 0, r.stderr
    assert "id='calibration'" in (cls_run / "report.html").read_text()
    other = tmp_path / "other"
    shutil.copytree(cls_run, other)
    r = run_cli("compare", cls_run, other, "--out", tmp_path / "out" / "cmp.html")
    assert r.returncode == 0, r.stderr
    assert "test accuracy (tuned)" in r.stdout and "note:" not in r.stdout  # same task, same test rows
    page = (tmp_path / "out" / "cmp.html").read_text()
    assert "id='comparison'" in page and "href='../other/report.html'" in page  # relative to the page
    assert run_cli("compare", cls_run).returncode == 2
    bad = run_cli("report", tmp_path / "missing")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


# -- causal models: forgetting, zero-shot baseline --------------------------------------------------
@pytest.fixture(scope="module")
def tiny_chat_llama(tmp_path_factory, tiny_llama):
    """The tiny Llama with a chat template: a 'chat model' for the zero-shot baseline."""
    from transformers import AutoTokenizer

    from tuneline.data.chat import PLAIN_TEMPLATE

    folder = tmp_path_factory.mktemp("tiny_chat")
    shutil.copytree(tiny_llama, folder, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.chat_template = PLAIN_TEMPLATE
    tok.save_pretrained(str(folder))
    return folder


def test_untrained_backbone_forgets_nothing(tiny_llama):
    """The classifier-on-causal-backbone path puts the backbone back under the LM head: with the
    backbone untouched the perplexity must equal the base model's exactly."""
    from transformers import AutoModelForSequenceClassification

    from tuneline.evaluation.forgetting import measure_forgetting
    from tuneline.models import load_tokenizer
    from tuneline.recipe import recipe_from_dict
    from tuneline.tasks import get_task

    tok = load_tokenizer(str(tiny_llama))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_llama), num_labels=2)
    recipe = recipe_from_dict({"task": "classify", "model": str(tiny_llama), "data": {"train": "x"},
                               "eval": {"forgetting": {"max_tokens": 256, "window": 64}}})
    info = {"task": "classify", "base_model_path": str(tiny_llama)}
    f = measure_forgetting(get_task("classify"), model, tok, recipe, info, "cpu")
    assert f["measured"] and f["tokens"] == 256
    assert f["tuned_perplexity"] == pytest.approx(f["base_perplexity"], rel=1e-5)
    assert f["relative_change"] == pytest.approx(0, abs=1e-5)


def test_decoder_classifier_zero_shot_and_forgetting(tmp_path, tiny_chat_llama):
    write_jsonl(tmp_path / "train.jsonl", group_rows(90, 3))
    write_jsonl(tmp_path / "test.jsonl", group_rows(24, 4))
    ref = tmp_path / "ref.txt"
    ref.write_text("The weather was mild and the river ran quietly past the mill. " * 20)
    recipe = write_recipe(tmp_path / "recipe.yaml", task="classify", model=str(tiny_chat_llama), method="lora",
                          data={"train": "train.jsonl", "test": "test.jsonl"},
                          train={"epochs": 2, "lr": 1e-2, "batch_size": 8, "max_length": 32},
                          eval={"forgetting": {"reference": "ref.txt", "max_tokens": 512, "window": 64}},
                          output=str(tmp_path / "run"))
    ev = tuneline.train(recipe).eval
    zs = ev["zero_shot"]
    assert zs["kind"] == "zero_shot" and zs["n"] == 24 and 0 <= zs["unparseable"] <= 24
    assert ev["difference_zero_shot"]["accuracy"] == pytest.approx(ev["tuned"]["accuracy"] - zs["accuracy"])
    f = ev["forgetting"]
    assert f["measured"] and f["reference"] == str(ref.resolve()) and f["tokens"] > 100
    assert f["tuned_perplexity"] != pytest.approx(f["base_perplexity"], rel=1e-6)  # the backbone did change
    assert f["relative_change"] == pytest.approx((f["tuned_perplexity"] - f["base_perplexity"]) / f["base_perplexity"])
    assert "zero-shot" in (tmp_path / "run" / "report.html").read_text()


def test_generate_run_forgetting_slices_counterfactuals(tmp_path, tiny_llama):
    chats = [{"messages": [{"role": "user", "content": f"what does {who} want for {w}"},
                           {"role": "assistant", "content": f"{who} wants {c}"}]}
             for who in ("he", "she") for w, c in [("apple", "red"), ("sky", "blue"), ("snow", "white")] * 3]
    for i, c in enumerate(chats):
        c["topic"] = ["fruit", "nature"][i % 2]
    write_jsonl(tmp_path / "train.jsonl", chats)
    write_jsonl(tmp_path / "test.jsonl", chats[:12])
    (tmp_path / "pairs.txt").write_text("he,she\n")
    recipe = write_recipe(tmp_path / "gen.yaml", task="generate", model=str(tiny_llama), method="lora",
                          data={"train": "train.jsonl", "test": "test.jsonl"},
                          train={"epochs": 1, "lr": 5e-3, "batch_size": 4, "max_length": 64},
                          generate={"max_new_tokens": 6},
                          eval={"slices": ["topic"], "counterfactuals": "pairs.txt",
                                "forgetting": {"max_tokens": 256, "window": 128}},
                          output=str(tmp_path / "run"))
    ev = tuneline.train(recipe).eval
    assert ev["forgetting"]["measured"] and ev["forgetting"]["reference"] == "tuneline:general_english.txt"
    assert {s["value"] for s in ev["slices"][0]["slices"]} == {"fruit", "nature"}
    assert ev["counterfactuals"]["rows_with_terms"] == 12
    preds = [json.loads(l) for l in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    tuned = [p["tuned"] for p in preds]
    refs = [p["reference"] for p in preds]
    assert ev["tuned"]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(tuned, [refs]).score)
    assert ev["baseline"]["chrf"] == pytest.approx(sacrebleu.corpus_chrf([p["baseline"] for p in preds], [refs]).score)
    page = (tmp_path / "run" / "report.html").read_text()
    assert "id='samples'" in page and "id='forgetting-table'" in page
    assert "href='#counterfactuals'" not in page or "id='counterfactuals'" in page  # no link to a missing section
    assert page.count("alt='baseline vs tuned'") == 2  # chrF / BLEU (0-100) apart from exact match / ROUGE-L (0-1)


def test_bad_eval_files_fail_before_training(tmp_path, tiny_bert, cls_data):
    bad_pairs = tmp_path / "pairs.txt"
    bad_pairs.write_text("only-one-term\n")
    for ev, needle in (({"forgetting": {"reference": "missing.txt"}}, "eval.forgetting.reference"),
                       ({"counterfactuals": str(bad_pairs)}, "pairs.txt:1")):
        recipe = write_recipe(tmp_path / "r.yaml", task="classify", model=str(tiny_bert),
                              data={"train": str(cls_data["train"])}, eval=ev, output=str(tmp_path / "run"))
        r = run_cli("train", recipe)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "run").exists()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def test_report_renders_in_headless_chromium(cls_run, tmp_path):
    """As a person sees it: every plot decodes and shows, nothing fails to load, no script error."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        failed, errors = [], []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto((cls_run / "report.html").resolve().as_uri())
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => ({alt: e.alt, ok: e.complete && e.naturalWidth > 0, w: e.naturalWidth}))")
        alts = {i["alt"] for i in images}
        assert {"loss curves", "learning-rate schedule", "reliability diagram", "confusion tuned",
                "baseline vs tuned", "slices channel"} <= alts, alts
        assert all(i["ok"] for i in images), [i for i in images if not i["ok"]]
        assert page.locator("#metrics").is_visible() and page.locator("#forgetting").is_visible()
        assert page.title().startswith("tuneline report")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert not failed and not errors, (failed, errors)
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_plugin_task_without_sections_gets_a_report_and_a_card(tmp_path):
    """A registered task that draws no task section, has no pipeline tag and a lower-is-better key
    metric: report and card come from its headline metrics alone."""
    from tuneline.reporting.model_card import write_model_card
    from tuneline.reporting.report import write_report
    from tuneline.runs import RunDir
    from tuneline.tasks import TASKS, Task, register_task

    @register_task
    class EchoTask(Task):
        name = "echo_test"
        headline_metrics = ("loss", "echo_rate")
        key_metric = "loss"

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.update_manifest(task="echo_test", model="tiny", method="full", status="completed")
    run.eval_file.write_text(json.dumps({
        "task": "echo_test", "n": 3, "split": "test", "tuned": {"loss": 0.5, "echo_rate": 0.9},
        "baseline": {"loss": 0.7, "echo_rate": 0.4, "kind": "copy"}, "difference": {"loss": -0.2, "echo_rate": 0.5}}))
    try:
        write_report(run)
        write_model_card(run)
    finally:
        TASKS.pop("echo_test")
    page = run.report.read_text()
    assert "<b>loss 0.5000</b> on 3 test rows, better than the baseline (copy)" in page
    assert "<td>echo_rate</td><td>0.9000</td><td>0.4000</td>" in page and "id='per-class'" not in page
    card = (run.path / "MODEL_CARD.md").read_text()
    assert "| echo_rate | 0.9000 | 0.4000 | +0.5000 |" in card and "pipeline_tag" not in card  # none to name
    assert "Tuned for the `echo_test` task" in card and "run.predict(['an example text'])" in card


def test_text_metrics_per_answer_chrf_and_length_ratio():
    import sacrebleu

    from tuneline.evaluation.text_metrics import text_metrics

    refs = ["Kentucky", "the order ships within two days from our warehouse in Ohio " * 6]
    short = ["Kentucky", "the order ships within two days"]
    m = text_metrics(short, refs)
    per = [sacrebleu.sentence_chrf(p, [r]).score for p, r in zip(short, refs)]
    assert m["chrf_per_answer"] == pytest.approx(sum(per) / 2)
    # the long reference dominates corpus chrF; each answer counts alike in the per-answer mean
    assert m["chrf"] < m["chrf_per_answer"]
    assert m["length_ratio"] == pytest.approx((1 + 6) / (1 + 66))
    assert m["exact_match"] == 0.5
    assert text_metrics([], [])["length_ratio"] is None


def test_compare_warns_when_runs_are_not_comparable():
    from tuneline.reporting.compare import _setting, warnings

    rows = [("recipe task", ["classify", "generate"]), ("recipe data.test", ["a.jsonl", "b.jsonl"])]
    said = warnings(rows)
    assert any("different tasks" in w for w in said) and any("data.test" in w for w in said)
    assert warnings([("recipe train.lr", ["5e-05", "0.0001"])]) == []
    assert [_setting(v) for v in (True, False, 5e-5, None)] == ["true", "false", "5e-05", "-"]



def test_compare_marks_the_best_tuned_figure_and_charts_the_scores(tmp_path):
    from tuneline.reporting.compare import best_cells, text_table, write_html

    assert best_cells("test accuracy (tuned)", ["0.80", "0.84", "-"]) == {1}
    assert best_cells("test loss (tuned)", ["0.52", "0.61"]) == {0}  # lower is better
    assert best_cells("test accuracy (baseline)", ["0.4", "0.5"]) == set()  # only the tuned rows
    assert best_cells("test accuracy (tuned)", ["0.8", "0.8"]) == set()  # a tie marks nothing
    rows = [("test accuracy (tuned)", ["0.8000", "0.8400"]), ("test loss (tuned)", ["0.52", "0.61"])]
    assert "0.8400 *" in text_table(["a", "b"], rows)
    write_html(["a", "b"], rows, tmp_path / "c.html")
    page = (tmp_path / "c.html").read_text()
    assert "<td class='good'><b>0.8400</b></td>" in page and "alt='tuned scores by run'" in page
