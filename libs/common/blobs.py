"""Claim-check store for uploaded files, kept in PostgreSQL so that no volume is shared.

A file is stored as 1 MiB chunks; `import.requested` carries `blob:<uuid>`, never the bytes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterable, AsyncIterator

import asyncpg

CHUNK_BYTES = 1024 * 1024
PREFIX = "blob:"


class UploadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"file exceeds the upload limit of {limit} bytes")
        self.limit = limit


def blob_ref(blob_id: uuid.UUID) -> str:
    return f"{PREFIX}{blob_id}"


def parse_ref(ref: str) -> uuid.UUID:
    if not ref.startswith(PREFIX):
        raise ValueError(f"file reference {ref!r} is not a 'blob:<uuid>' claim check")
    return uuid.UUID(ref[len(PREFIX) :])


class BlobStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def write(
        self,
        filename: str,
        content_type: str | None,
        data: AsyncIterable[bytes],
        max_bytes: int,
    ) -> uuid.UUID:
        """Store a stream chunk by chunk (never the whole file in memory).

        No connection is held while the client is sending: each 1 MiB chunk is written
        with a connection taken for that insert only, so a slow upload cannot pin one of
        the pool's connections for minutes. The blob becomes `complete` at the end (readers
        ignore it before). Raises UploadTooLarge, and keeps nothing, when the stream passes
        `max_bytes`; a failed or cut-off upload is deleted too, and one a dying process
        left behind is deleted by the importer's retention sweep.
        """
        blob_id = uuid.uuid4()
        await self.pool.execute(
            "INSERT INTO blobs (id, filename, content_type) VALUES ($1, $2, $3)",
            blob_id,
            filename,
            content_type,
        )
        try:
            size = await self._write_chunks(blob_id, data, max_bytes)
            await self.pool.execute(
                "UPDATE blobs SET size_bytes = $2, complete = true WHERE id = $1", blob_id, size
            )
        except BaseException:
            # Shielded: a client that disconnects cancels the request, not this clean-up.
            await asyncio.shield(self.delete(blob_id))
            raise
        return blob_id

    async def _write_chunks(
        self, blob_id: uuid.UUID, data: AsyncIterable[bytes], max_bytes: int
    ) -> int:
        size, seq, pending = 0, 0, bytearray()
        async for piece in data:
            size += len(piece)
            if size > max_bytes:
                raise UploadTooLarge(max_bytes)
            pending += piece
            while len(pending) >= CHUNK_BYTES:
                await self._put(blob_id, seq, bytes(pending[:CHUNK_BYTES]))
                del pending[:CHUNK_BYTES]
                seq += 1
        if pending:
            await self._put(blob_id, seq, bytes(pending))
        return size

    async def _put(self, blob_id: uuid.UUID, seq: int, data: bytes) -> None:
        await self.pool.execute(
            "INSERT INTO blob_chunks (blob_id, seq, data) VALUES ($1, $2, $3)", blob_id, seq, data
        )

    async def size(self, blob_id: uuid.UUID) -> int | None:
        value = await self.pool.fetchval(
            "SELECT size_bytes FROM blobs WHERE id = $1 AND complete", blob_id
        )
        return int(value) if value is not None else None

    async def read(self, blob_id: uuid.UUID) -> AsyncIterator[bytes]:
        """Yield the chunks in order, one query per chunk (bounded memory)."""
        seq = 0
        while True:
            chunk = await self.pool.fetchval(
                "SELECT data FROM blob_chunks WHERE blob_id = $1 AND seq = $2", blob_id, seq
            )
            if chunk is None:
                return
            yield bytes(chunk)
            seq += 1

    async def delete(self, blob_id: uuid.UUID) -> None:
        await self.pool.execute("DELETE FROM blobs WHERE id = $1", blob_id)
