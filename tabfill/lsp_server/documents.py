"""Open documents, kept in sync from didOpen/didChange/didClose (incremental)."""

from __future__ import annotations

import logging

from lsprotocol import types

from tabfill.lsp_server.positions import PositionEncoding, range_to_offsets
from tabfill.syntax_cache.document import Document

log = logging.getLogger(__name__)


class DocumentStore:
    def __init__(self) -> None:
        self._documents: dict[str, Document] = {}

    def get(self, uri: str) -> Document | None:
        return self._documents.get(uri)

    def __len__(self) -> int:
        return len(self._documents)

    def open(self, item: types.TextDocumentItem) -> Document:
        document = Document(item.uri, item.language_id, item.version, item.text)
        self._documents[item.uri] = document
        return document

    def change(self, params: types.DidChangeTextDocumentParams, encoding: PositionEncoding) -> Document | None:
        document = self._documents.get(params.text_document.uri)
        if document is None:
            log.warning("didChange for a document that is not open: %s", params.text_document.uri)
            return None
        version = params.text_document.version
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                start, end = change.range.start, change.range.end
                start_offset, end_offset = range_to_offsets(document, start.line, start.character, end.line, end.character, encoding)
                document.replace(start_offset, end_offset, change.text, version)
            else:
                document.set_text(change.text, version)
        return document

    def close(self, uri: str) -> bool:
        return self._documents.pop(uri, None) is not None
