"""The tabfill language server: thin handlers (convert -> one call -> convert back)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer

from tabfill import __version__
from tabfill.completion import gc_pauses, heap
from tabfill.completion.pace import TypingPace
from tabfill.completion.service import CompletionService
from tabfill.completion.settings import parse_settings
from tabfill.completion.sources import preload
from tabfill.completion.types import CancelToken, Completion, CompletionRequest, EngineInfo, Settings
from tabfill.completion.worker import Cancelled
from tabfill.lsp_server.documents import DocumentStore, Lookup
from tabfill.lsp_server.positions import PositionEncoding, json_position, offset_at, position_at
from tabfill.lsp_server.protocol import TabfillProtocol
from tabfill.lsp_server.stats import StatsStore, accept_arguments, item_reference
from tabfill.lsp_server.transport import FrameParser, read_frames
from tabfill.syntax_cache.context import SyntaxContext
from tabfill.syntax_cache.tree import SyntaxSnapshot
from tabfill.syntax_cache.workspace import Snippet

log = logging.getLogger(__name__)

STATUS_METHOD = "tabfill/status"
# Server -> client: a completion that was cut by its deadline has been generated whole (see README).
READY_NOTIFICATION = "tabfill/completionReady"
WARM_NOTIFICATION = "tabfill/warm"  # client -> server: the cursor rests here; prefill its prompt before the first key
# Copilot-style acceptance signals (sent by the tabfill editor clients); counted locally only.
DID_SHOW_COMPLETION = "textDocument/didShowCompletion"
DID_PARTIALLY_ACCEPT_COMPLETION = "textDocument/didPartiallyAcceptCompletion"
ACCEPT_COMMAND = "tabfill.accept"
STATS_FLUSH_DELAY_S = 2.0
# TABFILL_DEBUG_LOOP=1 (or a number of milliseconds): asyncio debug mode, logging every event-loop callback that
# runs longer than this (a handler's step included) as "Executing <...> took N seconds".
DEBUG_LOOP_ENV = "TABFILL_DEBUG_LOOP"
DEBUG_LOOP_SLOW_MS = 50.0
COMPLETION_METHODS = (types.TEXT_DOCUMENT_INLINE_COMPLETION, types.TEXT_DOCUMENT_COMPLETION)


class TabfillServer(LanguageServer):
    def __init__(self, settings: Settings | None = None, service: CompletionService | None = None) -> None:
        super().__init__("tabfill", __version__, protocol_cls=TabfillProtocol, max_workers=2)
        self.documents = DocumentStore()
        self.service = service or CompletionService(settings)
        self.service.on_outage = self._engine_outage
        self.service.on_ready = lambda request, completion: self.call_from_thread(self._completion_ready, request, "")
        self.service.on_stopped = lambda request, reason: self.call_from_thread(self._completion_ready, request, reason)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.initial_options: Any = None
        self.stats = StatsStore()
        self.pace = TypingPace()  # the user's key interval per document, from didChange spacing
        self.last_latency_ms: float | None = None
        self._stats_flush: asyncio.TimerHandle | None = None
        # NOTE: cross-file lookups read files and window whole documents: never on the event loop. One thread,
        # so they run one at a time in arrival order (the lookup caches are its own).
        self._lookups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tabfill-lookup")
        self._warm_ups: set[asyncio.Task[None]] = set()
        self.debug_loop = False  # DEBUG_LOOP_ENV: slow callbacks logged, and the CPU time of each lookup's parts
        # The id of the newest completion request read for each open document (see `superseded`).
        self.newest_request: dict[str, object] = {}
        self.superseded_requests = 0
        self.frames = FrameParser()
        if isinstance(self.protocol, TabfillProtocol):
            self.protocol.before_dispatch = self._note_request

    # ------------------------------------------------------------------ transport
    def start_io(self, stdin: Any = None, stdout: Any = None) -> None:
        """Serve over stdio, reading with `transport.read_frames` (whole chunks, resync after bad frames)."""
        self._stop_event = threading.Event()
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        try:
            asyncio.run(read_frames(stdin or sys.stdin.buffer, self.frames, self.receive))
        except BrokenPipeError:
            log.error("the connection to the client is lost: shutting down")
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self.shutdown()  # type: ignore[no-untyped-call]

    def receive(self, body: bytes) -> None:
        """One message body: check and dispatch it (`_note_request` sees it first)."""
        assert isinstance(self.protocol, TabfillProtocol)
        try:
            self.protocol.receive(body)
        except Exception as exc:  # whatever a message holds, the server reads on
            log.exception("could not handle a message")
            self.report_server_error(exc, JsonRpcException)

    def _note_request(self, data: dict[str, Any]) -> None:
        if data.get("method") not in COMPLETION_METHODS or "id" not in data:
            return
        document = data["params"].get("textDocument") if isinstance(data.get("params"), dict) else None
        uri = document.get("uri") if isinstance(document, dict) else None
        if isinstance(uri, str) and self.documents.get(uri) is not None:
            self.newest_request[uri] = data["id"]

    async def superseded(self, uri: str) -> bool:
        """Whether a newer completion request for `uri` has been read since this one (the handler's request).
        Yields to the event loop first so the input that is already there is read: in a burst, only the
        newest request of each document goes on to its lookups and the model; the others are answered
        empty at once. (Two yields: the first loop pass runs this task before the pipe's read callback.)"""
        msg_id = self.protocol.msg_id
        for _ in range(2):
            await asyncio.sleep(0)
        newest = self.newest_request.get(uri, msg_id)
        if newest == msg_id:
            return False
        self.superseded_requests += 1
        log.debug("request %s for %s superseded by %s", msg_id, uri, newest)
        return True

    # ------------------------------------------------------------------ helpers
    @property
    def encoding(self) -> PositionEncoding:
        chosen = self.server_capabilities.position_encoding if self.protocol.server_capabilities else None
        value = str(getattr(chosen, "value", chosen) or "utf-16")
        if value == "utf-8":
            return "utf-8"
        return "utf-32" if value == "utf-32" else "utf-16"

    def call_from_thread(self, fn: Any, *args: Any) -> None:
        """Run `fn(*args)` on the event loop (pygls writes are not thread-safe)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def show(self, kind: types.MessageType, message: str) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=f"tabfill: {message}"))

    def _engine_outage(self, message: str | None) -> None:
        """A remote engine went away (one message per outage; completions are empty meanwhile) or came back."""
        if message is not None:
            self.call_from_thread(self.show, types.MessageType.Warning, message)
        else:
            log.warning("the engine is reachable again")

    def report_server_error(self, error: Exception, source: Any) -> None:
        log.error("server error (%s): %s", getattr(source, "__name__", source), error)
        cause = error.__cause__ or error
        if isinstance(cause, ValueError) and type(cause).__name__ == "JSONDecodeError" and isinstance(self.protocol, TabfillProtocol):
            self.protocol.answer_parse_error(cause)

    async def request_for(self, uri: str, line: int, character: int, request_id: str) -> CompletionRequest:
        document = self.documents.get(uri)
        if document is None:
            raise JsonRpcInvalidParams(f"document not open: {uri} (send textDocument/didOpen first)")
        try:
            offset = offset_at(document, line, character, self.encoding)
        except ValueError as exc:
            raise JsonRpcInvalidParams(str(exc)) from exc
        return await self._request_at(uri, offset, request_id)

    def warm(self, uri: str, position: tuple[int, int] | None = None) -> None:
        """Prefill a cursor's prompt in the background: at `position` (tabfill/warm; any document size), else at
        the end of a document just opened that fits the prompt window (its prefix is shared by any cursor)."""
        document = self.documents.get(uri)
        if document is None or self.service.state != "ready":  # NOTE: the request reads cross-file definitions
            return
        try:
            offset = len(document.text) if position is None else offset_at(document, *position, self.encoding)
        except ValueError:
            return log.warning("warm-up of %s at %r: not a position of the document", uri, position)
        if position is not None or offset <= self.service.window_chars:
            self._spawn(self._warm_at(uri, offset))

    async def _warm_at(self, uri: str, offset: int) -> None:
        try:
            self.service.warm(await self._request_at(uri, offset, "warm-up"))
        except Exception:  # a warm-up is an optimisation: never let it break document sync
            log.warning("warm-up of %s at %d failed", uri, offset, exc_info=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._warm_ups.add(task)  # NOTE: the loop keeps only a weak reference to a task
        task.add_done_callback(self._warm_ups.discard)

    def _lookup(self, prepared: Lookup) -> tuple[SyntaxSnapshot | None, tuple[Snippet, ...]]:
        cpu = time.thread_time()
        found = self.documents.lookup(prepared)
        self._log_cpu("lookup", prepared.document.uri, cpu)
        return found

    def _log_cpu(self, what: str, uri: str, since: float) -> None:
        """In debug-loop mode: what a part of a request cost in CPU time (not wall time: a loaded machine does
        not inflate it) and on which thread."""
        if self.debug_loop:
            log.warning("%s for %s: %.1f ms of CPU on %s", what, uri, (time.thread_time() - since) * 1000, threading.current_thread().name)

    def _completion_ready(self, request: CompletionRequest, stopped: str) -> None:
        """A deadline-cut answer is now complete (`stopped` empty: asking again at that position is answered
        from the result cache at once), or its generation stopped before that (`stopped` says why; asking
        again there resumes it). Told to the client if the document is still at that version."""
        document = self.documents.get(request.uri)
        if document is None or document.version != request.version:
            return
        line, character = position_at(document, request.offset, self.encoding)
        params: dict[str, object] = {
            "textDocument": {"uri": request.uri, "version": request.version},
            "position": {"line": line, "character": character},
            "finished": not stopped,
        }
        if stopped:
            params["reason"] = stopped
        self.protocol.notify(READY_NOTIFICATION, params)

    async def _request_at(self, uri: str, offset: int, request_id: str) -> CompletionRequest:
        """The request at `offset` of the document as it is now; its cross-file lookup runs on the lookup thread."""
        started = time.perf_counter()
        task = asyncio.current_task()
        if task is not None:  # the debug loop's slow-callback log names a task by this
            task.set_name(f"tabfill-request {request_id}")
        # NOTE: cross-file lookups cost file reads; skip them when the setting leaves them out of the prompt.
        cpu = time.thread_time()
        prepared = self.documents.prepare(uri, offset, self.service.settings.cross_file_context, in_prompt=self.service.prompt_chars)
        if prepared is None:
            raise JsonRpcInvalidParams(f"document not open: {uri} (send textDocument/didOpen first)")
        self._log_cpu("prepare", uri, cpu)
        syntax, cross_file = await asyncio.get_running_loop().run_in_executor(self._lookups, self._lookup, prepared)
        document = prepared.document  # NOTE: as it was when asked, whatever arrived while the lookup ran
        repo_name, repo_path = self.documents.place(uri)
        return CompletionRequest(
            uri, document.language_id, document.version, document.text, offset, request_id, syntax=syntax, cross_file=cross_file,
            repo_name=repo_name, repo_path=repo_path, lookup_ms=(time.perf_counter() - started) * 1000, key_interval_ms=self.pace.interval_ms(uri),
        )

    async def complete(self, request: CompletionRequest) -> Completion:
        """Run a request on the service; a cancelled handler cancels the generation too."""
        cancel = CancelToken()
        future: Future[Completion] = self.service.submit(request, cancel)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancel.cancel("$/cancelRequest")
            raise
        except Cancelled as exc:
            return Completion.empty(request, f"cancelled: {exc}")

    def lsp_range(self, uri: str, completion: Completion) -> types.Range:
        document = self.documents.get(uri)
        if document is None:  # closed meanwhile
            return types.Range(types.Position(0, 0), types.Position(0, 0))
        start = position_at(document, completion.offset, self.encoding)
        end = position_at(document, completion.offset + completion.replace_chars, self.encoding)
        return types.Range(types.Position(*start), types.Position(*end))

    def stats_changed(self) -> None:
        """Write the counts a little later, batching bursts of signals into one write."""
        if self._loop is None or self._loop.is_closed():
            self.stats.flush()
        elif self._stats_flush is None:
            self._stats_flush = self._loop.call_later(STATS_FLUSH_DELAY_S, self._flush_stats)

    def _flush_stats(self, in_background: bool = True) -> None:
        if self._stats_flush is not None:
            self._stats_flush.cancel()
            self._stats_flush = None
        if in_background and self._loop is not None and not self._loop.is_closed():
            self._loop.run_in_executor(None, self.stats.flush)  # NOTE: file I/O (fsync) stays off the event loop
        else:
            self.stats.flush()

    # ------------------------------------------------------------------ model lifecycle
    def start_loading(self) -> None:
        supports_progress = bool(
            self.client_capabilities.window and self.client_capabilities.window.work_done_progress
        )
        token = f"tabfill-load-{uuid.uuid4().hex[:8]}"
        if supports_progress:
            self.work_done_progress.create(token)
            self.work_done_progress.begin(
                token, types.WorkDoneProgressBegin(title="tabfill", message=f"loading {self.service.settings.model}", percentage=0)
            )

        def progress(stage: str, fraction: float | None) -> None:
            if supports_progress:
                value = types.WorkDoneProgressReport(message=stage, percentage=None if fraction is None else int(fraction * 100))
                self.call_from_thread(self.work_done_progress.report, token, value)

        def done(future: Future[Any]) -> None:
            error = future.exception()
            message = "ready" if error is None else f"model failed to load: {error}"
            if supports_progress:
                self.call_from_thread(self.work_done_progress.end, token, types.WorkDoneProgressEnd(message=message))
            if error is not None:
                self.call_from_thread(self.show, types.MessageType.Error, message)
            else:
                info = future.result()
                log.info("model ready: %s on %s (%s), FIM: %s", info.source, info.device, info.dtype, info.template)

        self.service.load(progress).add_done_callback(done)

    def apply_settings(self, raw: Any) -> None:
        settings, problems = parse_settings(raw, self.service.settings)
        for problem in problems:
            self.show(types.MessageType.Warning, problem)
        if self.service.update_settings(settings):
            self.start_loading()


def create_server(settings: Settings | None = None, service: CompletionService | None = None) -> TabfillServer:
    """A server with every feature registered; `settings` are the CLI's, overlaid by the client's (`service`:
    one made already, e.g. over a test's token source)."""
    server = TabfillServer(settings, service)

    @server.feature(types.INITIALIZE)
    def initialize(ls: TabfillServer, params: types.InitializeParams) -> None:
        ls._loop = asyncio.get_running_loop() if _has_running_loop() else None
        if ls._loop is not None:
            ls.debug_loop = _debug_loop(ls._loop, os.environ.get(DEBUG_LOOP_ENV, ""))
        ls.initial_options = params.initialization_options
        # NOTE: torch and transformers for an in-process model are imported now, before initialize is answered
        # (imports on the loader thread would stall the event loop later); the editor's options are known
        # here, so a front-end whose settings name a remote engine never imports them.
        preload(parse_settings(params.initialization_options, ls.service.settings)[0])
        ls.documents.set_workspace(params.workspace_folders, params.root_uri, params.root_path)

    @server.feature(types.INITIALIZED)
    def initialized(ls: TabfillServer, params: types.InitializedParams) -> None:
        ls.apply_settings(ls.initial_options)  # overlays the CLI's settings; the model is not loaded yet
        ls.start_loading()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: TabfillServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.documents.open(params.text_document)
        ls.warm(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: TabfillServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.documents.change(params, ls.encoding)
        ls.pace.keys(params.text_document.uri, [change.text for change in params.content_changes])

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: TabfillServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.documents.close(params.text_document.uri)
        ls.newest_request.pop(params.text_document.uri, None)
        ls.service.forget(params.text_document.uri)
        ls.pace.forget(params.text_document.uri)

    @server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
    def did_change_workspace_folders(ls: TabfillServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
        ls.documents.change_workspace(params.event)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: TabfillServer, params: types.DidChangeConfigurationParams) -> None:
        ls.apply_settings(params.settings)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: TabfillServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
        uri = params.text_document.uri
        if await ls.superseded(uri):  # NOTE: a burst's older requests cost no lookup and no model work
            return types.InlineCompletionList(items=[])
        request = await ls.request_for(uri, params.position.line, params.position.character, str(ls.protocol.msg_id))
        started = time.perf_counter()
        completion = await ls.complete(request)
        latency_ms = (time.perf_counter() - started) * 1000
        if completion.source != "none":  # not when cancelled, disabled or before the model is ready
            ls.last_latency_ms = latency_ms
            ls.stats.record_request(request.language_id, latency_ms, bool(completion.text))
            ls.stats_changed()
        if not completion.text:
            return types.InlineCompletionList(items=[])
        item_id = uuid.uuid4().hex[:16]
        ls.stats.issue(item_id, request.language_id, len(completion.text))
        accept = types.Command(
            title="Accept tabfill suggestion",
            command=ACCEPT_COMMAND,
            arguments=[{"id": item_id, "language": request.language_id, "latencyMs": round(latency_ms, 1), "source": completion.source,
                        "partial": completion.finish_reason == "deadline", **({"pieces": completion.pieces()} if completion.cuts else {})}],
        )
        item = types.InlineCompletionItem(insert_text=completion.text, range=ls.lsp_range(uri, completion), command=accept)
        return types.InlineCompletionList(items=[item])

    @server.feature(WARM_NOTIFICATION)
    def warm(ls: TabfillServer, params: Any) -> None:
        document, place = _get(params, "textDocument") or {}, json_position(_get(params, "position"))
        if not isinstance(document, dict) or not isinstance(document.get("uri"), str) or place is None:
            return log.warning("ignoring %s with params %r (want textDocument.uri and a position)", WARM_NOTIFICATION, params)
        ls.warm(document["uri"], place)

    @server.feature(DID_SHOW_COMPLETION)
    def did_show_completion(ls: TabfillServer, params: Any) -> None:
        reference = item_reference(_get(params, "item"))
        if reference is None:
            log.debug("%s for an item that is not ours: %r", DID_SHOW_COMPLETION, params)
            return
        ls.stats.shown(*reference)
        ls.stats_changed()

    @server.feature(DID_PARTIALLY_ACCEPT_COMPLETION)
    def did_partially_accept_completion(ls: TabfillServer, params: Any) -> None:
        reference = item_reference(_get(params, "item"))
        accepted_length = _get(params, "acceptedLength")
        if reference is None or isinstance(accepted_length, bool) or not isinstance(accepted_length, int) or accepted_length < 0:
            log.debug("ignoring %s with params %r", DID_PARTIALLY_ACCEPT_COMPLETION, params)
            return
        ls.stats.partially_accepted(*reference, accepted_length)
        ls.stats_changed()

    @server.command(ACCEPT_COMMAND)
    def accept_completion(ls: TabfillServer, *arguments: Any) -> None:
        reference = accept_arguments(list(arguments))
        if reference is None:
            raise JsonRpcInvalidParams(f"{ACCEPT_COMMAND} takes the argument the completion item carries, got {list(arguments)!r}")
        ls.stats.accepted(*reference)
        ls.stats_changed()

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "("]))
    async def completion(ls: TabfillServer, params: types.CompletionParams) -> types.CompletionList:
        uri = params.text_document.uri
        if await ls.superseded(uri):
            return types.CompletionList(is_incomplete=True, items=[])
        request = await ls.request_for(uri, params.position.line, params.position.character, str(ls.protocol.msg_id))
        result = await ls.complete(request)
        if not result.text:
            return types.CompletionList(is_incomplete=True, items=[])
        first_line = result.text.split("\n", 1)[0].strip() or result.text.strip()
        item = types.CompletionItem(
            label=first_line[:80],
            kind=types.CompletionItemKind.Text,
            detail="tabfill",
            insert_text_format=types.InsertTextFormat.PlainText,
            text_edit=types.TextEdit(range=ls.lsp_range(uri, result), new_text=result.text),
            sort_text="0",
            preselect=True,
        )
        return types.CompletionList(is_incomplete=True, items=[item])

    @server.feature(STATUS_METHOD)
    def status(ls: TabfillServer, params: Any) -> dict[str, Any]:
        return {
            "state": ls.service.state,
            "error": ls.service.error,
            **_describe_info(ls.service.info, ls.service.settings.model),
            "lastTimings": dict(ls.service.last_timings.stages),
            "lastLatencyMs": None if ls.last_latency_ms is None else round(ls.last_latency_ms, 1),
            "documents": len(ls.documents),
            "lastContext": _describe_context(ls.service.last_context),
            "lastCrossFile": ls.service.last_cross_file,
            "engine": ls.service.describe_engine(),
            "supersededRequests": ls.superseded_requests,
            "malformedFrames": ls.frames.malformed,
            "gc": gc_pauses.describe(),
            "heap": heap.describe(),
            **_describe_document(ls, _get(params, "textDocument")),
        }

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: TabfillServer, params: Any) -> None:
        ls._flush_stats(in_background=False)
        ls._lookups.shutdown(wait=False, cancel_futures=True)
        ls.service.close()

    return server


