"""`AsyncEngine`: the step loop on a background thread, an async stream of outputs per request,
and abort (also when the caller stops listening, e.g. a client disconnect)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from llmops.config import LLMOpsConfig
from llmops.engine.llm_engine import LLMEngine
from llmops.engine.outputs import EngineStats, RequestOutput
from llmops.engine.sampling_params import SamplingParams
from llmops.log import get_logger

logger = get_logger(__name__)


class EngineDeadError(RuntimeError):
    """The background loop stopped on an error; no request can make progress."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue          # RequestOutput items, then None at the end, or an exception
    done: bool = False            # the caller saw the end (a finished output or an error)


class AsyncEngine:
    """Runs `LLMEngine.step()` on its own thread; `generate()` streams each request's outputs."""

    def __init__(self, config: LLMOpsConfig | None = None, engine: LLMEngine | None = None) -> None:
        self.engine = engine or LLMEngine(config)
        self._commands: queue.SimpleQueue = queue.SimpleQueue()   # ("add", ...) / ("abort", id)
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}                   # engine id -> stream
        self._engine_ids: dict[str, str] = {}                    # caller's request id -> engine id
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._stopping = False
        self._dead = False                                        # set under _lock by _fail_all
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="llmops-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_kwargs(cls, **kwargs) -> "AsyncEngine":
        """Same keyword arguments as `LLM(...)`."""
        return cls(LLMOpsConfig.from_flat(**kwargs))

    @property
    def is_running(self) -> bool:
        """The loop thread is alive and has not died on an error."""
        return self._thread.is_alive() and not self._dead and not self._stopping

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def stats(self) -> EngineStats:
        return self.engine.stats()

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield cumulative outputs as tokens arrive; the last one has finished=True.

        Bad input raises ValueError before anything is queued. Leaving the loop early (break,
        cancellation, a dropped connection) aborts the request and frees its KV blocks.
        """
        params = self.engine.check_params(params)      # validate in the caller, before queueing
        self.engine.encode_prompt(prompt)
        seq = next(self._ids)
        request_id = request_id or f"async-{seq}"
        # The engine sees a private id: a caller reusing request_id after a disconnect can never
        # receive outputs of the old request, whose abort may still be in flight.
        engine_id = f"{request_id}@{seq}"
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:  # _fail_all marks the engine dead under this lock: no stream can slip past it
            if self._dead or not self._thread.is_alive():
                raise EngineDeadError("the engine is not running") from self.error
            if request_id in self._engine_ids:
                raise ValueError(f"request_id {request_id!r} is already in use")
            self._engine_ids[request_id] = engine_id
            self._streams[engine_id] = stream
        self._commands.put(("add", engine_id, prompt, params))
        self._wake.set()
        try:
            async for item in self._read(stream, request_id):
                yield item
        finally:
            with self._lock:
                self._engine_ids.pop(request_id, None)
                live = self._streams.pop(engine_id, None) is not None and not stream.done
            if live:
                self._abort_engine_id(engine_id)

    @staticmethod
    async def _read(stream: _Stream, request_id: str) -> AsyncIterator[RequestOutput]:
        while True:
            item = await stream.queue.get()
            if item is None or isinstance(item, BaseException):
                stream.done = True
                if item is not None:
                    raise item
                return
            stream.done = item.finished
            yield dataclasses.replace(item, request_id=request_id)
            if item.finished:
                return

    def abort(self, request_id: str) -> None:
        """Stop a request (thread-safe; unknown ids are ignored). Its stream ends with
        finish_reason "abort"."""
        with self._lock:
            engine_id = self._engine_ids.get(request_id)
        if engine_id is not None:
            self._abort_engine_id(engine_id)

    def _abort_engine_id(self, engine_id: str) -> None:
        self._commands.put(("abort", engine_id))
        self._wake.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop; pending streams end with EngineDeadError."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self._fail_all(EngineDeadError("the engine was shut down"))

    # ---- the background thread -------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stopping:
                self._drain_commands()
                if not self.engine.has_unfinished_requests():
                    self._wake.wait(0.1)
                    self._wake.clear()
                    continue
                for out in self.engine.step():
                    self._deliver(out.request_id, out)
        except BaseException as exc:  # the loop must never die silently
            logger.exception("engine loop died")
            self.error = exc
            self._fail_all(EngineDeadError(f"engine loop died: {exc!r}"))

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                _, request_id, prompt, params = command
                try:
                    self.engine.add_request(prompt, params, request_id)
                except Exception as exc:  # noqa: BLE001 - the error belongs to that caller only
                    self._deliver(request_id, exc)
            else:
                final = self.engine.abort(command[1])
                if final is not None:
                    self._deliver(command[1], final)

    def _deliver(self, request_id: str, item: RequestOutput | BaseException | None) -> None:
        with self._lock:
            stream = self._streams.get(request_id)
        if stream is None:
            return
        try:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)
        except RuntimeError:  # that caller's event loop is closed: nobody listens any more
            with self._lock:
                self._streams.pop(request_id, None)
            self.engine.abort(request_id)

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            self._dead = True
            streams = list(self._streams.values())
        for stream in streams:
            try:
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, error)
            except RuntimeError:  # that caller's event loop is already closed
                pass
