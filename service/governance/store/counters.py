"""Node-local counters in a shared memory-mapped file: the fast part of the local store.

Every Paddock process on the node maps the same file and changes it only
under an exclusive ``lockf`` lock, so each admission is atomic across
processes; a lock held by a process that dies is released by the kernel.
The file is a fixed-size open-addressing hash table of 96-byte slots keyed
by a 64-bit hash of the row's name:

* ``s|<scope>``: the scope's buckets and budgets — requests and tokens per
  minute (level, time), the UTC day and its settled tokens, the month and its
  settled tokens;
* ``h|<scope>|<holder>``: what one process (a *holder*) holds in that scope —
  concurrency slots and reserved day/month tokens, with the holder's
  generation. Each process keeps its own leases in memory, with their
  expiries, and mirrors their sum here; the others read it.

Holders are registered in the file's header with an expiry the process
renews; a holder that stops renewing (it died) is ignored by everyone, and
its header entry is reused with a new generation, which voids its old rows.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import secrets
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from service.governance.store.base import StoreUnavailable

MAGIC = b"PDKCNT01"
HEADER = 8192
HOLDERS = 128
_HEADER = struct.Struct("<8sQQ")  # magic, slot count, holder entries ever used
_HOLDER = struct.Struct("<QdQQ")  # holder id, expires, generation, pid
_SLOT = struct.Struct("<Q11d")  # key hash, 11 fields
SLOT_SIZE = _SLOT.size  # 96
DEFAULT_SLOTS = 1 << 18  # 24 MiB of sparse file: ~130,000 scopes with their holders' rows


def row_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") or 1


@dataclass
class Holder:
    index: int
    generation: int
    expires: float


class CounterFile:
    """The mapped file, its lock and its hash table (callers hold :meth:`locked`)."""

    def __init__(self, path: Path, slots: int = DEFAULT_SLOTS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.Lock()
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                self._slots = self._init_file(slots)
                self._map = mmap.mmap(self._fd, HEADER + self._slots * SLOT_SIZE)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
        except OSError as error:
            raise StoreUnavailable(f"governance counters {path}: {error}") from error
        self._path = path
        self._index: dict[str, int] = {}  # row name -> slot (slots never move)

    def _init_file(self, slots: int) -> int:
        head = os.pread(self._fd, _HEADER.size, 0)
        if len(head) == _HEADER.size and head[:8] == MAGIC:
            return int(_HEADER.unpack(head)[1])
        os.ftruncate(self._fd, HEADER + slots * SLOT_SIZE)
        os.pwrite(self._fd, _HEADER.pack(MAGIC, slots, 0), 0)
        return slots

    def locked(self) -> _Locked:
        return _Locked(self)

    def close(self) -> None:
        with self._thread_lock:
            self._map.close()
            os.close(self._fd)

    # -- rows ----------------------------------------------------------------

    def find(self, name: str, create: bool) -> int | None:
        """The slot offset of a row (made if ``create``), or None."""
        slot = self._index.get(name)
        if slot is not None:
            return slot
        key = row_key(name)
        for probe in range(self._slots):
            offset = HEADER + ((key + probe) % self._slots) * SLOT_SIZE
            found = struct.unpack_from("<Q", self._map, offset)[0]
            if found == key:
                self._index[name] = offset
                return offset
            if found == 0:
                if not create:
                    return None
                _SLOT.pack_into(self._map, offset, key, *([0.0] * 11))
                self._index[name] = offset
                return offset
        raise StoreUnavailable(f"governance counters {self._path}: the table is full")

    def read(self, offset: int) -> list[float]:
        return list(_SLOT.unpack_from(self._map, offset)[1:])

    def write(self, offset: int, values: list[float]) -> None:
        struct.pack_into("<11d", self._map, offset + 8, *values)

    # -- holders -------------------------------------------------------------

    def _used(self) -> int:
        return int(struct.unpack_from("<Q", self._map, 16)[0])

    def holders(self, now: float) -> list[tuple[int, int]]:
        """(index, generation) of every live holder."""
        live = []
        for index in range(self._used()):
            holder_id, expires, generation, _ = _HOLDER.unpack_from(self._map, _HEADER.size + index * _HOLDER.size)
            if holder_id and expires > now:
                live.append((index, int(generation)))
        return live

    def register(self, now: float, ttl_s: float) -> Holder:
        for index in range(HOLDERS):
            at = _HEADER.size + index * _HOLDER.size
            holder_id, expires, generation, _ = _HOLDER.unpack_from(self._map, at)
            if not holder_id or expires <= now:
                generation += 1
                _HOLDER.pack_into(self._map, at, secrets.randbits(63) | 1, now + ttl_s, generation, os.getpid())
                struct.pack_into("<Q", self._map, 16, max(self._used(), index + 1))
                return Holder(index, int(generation), now + ttl_s)
        raise StoreUnavailable(f"governance counters {self._path}: more than {HOLDERS} live processes")

    def renew(self, holder: Holder, expires: float) -> None:
        at = _HEADER.size + holder.index * _HOLDER.size + 8
        struct.pack_into("<d", self._map, at, expires)
        holder.expires = expires


class _Locked:
    def __init__(self, counters: CounterFile) -> None:
        self._counters = counters

    def __enter__(self) -> CounterFile:
        self._counters._thread_lock.acquire()
        try:
            fcntl.lockf(self._counters._fd, fcntl.LOCK_EX)
        except OSError as error:
            self._counters._thread_lock.release()
            raise StoreUnavailable(f"governance counters: {error}") from error
        return self._counters

    def __exit__(self, *exc_info: object) -> None:
        try:
            fcntl.lockf(self._counters._fd, fcntl.LOCK_UN)
        finally:
            self._counters._thread_lock.release()
