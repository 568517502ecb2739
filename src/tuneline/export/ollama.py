"""An Ollama Modelfile beside the GGUF: the prompt format, system prompt and decoding of the run.

Ollama writes prompts with Go templates, not Jinja, so the model's chat template cannot be
copied. For ChatML templates (`<|im_start|>role\\n...<|im_end|>`, SmolLM2's and many others)
we write the equivalent Go template; for any other template the Modelfile has none and
Ollama falls back on the `tokenizer.chat_template` stored in the GGUF, which it maps for
the templates it knows.
"""

from __future__ import annotations

_PROBE = "tuneline-probe"

CHATML_GO_TEMPLATE = (
    '{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
    '{{ range .Messages }}{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n'
    '{{ else if eq .Role "assistant" }}{{ .Content }}<|im_end|>\n{{ end }}{{ end }}'
)


def chat_format(tokenizer) -> tuple[bool, str | None]:
    """(is ChatML, the system prompt the template adds when a conversation has none)."""
    if not tokenizer.chat_template:
        return False, None
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _PROBE}], tokenize=False,
                                             add_generation_prompt=True)
    user_turn = f"<|im_start|>user\n{_PROBE}<|im_end|>\n<|im_start|>assistant\n"
    if not rendered.endswith(user_turn):
        return False, None
    head = rendered[: -len(user_turn)]
    if head.startswith("<|im_start|>system\n") and head.endswith("<|im_end|>\n"):
        return True, head[len("<|im_start|>system\n"): -len("<|im_end|>\n")]
    return head == "", None


def _quoted(text: str) -> str:
    # A Modelfile value in triple quotes ends at the next triple quote.
    return '"""' + text.replace('"""', "'''") + '"""'


def modelfile(gguf_name: str, tokenizer, generate_options: dict, run_path: str) -> str:
    chatml, default_system = chat_format(tokenizer)
    system = generate_options.get("system_prompt") or default_system
    lines = [f"# Ollama Modelfile written by `tuneline export` from {run_path}",
             "#   ollama create my-model -f Modelfile && ollama run my-model",
             "#   llama.cpp: llama-cli -m MODEL.gguf -cnv --jinja (--jinja: the GGUF's own chat template, as trained)",
             f"FROM ./{gguf_name}"]
    if chatml:
        lines.append(f"TEMPLATE {_quoted(CHATML_GO_TEMPLATE)}")
    else:
        lines.append("# no TEMPLATE: the chat template is not ChatML; Ollama reads tokenizer.chat_template from the GGUF")
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    stops = []
    for tok in (tokenizer.eos_token, "<|im_end|>" if chatml else None):
        if tok and tok not in stops:
            stops.append(tok)
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    temperature = float(generate_options.get("temperature") or 0.0)
    lines.append(f"PARAMETER temperature {temperature:g}")
    if temperature > 0 and generate_options.get("top_p") is not None:
        lines.append(f"PARAMETER top_p {float(generate_options['top_p']):g}")
    # Always written: Ollama's own default (1.1) would make its answers differ from the run's.
    lines.append(f"PARAMETER repeat_penalty {float(generate_options.get('repetition_penalty') or 1.0):g}")
    if generate_options.get("max_new_tokens"):
        lines.append(f"PARAMETER num_predict {int(generate_options['max_new_tokens'])}")
    return "\n".join(lines) + "\n"
