"""Extraction in worker processes: bounded in number, time and memory, fair per account.

Promises:
- Every document is read in a child process of its own (`python -m
  bot.core.documents.workers`), never on the event loop's default executor that avatars
  and the loop's other work share.
- At most `processes` children run at once, and one account at most `per_account` of
  them: one member's six uploads wait for each other, not for a worker another server
  needs.
- Each child has a wall-clock deadline (it is killed past it: the member is told the
  file is too complex to read) and an address-space limit (RLIMIT_AS) plus a CPU-time
  limit, so everything the PDF engine does, font and CMap parsing included, counts
  against the same budget. Nothing a file makes a reader do can outlive it.
- A child that dies (out of memory, killed, crashed) refuses the document with the
  same sentence; the bot goes on.

Protocol: the parent writes one JSON line (file name and limits) then the file's bytes
to the child's stdin; the child writes JSON lines: {"progress": [i, n]}..., then
{"ok": Extracted}, {"refused": sentence} or {"beyond": estimated tokens} (clearly more
than the balance covers: raised in the parent as BeyondBudget).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

from bot.core.documents.readers import Extracted, Limits, read
from bot.core.documents.readers.budget import BeyondBudget
from bot.errors import InvalidInput

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

TOO_COMPLEX = (
    "That file took too long or too much memory to read (its pages are too complex, or "
    "it is built to overload readers). Please export it again, or split it into smaller "
    "files."
)
_STREAM_LIMIT = 256 * 1024 * 1024  # one JSON line holds a whole document's text


@dataclass(frozen=True)
class WorkerLimits:
    processes: int = 2
    per_account: int = 1
    deadline_seconds: float = 120.0
    memory_bytes: int = 1024 * 1024 * 1024


class ExtractionPool:
    def __init__(self, limits: WorkerLimits, command: list[str] | None = None) -> None:
        self.limits = limits
        self._slots = asyncio.Semaphore(max(1, limits.processes))
        self._accounts: dict[str, asyncio.Semaphore] = {}
        self._children: set[asyncio.subprocess.Process] = set()
        # The child's command; tests point it elsewhere to stand in for a slow reader.
        self.command = command or [sys.executable, "-m", "bot.core.documents.workers"]

    async def extract(
        self,
        account_id: str,
        data: bytes,
        filename: str | None,
        limits: Limits,
        progress: Progress | None = None,
    ) -> Extracted:
        account = self._accounts.setdefault(
            account_id, asyncio.Semaphore(max(1, self.limits.per_account))
        )
        async with account, self._slots:
            return await self._run(data, filename, limits, progress)

    async def _run(
        self, data: bytes, filename: str | None, limits: Limits, progress: Progress | None
    ) -> Extracted:
        child = await asyncio.create_subprocess_exec(
            *self.command,
            str(self.limits.memory_bytes),
            str(max(1, int(self.limits.deadline_seconds) + 1)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=_STREAM_LIMIT,
        )
        self._children.add(child)
        try:
            async with asyncio.timeout(self.limits.deadline_seconds):
                return await self._talk(child, data, filename, limits, progress)
        except TimeoutError:
            log.warning("extraction of %r passed its deadline; killed", filename)
            raise InvalidInput(TOO_COMPLEX) from None
        finally:
            self._children.discard(child)
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()

    async def _talk(
        self,
        child: asyncio.subprocess.Process,
        data: bytes,
        filename: str | None,
        limits: Limits,
        progress: Progress | None,
    ) -> Extracted:
        assert child.stdin is not None and child.stdout is not None
        header = json.dumps({"filename": filename, "limits": asdict(limits)}).encode()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            child.stdin.write(header + b"\n" + data)
            await child.stdin.drain()
            child.stdin.close()
        while True:
            line = await child.stdout.readline()
            if not line:
                code = await child.wait()
                log.warning("extraction worker ended without an answer (exit %s)", code)
                raise InvalidInput(TOO_COMPLEX)
            message = json.loads(line)
            if "progress" in message:
                if progress is not None:
                    progress(*message["progress"])
            elif "refused" in message:
                raise InvalidInput(message["refused"])
            elif "beyond" in message:
                raise BeyondBudget(int(message["beyond"]))
            else:
                return Extracted(**message["ok"])

    async def close(self) -> None:
        for child in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                child.kill()


def _child(memory_bytes: int, cpu_seconds: int) -> None:
    """The worker: limits first, then read one document from stdin."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    out = os.fdopen(sys.stdout.fileno(), "wb", buffering=0)

    def send(message: dict[str, object]) -> None:
        out.write(json.dumps(message).encode() + b"\n")

    source = sys.stdin.buffer
    header = json.loads(source.readline())
    data = source.read()
    limits = Limits(**header["limits"])
    try:
        extracted = read(data, header["filename"], limits, lambda i, n: send({"progress": [i, n]}))
    except InvalidInput as refusal:
        send({"refused": str(refusal)})
        return
    except BeyondBudget as beyond:
        send({"beyond": beyond.estimate})
        return
    except MemoryError:
        send({"refused": TOO_COMPLEX})
        return
    send({"ok": asdict(extracted)})


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]))
