"""ShmAllReduce: the all-reduce of tensor-parallel ranks on one machine through shared memory, not gloo's TCP.

Why: a TP=2 decode step on CPU makes ~60 small all-reduces (one per row-parallel layer: tens of KB each).
Through gloo each one is a round trip over loopback TCP with wake-ups of gloo's loop threads on both sides;
on a 2-core machine the ranks' compute threads sat ~40% idle in them. vLLM's CPU backend uses a shared-memory
all-reduce between local ranks for the same reason. Here every rank copies its tensor into its slot of a
shared buffer and publishes the call's number in its flag; once every flag shows the number, each rank adds
the slots in rank order (so every rank gets the same bits) into its tensor. Two slot sets alternate: a rank
reuses a set only after every rank has published the next call, i.e. has finished reading this one.

It relies on x86's store order (a rank's slot bytes are visible before its flag) and is used only there, for
float tensors up to ``MAX_BYTES`` (larger ones, and ranks on different machines, use gloo). A peer that dies
while the others wait is noticed within ``PEER_CHECK_S`` (its process gone or a zombie): the wait raises, as a
gloo collective would when its socket closes, and the executor names the dead rank.
"""
from __future__ import annotations

import os
import platform
import socket
import time
import uuid

import torch

MAX_BYTES = 1 << 20  # per rank and call: larger tensors take gloo (well under glibc's non-temporal copy size)
PEER_CHECK_S = 0.01  # while waiting, look for dead peers this often
FLAG_BYTES = 64  # one cache line per rank's flag


def supported() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def machine_id() -> str:
    """This machine, as the ranks compare it: host name and boot id (two containers may share a name)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


class ShmAllReduce:
    """Sum-all-reduce among ``world_size`` local ranks over a shared buffer; ``peers``: their pids by rank."""

    def __init__(self, rank: int, world_size: int, path: str, peers: list[int], timeout_s: float):
        self.rank, self.world_size, self.peers, self.timeout_s = rank, world_size, peers, timeout_s
        flags_bytes = FLAG_BYTES * world_size
        size = flags_bytes + 2 * world_size * MAX_BYTES
        buffer = torch.from_file(path, shared=True, size=size, dtype=torch.uint8)
        self.flags = buffer[:flags_bytes].view(torch.int64).view(world_size, FLAG_BYTES // 8)[:, 0]
        self.slots = buffer[flags_bytes:].view(2, world_size, MAX_BYTES)
        self.calls = 0

    @staticmethod
    def create_file(world_size: int) -> str:
        """Rank 0 makes the zero-filled file the ranks map (removed once they all have: ``unlink``); written, not
        truncated to size, so a full /dev/shm is an OSError here rather than a SIGBUS at the first all-reduce."""
        path = os.path.join("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp", f"pagedllm-tp-{uuid.uuid4().hex}")
        try:
            with open(path, "wb") as f:
                f.write(bytes(FLAG_BYTES * world_size + 2 * world_size * MAX_BYTES))
        except OSError:
            if os.path.exists(path):
                os.unlink(path)
            raise
        return path

    def takes(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.is_contiguous() and x.dtype.is_floating_point
                and x.numel() * x.element_size() <= MAX_BYTES)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        n, nbytes = self.calls, x.numel() * x.element_size()
        slots = self.slots[n % 2]

        def slot(r: int) -> torch.Tensor:  # rank r's tensor of this call, in the shared buffer
            return slots[r, :nbytes].view(x.dtype).view(x.shape)

        slot(self.rank).copy_(x)
        self.flags[self.rank] = n
        self._wait_for(n)
        x.copy_(slot(0))
        for r in range(1, self.world_size):
            x.add_(slot(r))
        return x

    def _wait_for(self, n: int) -> None:
        flags = self.flags
        if int(flags.min()) >= n:
            return
        start = last_check = time.monotonic()
        while int(flags.min()) < n:
            os.sched_yield()  # a peer on this core (more ranks than cores) gets it
            now = time.monotonic()
            if now - last_check >= PEER_CHECK_S:
                last_check = now
                self._check_peers(n)
                if now - start > self.timeout_s:
                    raise RuntimeError(f"shared-memory all-reduce: ranks {self._behind(n)} did not reach call {n} "
                                       f"within {self.timeout_s:g} s")

    def _behind(self, n: int) -> list[int]:
        return [r for r in range(self.world_size) if int(self.flags[r]) < n]

    def _check_peers(self, n: int) -> None:
        for r in self._behind(n):
            # gone and still behind, read in that order: a rank that published call n and then exited is not
            # an error for this call (its slot is in the buffer); a gone one cannot publish any more
            if not _alive(self.peers[r]) and int(self.flags[r]) < n:
                raise RuntimeError(f"shared-memory all-reduce: rank {r} (pid {self.peers[r]}) is gone")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
