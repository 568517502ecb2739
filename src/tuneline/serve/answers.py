"""The served run's answers to requests, computed on the micro-batcher's model thread.

What a run answers is asked of its task (`task.serves`). Labels come from the micro-batcher;
answers to chat and completions from continuous batching (`continuous.py`), or, for a model
whose cache it cannot handle (`Version.continuous` false), from the micro-batcher's
`model.generate` batches and one `generate` per stream.
"""

from __future__ import annotations

import asyncio
import threading

from .batcher import MicroBatcher
from .continuous import ContinuousGenerator
from .model import GenOptions, ServedModel
from .schemas import Limits


class Answerer:
    def __init__(self, served: ServedModel, batcher: MicroBatcher, limits: Limits, on_step=None):
        self.served = served
        self.batcher = batcher
        self.limits = limits
        self.generator = ContinuousGenerator(served, batcher.run_on_model_thread, max_rows=batcher.max_batch,
                                             on_step=on_step)

    async def warm_up(self) -> None:
        """One tiny answer before the service opens, recorded nowhere: the first requests would
        otherwise pay the first passes' one-time costs and the shared prefix (a burst of 8 chat
        streams at start-up waited 0.9-1.0 s for its first tokens, later ones at most 0.25 s)."""
        try:
            if self.chats:
                await self.answer([[{"role": "user", "content": "Hello"}]], GenOptions(2, 0.0, 1.0))
            elif self.classifies:
                await self.classify(["Hello"])
        except Exception as e:  # the requests will say what is wrong; the service still opens
            print(f"tuneline serve: warm-up failed ({type(e).__name__}: {e})", flush=True)

    @property
    def chats(self) -> bool:
        return "chat" in self.served.current.serves

    @property
    def classifies(self) -> bool:
        return "classify" in self.served.current.serves

    async def classify(self, texts: list[str]) -> tuple[list[dict], str]:
        """label, score, scores and the input's token count per text; the version that answered."""
        return await self.batcher.submit("classify", texts)

    def options(self, body) -> GenOptions:
        """A chat or completion body's generation settings: the body's, else the run's `generate:`."""
        g = self.served.current.run.recipe.generate
        max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens or g.max_new_tokens
        return GenOptions(min(max_tokens, self.limits.max_tokens),
                          g.temperature if body.temperature is None else body.temperature,
                          g.top_p if body.top_p is None else body.top_p, body.stops())

    async def answer(self, conversations: list[list[dict]], opts: GenOptions) -> tuple[list[dict], str]:
        """Per conversation: text, finish_reason, prompt and completion tokens; the version that
        answered. Only a run that chats gets here (routes/predictions.py refuses the others)."""
        if not self.served.current.continuous:
            return await self.batcher.submit(opts, conversations)
        answers = await asyncio.gather(*(self.generator.answer(c, opts) for c in conversations))
        return [a[0][0] for a in answers], answers[0][1]

    def start_stream(self, conv: list[dict], opts: GenOptions, on_text, cancel: threading.Event) -> asyncio.Future:
        """Begin one answer, calling on_text(piece) as generated text becomes final; the future gives
        what `answer` gives."""
        if self.served.current.continuous:
            return asyncio.ensure_future(self.generator.answer(conv, opts, on_text, cancel))
        return asyncio.ensure_future(self.batcher.run_on_model_thread(
            self.served.generate_stream, conv, opts, on_text, cancel))
