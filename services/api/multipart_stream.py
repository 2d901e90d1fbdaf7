"""A multipart/form-data reader that streams one file part instead of buffering it.

Starlette's form parser spools every file to a temporary file before the handler runs;
uploads here go straight from the socket into the blob store, chunk by chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class BadMultipart(ValueError):
    """The body is not usable multipart/form-data."""


class MissingFilePart(ValueError):
    pass


class StreamingUpload:
    """Reads a body with one file part named `file_field` and small text fields.

    Call `await open()` first (it reads up to the file part's headers, so that its filename
    is known), then iterate `file_chunks()`; after that `fields` holds the text fields,
    wherever they were in the body.
    """

    def __init__(
        self,
        content_type: str,
        body: AsyncIterator[bytes],
        *,
        file_field: str = "file",
        max_field_bytes: int = 64 * 1024,
    ) -> None:
        media_type, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if media_type != b"multipart/form-data" or not boundary:
            raise BadMultipart(
                f"send the file as multipart/form-data in a field named {file_field!r}"
            )
        self.file_field = file_field
        self.max_field_bytes = max_field_bytes
        self.filename: str | None = None
        self.file_content_type: str | None = None
        self.fields: dict[str, str] = {}
        self._body = body
        self._file_pending: list[bytes] = []
        self._file_done = False
        self._ended = False
        self._part_name = ""
        self._part_is_file = False
        self._part_is_upload = False
        self._part_headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._field_data = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    # --- parser callbacks (synchronous; they only record what they see) ---

    def _on_part_begin(self) -> None:
        self._part_headers = {}
        self._field_data = bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._part_headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._part_headers.get(b"content-disposition", b""))
        self._part_name = options.get(b"name", b"").decode("utf-8", "replace")
        self._part_is_file = b"filename" in options
        # Only the first file part with the right name is the upload; others are skipped.
        self._part_is_upload = (
            self._part_is_file and self._part_name == self.file_field and self.filename is None
        )
        if self._part_is_upload:
            name = options[b"filename"].decode("utf-8", "replace").replace("\x00", "")
            self.filename = name[:255] or "upload"
            content_type = self._part_headers.get(b"content-type")
            self.file_content_type = content_type.decode("latin-1") if content_type else None

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part_is_upload:
            self._file_pending.append(data[start:end])
        elif not self._part_is_file:
            self._field_data += data[start:end]
            if len(self._field_data) > self.max_field_bytes:
                raise BadMultipart(f"form field {self._part_name!r} is too long")

    def _on_part_end(self) -> None:
        if self._part_is_upload:
            self._file_done = True
        elif not self._part_is_file:
            text = self._field_data.decode("utf-8", "replace").replace("\x00", "")
            self.fields[self._part_name] = text

    # --- driving the parser from the body stream ---

    async def _feed_one(self) -> bool:
        """Feed the next body chunk; False when the body has ended."""
        if self._ended:
            return False
        try:
            chunk = await anext(self._body)
        except StopAsyncIteration:
            chunk = b""
        try:
            if chunk:
                self._parser.write(chunk)
                return True
            self._parser.finalize()
        except FormParserError as exc:
            raise BadMultipart(f"malformed multipart body: {exc}") from exc
        self._ended = True
        return False

    async def open(self) -> None:
        while self.filename is None and await self._feed_one():
            pass
        if self.filename is None:
            raise MissingFilePart(f"no file in form field {self.file_field!r}")

    async def file_chunks(self) -> AsyncIterator[bytes]:
        while True:
            while self._file_pending:
                yield self._file_pending.pop(0)
            if self._file_done and self._ended:
                return
            if not await self._feed_one():
                while self._file_pending:
                    yield self._file_pending.pop(0)
                return
