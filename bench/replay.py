"""A load generator for ``bench.ingest``: serves recorded Extended stream frames as fast as the socket takes them.

``python -m bench.replay FRAMES_FILE PORT``: one JSON frame per line; every connection to
``/stream.extended.exchange/v1/account`` receives all of them, then stays open until the client closes. It costs
far less CPU than the simulator (no engine, frames are ready-made), so on a 2-core machine the daemon under test
keeps most of the other core.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve


async def main(frames: list[str], port: int) -> None:
    async def handler(connection: ServerConnection) -> None:
        for frame in frames:
            await connection.send(frame)
        await connection.wait_closed()

    async with serve(handler, "127.0.0.1", port, max_queue=None, compression=None):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]).read_text().splitlines(), int(sys.argv[2])))
