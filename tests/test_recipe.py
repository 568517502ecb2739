import pytest

from tuneline.errors import UserError
from tuneline.recipe import load_recipe, recipe_from_dict

BASE = {"task": "classify", "model": "minilm-l6", "data": {"train": "t.jsonl"}}


def test_defaults_and_types():
    r = recipe_from_dict(BASE)
    assert r.method == "full" and r.train.scheduler == "linear" and r.train.precision == "auto"
    assert r.data.validation is None and r.lora.target_modules is None
    assert r.train.lr == 5e-5
    assert recipe_from_dict({**BASE, "method": "lora"}).train.lr == 5e-4
    assert recipe_from_dict({**BASE, "method": "lora", "train": {"lr": 1e-3}}).train.lr == 1e-3


def test_unknown_key_names_key_and_allowed(tmp_path):
    with pytest.raises(UserError) as e:
        recipe_from_dict({**BASE, "train": {"learning_rate": 1e-4}})
    msg = str(e.value)
    assert "train.learning_rate" in msg and "unknown key" in msg and "lr" in msg


@pytest.mark.parametrize("data, hint", [
    ({"train": {"learning_rate": 1e-4}}, "train.learning_rate: unknown key; did you mean train.lr?"),
    ({"num_train_epochs": 3}, "num_train_epochs: unknown key; did you mean train.epochs?"),
    ({"train": {"gradient_accumulation_steps": 4}}, "did you mean train.grad_accum?"),
    ({"train": {"micro_batch_size": 4}}, "did you mean train.batch_size?"),
    ({"train": {"batch_sise": 4}}, "train.batch_sise: unknown key; did you mean train.batch_size?"),
    ({"lora": {"rank": 4}}, "lora.rank: unknown key; (allowed keys here: r, alpha"),
])
def test_unknown_keys_from_other_tools_get_our_name(data, hint):
    # names users bring from the Hugging Face Trainer and Axolotl, and typos
    with pytest.raises(UserError) as e:
        recipe_from_dict({**BASE, **data})
    assert hint in str(e.value)


def test_a_bad_set_value_is_named_with_its_value(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("task: classify\nmodel: minilm-l6\ndata: {train: t.jsonl}\n")
    with pytest.raises(UserError) as e:
        load_recipe(path, ["train.lr=abc"])
    assert "train.lr (--set train.lr=abc): Input should be a valid number" in str(e.value)
    assert "(got 'abc')" in str(e.value)


def test_bad_value_names_allowed_values():
    with pytest.raises(UserError) as e:
        recipe_from_dict({**BASE, "method": "qlora9"})
    assert "method: unknown 'qlora9'; allowed: full, lora, qlora, freeze, dora, ia3, prompt" in str(e.value)


def test_bad_nested_value():
    with pytest.raises(UserError) as e:
        recipe_from_dict({**BASE, "train": {"scheduler": "step"}})
    assert "train.scheduler" in str(e.value) and "cosine" in str(e.value)
    with pytest.raises(UserError) as e:
        recipe_from_dict({**BASE, "train": {"lr": -1}})
    assert "train.lr" in str(e.value)


def test_missing_required_key():
    with pytest.raises(UserError) as e:
        recipe_from_dict({"task": "classify", "data": {"train": "x"}})
    assert "model" in str(e.value) and "missing" in str(e.value)


def test_overrides_parse_types(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("task: classify\nmodel: minilm-l6\ndata: {train: t.jsonl}\n")
    r, base = load_recipe(p, ["train.lr=3e-5", "train.epochs=2", "method=lora", "lora.target_modules=[query,value]",
                              "train.early_stopping.metric=accuracy"])
    assert r.train.lr == 3e-5 and r.train.epochs == 2 and r.method == "lora"
    assert r.lora.target_modules == ["query", "value"]
    assert r.train.early_stopping.metric == "accuracy" and r.train.early_stopping.resolved_mode() == "max"
    assert base == tmp_path


def test_override_unknown_key(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("task: classify\nmodel: minilm-l6\ndata: {train: t.jsonl}\n")
    with pytest.raises(UserError, match="train.lrr"):
        load_recipe(p, ["train.lrr=1"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        load_recipe(p, ["train.lr"])


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("task: classify\nmodel: [unclosed\ndata: x\n")
    with pytest.raises(UserError, match=r"r\.yaml:\d+"):
        load_recipe(p)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_add_section_refuses_a_taken_name():
    from tuneline.recipe import LoraOptions, add_section

    with pytest.raises(ValueError, match="'lora' section already"):
        add_section("lora", LoraOptions)


def test_recipe_imports_no_torch():
    """Reading a recipe stays quick: the task and method registries it checks hold import paths."""
    import subprocess
    import sys

    code = "import sys, tuneline.recipe; print('torch' in sys.modules, 'peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
