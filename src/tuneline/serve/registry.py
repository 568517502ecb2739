"""The registry of versions of one run: which models exist, which one serves (the champion), and why.

It lives in the run folder as `registry.json`; the run itself is version v1, challengers
trained by `tuneline retrain` are run folders under `versions/`. Every change is a
read-modify-write under a file lock and an atomic replace, so `tuneline serve` (which only
reads) always sees a whole file, and retrain and rollback in two terminals do not collide.
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from ..runs import RunDir, atomic_write_json


class Registry:
    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)
        self.file = self.root / "registry.json"
        self.versions_dir = self.root / "versions"
        if not (self.root / "tuneline.json").exists():
            status = RunDir(self.root).read_manifest().get("status")
            what = f"status {status}" if status else "no tuneline.json"
            raise UserError(f"{run_dir}: not a finished run folder ({what}); train it first with `tuneline train`")

    # -- reading -------------------------------------------------------------
    def read(self) -> dict:
        if self.file.exists():
            return json.loads(self.file.read_text())
        return self._initial()

    def _initial(self) -> dict:
        return {"champion": "v1", "versions": [self._entry("v1", ".", "train", None)], "events": []}

    def _entry(self, vid: str, rel: str, source: str, parent: str | None, **extra) -> dict:
        folder = self.root / rel
        eval_file = folder / "eval.json"
        tuned = json.loads(eval_file.read_text()).get("tuned", {}) if eval_file.exists() else {}
        metrics = {k: v for k, v in tuned.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return {"id": vid, "path": rel, "source": source, "parent": parent, "created": time.time(),
                "test_metrics": metrics, **extra}

    @property
    def champion(self) -> str:
        return self.read()["champion"]

    def version(self, vid: str) -> dict:
        for v in self.read()["versions"]:
            if v["id"] == vid:
                return v
        known = ", ".join(v["id"] for v in self.read()["versions"])
        raise UserError(f"version {vid!r} is not in {self.file} (versions: {known})")

    def path_of(self, vid: str) -> Path:
        return (self.root / self.version(vid)["path"]).resolve()

    def champion_path(self) -> Path:
        return self.path_of(self.champion)

    def next_id(self) -> str:
        return f"v{max(int(v['id'][1:]) for v in self.read()['versions']) + 1}"

    # -- changing ------------------------------------------------------------
    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".registry.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self.read()
                yield data
                atomic_write_json(self.file, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, vid: str, folder: Path, parent: str, **extra) -> dict:
        rel = str(Path(folder).resolve().relative_to(self.root.resolve()))
        with self._locked() as data:
            entry = self._entry(vid, rel, "retrain", parent, **extra)
            data["versions"].append(entry)
        return entry

    def set_decision(self, vid: str, decision: dict) -> None:
        with self._locked() as data:
            for v in data["versions"]:
                if v["id"] == vid:
                    v["decision"] = {k: decision[k] for k in ("wins", "promoted", "gain", "p_value", "metric",
                                                              "champion", "challenger", "reasons") if k in decision}

    def set_champion(self, vid: str, action: str, reason: str) -> None:
        self.version(vid)  # a clear error for an unknown id
        with self._locked() as data:
            previous = data["champion"]
            data["champion"] = vid
            data["events"].append({"time": time.time(), "action": action, "version": vid, "from": previous,
                                   "reason": reason})

    def record(self, vid: str, action: str, reason: str) -> None:
        with self._locked() as data:
            data["events"].append({"time": time.time(), "action": action, "version": vid,
                                   "from": data["champion"], "reason": reason})

    def previous_champion(self) -> str | None:
        """The champion before the current one (for a rollback without --to)."""
        data = self.read()
        for ev in reversed(data["events"]):
            if ev["action"] in ("promote", "rollback") and ev["version"] == data["champion"]:
                return ev["from"]
        return None
