"""Old module names (before training/) import as the same module objects, so patches made through them apply."""

import importlib

from tuneline.moved import MOVED


def test_old_names_are_the_new_modules():
    for old, new in MOVED.items():
        old_mod, new_mod = importlib.import_module(old), importlib.import_module(new)
        assert old_mod is new_mod
        assert new_mod.__spec__.name == new  # the module keeps its own spec


def test_a_patch_through_the_old_name_is_seen_by_the_code(monkeypatch):
    import tuneline.distributed as old
    from tuneline.training import distributed

    monkeypatch.setattr(old, "active", lambda: "patched")
    assert distributed.active() == "patched"
