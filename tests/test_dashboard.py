"""The dashboard in a real browser (Debian's Chromium through Playwright): playground and feedback."""

from __future__ import annotations

import os
import sqlite3

import pytest

from tuneline.serve.app import ServeSettings, create_app

from serve_helpers import LiveServer, shared_classify_run

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert):
    return shared_classify_run(tmp_path_factory, tiny_bert)


def test_playground_and_feedback_in_a_browser(run, tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    monkeypatch.setenv("TUNELINE_API_KEY", "browser-key")  # the page must ask for it and send it
    app = create_app(ServeSettings(run_dir=str(run), db_url=f"sqlite:///{tmp_path / 'm.db'}"))
    with LiveServer(app) as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("#key-box", state="visible")
            page.fill("#api-key", "browser-key")
            page.click("#save-key")
            page.wait_for_function("document.querySelector('#run-name').textContent.includes('classify')")
            assert "serving v1" in page.text_content("#version")

            page.fill("#prompt", "the box was broken and useless")
            page.click("#send")
            page.wait_for_function("document.querySelector('#request-id').textContent.startsWith('cls-')")
            answer = page.text_content("#answer")
            assert any(label in answer for label in ("negative", "neutral", "positive"))
            request_id = page.text_content("#request-id")

            page.click("#thumb-down")
            page.select_option("#corrected-label", "negative")
            page.fill("#comment", "clearly negative")
            page.click("#send-feedback")
            page.wait_for_function("document.querySelector('#feedback-status').textContent === 'feedback saved'")
            page.wait_for_function("document.querySelector('#feedback-rows').textContent.includes('clearly negative')")
            assert "1 feedback rows: 0 up, 1 down" in page.text_content("#feedback-summary")
            # what the next retrain would learn from, as text: a classifier's corrected labels
            page.wait_for_function("document.querySelector('#next-retrain').textContent.includes('objective sft')")
            assert "1 of 5 needed" in page.text_content("#next-retrain")
            assert "negative" in page.text_content("#next-retrain-rows")

            page.wait_for_function("document.querySelector('#runs').textContent.includes('(serving)')")
            runs = page.text_content("#runs")
            assert "accuracy" in runs and ".000 /" not in runs and "n 1" not in runs  # scores, not row counts
            assert page.text_content("#thumb-down") == "Wrong answer"  # text, not an emoji a font may lack
            page.click("button[data-report='v1']")
            page.wait_for_selector("#report-frame", state="visible")
            # live traffic refreshes every 5 s and counts the playground's request
            page.wait_for_function("/requests\\s*1\\s*errors\\s*0/.test(document.querySelector('#traffic').textContent)",
                                   timeout=15_000)
            assert "bars: requests per" in page.text_content("#traffic-axis")
        finally:
            browser.close()
    con = sqlite3.connect(tmp_path / "m.db")
    fb = con.execute("select request_id, rating, corrected_label, comment from feedback").fetchall()
    con.close()
    assert fb == [(request_id, "down", "negative", "clearly negative")]
