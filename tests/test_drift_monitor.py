"""Drift of live inputs against the training data, the service's alert, and `tuneline monitor`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from tuneline.serve.app import ServeSettings, create_app
from tuneline.serve.drift import psi

from conftest import synthetic_rows
from serve_helpers import shared_classify_run

ODD = ["Quantum chromodynamics describes the strong interaction between quarks and gluons in hadrons",
       "Der Zug nach München fährt heute wegen Bauarbeiten später ab, bitte beachten Sie die Aushänge",
       "Mitochondrial oxidative phosphorylation couples electron transport to adenosine triphosphate synthesis",
       "Sedimentary basins record tectonic subsidence through stratigraphic sequences of marine deposits"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert):
    return shared_classify_run(tmp_path_factory, tiny_bert)


def test_psi():
    assert psi([0.25] * 4, [0.25] * 4) == 0
    assert psi([0.25] * 4, [0.7, 0.1, 0.1, 0.1]) > 0.25 > psi([0.25] * 4, [0.3, 0.2, 0.25, 0.25])


def test_drift_alert_in_service_and_monitor_cli(run, tmp_path):
    db = f"sqlite:///{tmp_path / 'm.db'}"
    with TestClient(create_app(ServeSettings(run_dir=str(run), db_url=db))) as c:
        few = c.get("/api/drift?refresh=true").json()
        assert few["verdict"] == "insufficient"
        for r in synthetic_rows(40, 21):
            assert c.post("/v1/classify", json={"input": r["text"]}).status_code == 200
        calm = c.get("/api/drift?refresh=true").json()
        # inputs like the training data: no input check alerts (the tiny random model's labels may
        # well differ from the training labels: that is what label_psi is for)
        assert calm["n"] == 40 and not [a for a in calm["alerts"] if not a.startswith(("label", "confidence"))], calm
        assert {ch["name"] for ch in calm["checks"]} == {"length_psi", "vocabulary_psi", "embedding_centroid_distance",
                                                         "label_psi", "confidence_drop"}
        for i in range(12):
            c.post("/v1/classify", json={"input": [ODD[i % 4], ODD[(i + 1) % 4], ODD[(i + 2) % 4], ODD[(i + 3) % 4]]})
        drifted = c.get("/api/drift?refresh=true").json()
        assert drifted["verdict"] == "alert"
        names = {a.split()[0] for a in drifted["alerts"]}
        assert {"length_psi", "vocabulary_psi"} <= names, drifted
        health = c.get("/health").json()
        assert health["alerts"] == drifted["alerts"]  # the service shows it
        assert 'tuneline_drift_alert{check="vocabulary_psi"} 1.0' in c.get("/metrics").text
        rid = c.post("/v1/classify", json={"input": "awful product"}).json()["request_id"]
        c.post("/v1/feedback", json={"request_id": rid, "rating": "down", "corrected_label": "negative"})
    assert (run / "drift_reference.json").exists()  # built once per version, then reused
    proc = subprocess.run([sys.executable, "-m", "tuneline", "monitor", str(run), "--db", db, "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["traffic"]["requests"] == 53 and out["traffic"]["errors"] == 0
    assert out["traffic"]["latency_ms"]["p50"] > 0
    assert out["feedback"]["total"] == 1 and out["feedback"]["down"] == 1
    assert out["drift"]["verdict"] == "alert" and out["champion"] == "v1"
    text = subprocess.run([sys.executable, "-m", "tuneline", "monitor", str(run), "--db", db],
                          capture_output=True, text=True, timeout=300)
    assert text.returncode == 0 and "ALERT: vocabulary_psi" in text.stdout and "Feedback" in text.stdout


def test_monitor_without_a_store_is_a_clear_error(run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tuneline", "monitor", str(run)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "no monitoring store" in proc.stderr and "Traceback" not in proc.stderr
