"""Request bodies of the service: validated by pydantic, so bad input is a 422 that names the field.

The OpenAI-compatible bodies ignore parameters they do not use (presence_penalty, user, seed,
...), as an OpenAI client sends some by default; values out of range are still errors.
A service validates with `request_models(limits)`: the same bodies, checked against its own caps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Limits(BaseModel):
    """Caps on one request (set by `tuneline serve` options)."""

    max_inputs: int = 64          # texts in one /v1/classify request, prompts in one /v1/completions
    max_tokens: int = 512         # generated tokens per answer
    max_chars: int = 20_000       # characters in one text / message
    max_messages: int = 64        # turns in one conversation


def _check_unicode(value: str, what: str) -> str:
    # JSON's \ud800 escapes decode to lone surrogates, which no tokenizer or database can encode
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} holds an unpaired surrogate ({value[e.start]!r} at character {e.start}); "
                         "send valid Unicode text") from None
    return value


def _check_text(value: str, what: str, limits: Limits) -> str:
    _check_unicode(value, what)
    if not value.strip():
        raise ValueError(f"{what} is empty")
    if len(value) > limits.max_chars:
        raise ValueError(f"{what} has {len(value)} characters; the limit is {limits.max_chars}")
    return value


def _check_texts(v, field: str, empty_message: str, noun: str, limits: Limits):
    """One text or a non-empty list of at most limits.max_inputs texts, each checked by _check_text."""
    items = [v] if isinstance(v, str) else v
    if not items:
        raise ValueError(empty_message)
    if len(items) > limits.max_inputs:
        raise ValueError(f"{len(items)} {noun} in one request; the limit is {limits.max_inputs}")
    for i, t in enumerate(items):
        _check_text(t, field if isinstance(v, str) else f"{field}[{i}]", limits)
    return v


# Examples appear in /docs and are the first cases schemathesis sends (its explicit phase).
class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"input": "the box arrived broken"}, {"input": ["love it", "it was okay"]}]})
    limits: ClassVar[Limits] = Limits()  # a service checks against its own: see request_models
    input: Union[str, list[str]] = Field(description="one text, or a list of texts")
    model: Optional[str] = Field(None, description="the served model's name (GET /v1/models); another is a 404")

    @field_validator("input")
    @classmethod
    def _inputs(cls, v):
        return _check_texts(v, "input", "input is an empty list; give one text or a list of texts", "texts",
                            cls.limits)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[ContentPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _GenerationParams(BaseModel):
    model_config = ConfigDict(extra="ignore")
    limits: ClassVar[Limits] = Limits()
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    stream: bool = False
    stop: Union[str, list[str], None] = None
    n: int = Field(1, ge=1, le=1, description="one answer per request")

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v):
        if v is not None and v > cls.limits.max_tokens:
            raise ValueError(f"max_tokens {v} is over the service's limit of {cls.limits.max_tokens}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 4:
            raise ValueError("at most 4 stop sequences")
        for i, stop in enumerate(items):
            _check_unicode(stop, "stop" if isinstance(v, str) else f"stop[{i}]")
            if len(stop) > 200:
                raise ValueError(f"a stop sequence has {len(stop)} characters; the limit is 200")
        return v

    def stops(self) -> tuple[str, ...]:
        items = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in items if s)


class ChatRequest(_GenerationParams):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16},
        {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"}],
         "temperature": 0.7, "top_p": 0.9, "stop": ["\n"], "stream": True}]})
    messages: list[Message]
    max_completion_tokens: Optional[int] = Field(None, ge=1)

    @field_validator("messages")
    @classmethod
    def _messages(cls, v):
        if not v:
            raise ValueError("messages is empty; end the conversation with a user turn")
        if len(v) > cls.limits.max_messages:
            raise ValueError(f"{len(v)} messages; the limit is {cls.limits.max_messages}")
        for i, m in enumerate(v):
            _check_text(m.text(), f"messages[{i}].content", cls.limits)
        if v[-1].role != "user":
            raise ValueError("the last message must be the user's (the model answers it)")
        return v

    @field_validator("max_completion_tokens")
    @classmethod
    def _max_completion(cls, v):
        return cls._max_tokens(v)

    def conversation(self) -> list[dict]:
        # "developer" is OpenAI's newer name for the system role
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_GenerationParams):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"prompt": "Write a haiku about rain", "max_tokens": 16}, {"prompt": ["one", "two"], "stop": "."}]})
    prompt: Union[str, list[str]]

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        return _check_texts(v, "prompt", "prompt is an empty list", "prompts", cls.limits)

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"request_id": "cls-0123456789abcdef01234567", "rating": "down", "corrected_label": "negative"}]})
    request_id: str = Field(min_length=1, max_length=64)
    rating: Optional[Literal["up", "down"]] = Field(None, description="thumbs up or down")
    corrected_label: Optional[str] = Field(None, min_length=1, max_length=200)
    corrected_answer: Optional[str] = Field(None, min_length=1, max_length=20_000)
    comment: Optional[str] = Field(None, max_length=5000)
    item: int = Field(0, ge=0, description="which input of a multi-input request")

    @field_validator("corrected_label", "corrected_answer")
    @classmethod
    def _not_blank(cls, v):
        if v is not None and not v.strip():
            raise ValueError("is blank")
        return v

    @model_validator(mode="after")
    def _something(self):
        if not (self.rating or self.corrected_label or self.corrected_answer or self.comment):
            raise ValueError("give at least one of rating, corrected_label, corrected_answer, comment")
        return self


@dataclass(frozen=True)
class RequestModels:
    """The bodies one service validates, each checked against that service's limits."""

    classify: type[ClassifyRequest]
    chat: type[ChatRequest]
    completion: type[CompletionRequest]


def request_models(limits: Limits) -> RequestModels:
    """Subclasses that carry `limits`: two services in one process keep their own caps."""
    def bind(cls):
        return type(cls.__name__, (cls,), {"limits": limits, "__module__": cls.__module__, "__doc__": cls.__doc__})

    return RequestModels(bind(ClassifyRequest), bind(ChatRequest), bind(CompletionRequest))
