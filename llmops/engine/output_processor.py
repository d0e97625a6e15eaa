"""Turns engine requests into caller-facing outputs: groups the n sequences of one prompt,
detokenizes incrementally, applies stop strings and builds `RequestOutput`s."""

from __future__ import annotations

from llmops.detokenizer import IncrementalDetokenizer
from llmops.engine.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from llmops.engine.request import Request, RequestStatus
from llmops.tokenizer import Tokenizer


class RequestGroup:
    """The n sequences sampled for one prompt, and their text so far."""

    def __init__(self, request_id: str, prompt: str | None, children: list[Request], tokenizer: Tokenizer) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.children = children
        self.tokenizer = tokenizer
        params = children[0].params
        self.detokenizers = [IncrementalDetokenizer(tokenizer, c.prompt_token_ids, params.skip_special_tokens,
                                                    params.stop_strings) for c in children]
        self._logprobs: list[list[dict[int, Logprob]]] = [[] for _ in children]  # decoded once, grown per step

    @property
    def finished(self) -> bool:
        return all(c.is_finished for c in self.children)

    def on_new_token(self, index: int) -> str | None:
        """Feed child `index`'s newest token; returns the stop string it hit, if any."""
        child, detok = self.children[index], self.detokenizers[index]
        was_stopped = detok.stopped
        new = child.output_token_ids[-1:]
        if child.status == RequestStatus.FINISHED_STOPPED and (
                new[0] in child.stop_token_ids or new[0] in child.eos_token_ids):
            new = []  # the stop or EOS token ends the text; its own text is not part of it
        detok.add_tokens(new, final=child.is_finished)
        if detok.stopped and not was_stopped:
            return detok.stop_reason
        return None

    def output(self) -> RequestOutput:
        first = self.children[0]
        return RequestOutput(
            request_id=self.request_id, prompt=self.prompt, prompt_token_ids=first.prompt_token_ids,
            outputs=[self._completion(i) for i in range(len(self.children))],
            finished=self.finished, num_cached_tokens=first.num_cached_tokens,
            metrics=RequestMetrics(first.times.arrival, first.times.first_scheduled,
                                   first.times.first_token, first.times.finished))

    def _completion(self, index: int) -> CompletionOutput:
        child, detok = self.children[index], self.detokenizers[index]
        finished = child.is_finished
        token_ids = list(child.output_token_ids)
        logprobs = None
        if child.params.logprobs is not None:
            done = self._logprobs[index]
            for lp, rk in zip(child.logprobs[len(done):], child.logprob_ranks[len(done):]):
                done.append(self._logprob_entry(lp, rk))
            logprobs = list(done)
        return CompletionOutput(
            index=index, text=detok.visible_text(finished), token_ids=token_ids,
            finish_reason=child.status.finish_reason, stop_reason=child.stop_reason if finished else None,
            logprobs=logprobs)

    def _logprob_entry(self, logprobs: dict[int, float], ranks: dict[int, int]) -> dict[int, Logprob]:
        return {tid: Logprob(lp, ranks.get(tid, 0), self.tokenizer.decode([tid], skip_special_tokens=False))
                for tid, lp in logprobs.items()}
