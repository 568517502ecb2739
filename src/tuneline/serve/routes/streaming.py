"""Streamed answers (`stream: true`): OpenAI's server-sent events for chat and completions.

The `[DONE]` event is the acknowledgement of a stream: it is sent only after the request's row
has committed. A client that leaves before the answer is complete gets one row with status 499
and the text sent so far, and its generation stops.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Optional

from fastapi import HTTPException
from fastapi.responses import StreamingResponse

from ..answers import Answerer
from ..ledger import Ledger
from ..model import GenOptions


@dataclass
class StreamedCall:
    """One streamed request: what its events and its store row carry."""

    rid: str
    created: int
    obj: str                 # "chat.completion.chunk" or "text_completion"
    endpoint: str
    model: str
    inputs: list             # as stored: the conversation, or the prompts
    drift_text: str
    t0: float

    def chunk(self, piece: Optional[str], finish: Optional[str], version: str, first: bool = False) -> str:
        if self.obj == "chat.completion.chunk":
            delta = {} if piece is None else {"content": piece}
            if first:
                delta["role"] = "assistant"
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
        data = {"id": self.rid, "object": self.obj, "created": self.created, "model": self.model,
                "system_fingerprint": version, "choices": [choice]}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def split_for_stop(text: str, stops: tuple[str, ...], longest: int) -> tuple[str, bool]:
    """What can be sent now: up to a stop string (then stopped), else all but a tail that might
    still become the start of one."""
    if not stops:
        return text, False
    hits = [text.find(s) for s in stops if s in text]
    if hits:
        return text[:min(hits)], True
    keep = 0
    for k in range(1, min(longest, len(text)) + 1):
        if any(s.startswith(text[-k:]) for s in stops):
            keep = k
    return text[:len(text) - keep], False


class Sent:
    """The text a stream has sent: never past a stop string, nor the start of a possible one,
    and without the answer's leading whitespace."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.longest = max((len(s) for s in stops), default=0)
        self.held = ""
        self.text = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """What can be sent now that `piece` has come."""
        if self.stopped:
            return ""
        self.held += piece
        if not self.text:
            self.held = self.held.lstrip()
        cut, self.stopped = split_for_stop(self.held, self.stops, self.longest)
        self.text += cut
        self.held = self.held[len(cut):]
        return cut

    def rest(self, answer: str) -> str:
        """What the finished answer adds to the text sent (what was held back: a possible stop
        string's start, the last word)."""
        if self.stopped:
            return ""
        rest = answer[len(self.text):] if answer.startswith(self.text) else ""
        self.text += rest
        return rest


def stream_response(answerer: Answerer, ledger: Ledger, call: StreamedCall, conv: list[dict],
                    opts: GenOptions) -> StreamingResponse:
    return StreamingResponse(_events(answerer, ledger, call, conv, opts), media_type="text/event-stream",
                             headers={"X-Request-ID": call.rid, "Cache-Control": "no-cache"})


async def _events(answerer: Answerer, ledger: Ledger, call: StreamedCall, conv: list[dict], opts: GenOptions):
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    version = answerer.served.current.id
    cancel = threading.Event()
    job = answerer.start_stream(conv, opts, lambda t: loop.call_soon_threadsafe(pieces.put_nowait, t), cancel)
    job.add_done_callback(lambda _: pieces.put_nowait(None))
    sent, failure, recording = Sent(opts.stop), None, False
    try:
        yield call.chunk("", None, version, first=True)
        while (piece := await pieces.get()) is not None:
            if cut := sent.feed(piece):
                yield call.chunk(cut, None, version)
        results, version_done = await job
        if rest := sent.rest(results[0]["text"]):
            yield call.chunk(rest, None, version_done)
        yield call.chunk(None, "stop" if sent.stopped else results[0]["finish_reason"], version_done)
        # From here the answer is complete: its 200 row stands even if the client leaves now.
        recording = True
        await ledger.answers(call.rid, call.endpoint, version_done, call.inputs, results, call.t0, 1, [call.drift_text])
        yield "data: [DONE]\n\n"
    except (asyncio.CancelledError, GeneratorExit):  # the client closed the connection
        if not recording:
            failure = (499, f"client closed the stream after {len(sent.text)} characters")
        raise
    except Exception as e:
        message = e.detail if isinstance(e, HTTPException) else f"{type(e).__name__}: {e}"
        if not recording:
            failure = (500, message)
        yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
    finally:
        cancel.set()  # a generation still running for a client that left stops at its next token
        if not job.done():  # its outcome is no one's now; retrieve it so asyncio does not warn
            job.add_done_callback(lambda j: j.cancelled() or j.exception())
        if failure:
            ledger.failure(call.rid, call.endpoint, version, *failure, inputs=call.inputs, output=[sent.text],
                           latency_ms=(time.perf_counter() - call.t0) * 1000, n_inputs=1)
