"""Real-model loop on a copy of runs/reviews (MiniLM): sarcastic praise (systematic error) vs random labels (noise).

    python benchmarks/retrain_loop_demo.py systematic runs/reviews
    python benchmarks/retrain_loop_demo.py noise runs/reviews

The run is copied to /tmp/demo/KIND (never changed); feedback goes through the real service app.
"""
import json, random, shutil, sys, time
from collections import Counter
from pathlib import Path
from fastapi.testclient import TestClient
from tuneline.serve.app import ServeSettings, create_app
from tuneline.serve.retrain import retrain

kind = sys.argv[1]
src = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/reviews")
run = Path(f"/tmp/demo/{kind}/reviews")
if run.parent.exists():
    shutil.rmtree(run.parent)
run.parent.mkdir(parents=True)
shutil.copytree(src, run, ignore=shutil.ignore_patterns("monitor.db*", "registry.json", "versions", "drift_reference.json"))
rng = random.Random(1)
products = ["blender", "kettle", "phone case", "desk lamp", "backpack", "toaster", "headset", "vacuum", "router", "mixer",
            "drill", "monitor", "keyboard", "speaker", "camera"]
fails = ["stopped working after a week", "fell apart on day two", "broke the first time I used it",
         "died after three uses", "arrived cracked and leaking", "quit charging after ten days"]
openers = ["Oh great,", "Just perfect,", "Wonderful,", "Fantastic,", "Brilliant,", "Amazing,"]
def sarcastic(n, seed):
    r = random.Random(seed)
    return list(dict.fromkeys(f"{r.choice(openers)} my new {r.choice(products)} {r.choice(fails)}. Love that for me." for _ in range(n)))
db = f"sqlite:///{run.parent / 'monitor.db'}"
with TestClient(create_app(ServeSettings(run_dir=str(run), db_url=db))) as c:
    if kind == "systematic":
        texts = sarcastic(60, 2)[:40]
        preds = c.post("/v1/classify", json={"input": texts}).json()["results"]
        print("champion on sarcastic praise:", Counter(p["label"] for p in preds), flush=True)
        for t in texts:
            rid = c.post("/v1/classify", json={"input": t}).json()["request_id"]
            c.post("/v1/feedback", json={"request_id": rid, "rating": "down", "corrected_label": "negative"})
    else:
        texts = [json.loads(l)["text"] for l in open(Path(__file__).resolve().parents[1] / "examples/reviews/test.jsonl")]
        rng.shuffle(texts)
        for t in texts[:40]:
            rid = c.post("/v1/classify", json={"input": t}).json()["request_id"]
            c.post("/v1/feedback", json={"request_id": rid, "corrected_label": rng.choice(["negative", "neutral", "positive"])})
t0 = time.time()
d = retrain(run, db_url=db)
print("retrain seconds", round(time.time() - t0), flush=True)
if kind == "systematic" and d["promoted"]:
    from tuneline.inference import load_run
    fresh = [t for t in sarcastic(200, 77) if t not in texts][:30]
    for v, p in (("v1", run), ("v2", run / "versions" / "v2")):
        print(v, "on 30 new sarcastic reviews:", Counter(x["label"] for x in load_run(p).predict(fresh)))
print(json.dumps({k: d[k] for k in ("promoted", "gain", "p_value", "rows_better", "rows_worse", "test_drop", "champion", "challenger", "reasons")}, indent=1))