def _describe_info(info: EngineInfo | None, model: str) -> dict[str, Any]:
    """EngineInfo's fields in camelCase for `tabfill/status`, milliseconds rounded; before a load, the configured
    model and empty values ("" or null)."""
    if info is not None:
        values: dict[str, Any] = dataclasses.asdict(info)
    else:
        values = {field.name: "" if field.type == "str" else None for field in dataclasses.fields(EngineInfo)}
    described = {_camel(name): round(value, 1) if isinstance(value, float) else value for name, value in values.items()}
    described["model"] = described.pop("source") or model
    return described


def _describe_document(ls: TabfillServer, identifier: Any) -> dict[str, Any]:
    """With params {"textDocument": {"uri"}}: that document as the server has it (version, length, SHA-256 of
    its UTF-8 text; null when it is not open), so a client can check its edits arrived as it made them."""
    uri = identifier.get("uri") if isinstance(identifier, dict) else None
    if not isinstance(uri, str):
        return {}
    document = ls.documents.get(uri)
    if document is None:
        return {"document": None}
    text = document.text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return {"document": {"uri": uri, "version": document.version, "length": len(text), "sha256": digest}}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _describe_context(context: SyntaxContext | None) -> dict[str, Any] | None:
    """A SyntaxContext as JSON for `tabfill/status`."""
    if context is None:
        return None
    described = dataclasses.asdict(context)
    described["mode"] = context.mode.value
    described["source"] = context.source
    return described


def _get(params: Any, name: str) -> Any:
    """A field of a custom method's params as plain JSON values (pygls hands them over as namedtuples)."""
    params = _plain(params)
    return params.get(name) if isinstance(params, dict) else None


def _plain(value: Any) -> Any:
    if hasattr(value, "_asdict"):
        return {key: _plain(item) for key, item in value._asdict().items()}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _debug_loop(loop: asyncio.AbstractEventLoop, value: str) -> bool:
    """asyncio debug mode with slow-callback logging when `value` (DEBUG_LOOP_ENV) is "1" or a threshold in ms."""
    if value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    try:
        threshold_ms = float(value) if value.strip() != "1" else DEBUG_LOOP_SLOW_MS
    except ValueError:
        threshold_ms = DEBUG_LOOP_SLOW_MS
    loop.set_debug(True)
    loop.slow_callback_duration = threshold_ms / 1000
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    log.warning("event-loop debug mode: callbacks over %.0f ms are logged", threshold_ms)
    return True


def _has_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True

