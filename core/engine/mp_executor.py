"""``mp``: tensor parallelism over local processes, rank 0 in the engine's process (as vLLM runs it).

Start-up: the driver hosts a torch.distributed TCPStore and a socket listener, starts ranks
1..N-1 as fresh interpreters (``pagedllm.worker.worker``), sends each its ``RunnerSpec``, joins the
group itself as rank 0 and builds its own shard while they build theirs. Collectives are gloo on
CPU and NCCL on CUDA. On CPU each rank runs ``torch.set_num_threads(threads_per_rank(...))``: the cores
split over the ranks of one stage, which compute at once; the stages of a pipeline take turns on the same
cores (``threads_per_rank``). The driver's previous setting is restored at shutdown.

Each step the driver's runner sends the flat batch to the workers before its own forward
(``ModelRunner.peers``); nothing comes back but the collectives. A worker that dies is seen at
the next send, or by the collective it leaves (gloo closes its sockets): the step raises
``WorkerDiedError`` naming the rank and exit code, and the other workers are shut down (as on
any error in a step: the ranks may be left waiting in different collectives). Shutdown
(``shutdown``, the engine's garbage collection, interpreter exit) stops every worker: asked
first, killed after a grace period.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import weakref
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge

import torch
import torch.distributed as dist

from pagedllm import distributed
from pagedllm.attention.backend import StepState
from pagedllm.engine.executor import Executor, RunnerSpec, WorkerDiedError
from pagedllm.worker.model_runner import ModelRunner
from pagedllm.worker.worker import ADDRESS_ENV, KEY_ENV, RANK_ENV
from pagedllm.worker.worker_protocol import encode, recv, send

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # loading a large shard can take minutes; a dead worker is seen at once
STOP_GRACE_S = 5.0


OVERSUBSCRIBE_ENV = "PAGEDLLM_CPU_OVERSUBSCRIBE"  # "1": more CPU ranks than cores (tests; slow, but correct)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_placeable(world_size: int, device: torch.device, tensor_parallel_size: int | None = None) -> None:
    """Fail before starting anything when the machine cannot place ``world_size`` ranks: one CUDA device
    each; on CPU one core per rank of a stage (``tensor_parallel_size``; the stages share them, as in
    ``threads_per_rank``)."""
    tp = world_size if tensor_parallel_size is None else tensor_parallel_size
    if device.type == "cuda":
        have = torch.cuda.device_count()
        if have < world_size:
            what = f"tensor_parallel_size={tp}" + (f" x pipeline_parallel_size={world_size // tp}" if tp < world_size else "")
            raise ValueError(f"{what} needs {world_size} CUDA devices, one per rank; {have} visible "
                             f"(CUDA_VISIBLE_DEVICES); use at most {have} ranks")
        return
    have = available_cores()
    if have < tp and os.environ.get(OVERSUBSCRIBE_ENV) != "1":
        raise ValueError(f"tensor_parallel_size={tp} needs {tp} CPU cores, one per rank; this process "
                         f"may use {have} (os.sched_getaffinity); use tensor_parallel_size <= {have}")


def threads_per_rank(device: torch.device, world_size: int, tensor_parallel_size: int) -> int:
    """Torch threads of each rank. On CPU the cores split over the ranks of one stage: a pipelined step on one
    machine runs its stages one after another (``ModelRunner._forward_pipeline``), so a stage computes with
    every core while the others wait, as one rank would. (Stages overlapping on cores of their own would
    only read each stage's weights once more per micro-batch here: decode steps are bound by those reads,
    measured in docs/benchmarks.md.) On CUDA a rank drives its device: the cores split over all ranks."""
    ranks = tensor_parallel_size if device.type == "cpu" else world_size
    return max(1, available_cores() // ranks)


class MultiprocExecutor(Executor):
    """Ranks 1..N-1 as local processes. Subclasses change only where the workers run (``_reserve``,
    ``_host``, ``_launch``, ``_died``): the step protocol and the collective set-up stay here."""

    def __init__(self, spec: RunnerSpec, world_size: int, model_cls=None):
        self.world_size = world_size
        self.procs: list = []  # subprocess.Popen, or anything with its pid / poll / wait / kill
        self.conns: list[Connection] = []
        self.cleanups: list = []  # called (last first) once the workers are stopped: what _reserve took
        self._previous_threads = torch.get_num_threads()
        self.tensor_parallel_size = world_size // spec.pipeline_parallel_size
        self.num_threads = threads_per_rank(spec.device, world_size, self.tensor_parallel_size)
        self._finalizer = weakref.finalize(self, _stop_workers, self.procs, self.conns, self._previous_threads,
                                           self.cleanups)
        backend = "nccl" if spec.device.type == "cuda" and dist.is_nccl_available() else "gloo"
        try:
            self._reserve(spec)
            host = self._host()
            store = dist.TCPStore(host, 0, world_size, is_master=True, wait_for_workers=False,
                                  timeout=datetime.timedelta(seconds=START_TIMEOUT_S))
            self._start_workers(spec, host, store.port, backend)
            torch.set_num_threads(self.num_threads)
            distributed.init_tensor_parallel(0, world_size, store, backend,
                                             pipeline_parallel_size=spec.pipeline_parallel_size)
            device = torch.device("cuda", 0) if spec.device.type == "cuda" else spec.device
            self.driver_runner = ModelRunner(spec.hf_config, spec.model_path, spec.dtype, device,
                                             spec.max_model_len, spec.block_size, spec.attention_backend,
                                             spec.model_impl, model_cls, fp8=spec.fp8,
                                             kv_cache_dtype=spec.kv_cache_dtype)
            self.driver_runner.peers = weakref.proxy(self)  # no cycle: dropping the engine stops the workers at once
            for rank in range(1, world_size):
                self._expect(rank, "ready")
        except BaseException:
            self.shutdown()
            raise
        self.store = store
        logger.info("tensor x pipeline parallel: %d ranks in %d stage(s) (%s), %d torch thread(s) per rank",
                    world_size, spec.pipeline_parallel_size, backend, self.num_threads)

    # ---- start-up: where the workers run (what a subclass changes) ---------------------------
    def _reserve(self, spec: RunnerSpec) -> None:
        """Fail before starting anything when the ranks cannot be placed."""
        check_placeable(self.world_size, spec.device, self.tensor_parallel_size)

    def _host(self) -> str:
        """The address the workers reach the driver's store and socket at."""
        return "127.0.0.1"

    def _launch(self, ranks: range, address: str, key: bytes) -> list:
        """Start ranks 1..N-1; each connects back to ``address`` with ``key``. Returns their handles."""
        return [subprocess.Popen([sys.executable, "-P", "-c", "from pagedllm.worker.worker import main; main()"],
                                 env={**os.environ, ADDRESS_ENV: address, KEY_ENV: key.hex(), RANK_ENV: str(rank)},
                                 stdin=subprocess.DEVNULL)
                for rank in ranks]

    def _device_index(self, rank: int) -> int:
        """The CUDA device a worker of ``rank`` uses: its rank, all devices being visible to each process."""
        return rank

    # ---- start-up ------------------------------------------------------------------------
    def _start_workers(self, spec: RunnerSpec, host: str, store_port: int, backend: str) -> None:
        key = secrets.token_bytes(32)
        server = socket.create_server((host, 0))
        server.settimeout(0.2)
        address = "%s:%d" % (host, server.getsockname()[1])
        try:
            self.procs.extend(self._launch(range(1, self.world_size), address, key))
            by_rank: dict[int, Connection] = {}
            deadline = time.monotonic() + START_TIMEOUT_S
            while len(by_rank) < len(self.procs):
                self._check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"tensor-parallel workers did not connect within {START_TIMEOUT_S:.0f} s")
                try:
                    sock, _ = server.accept()
                except (socket.timeout, BlockingIOError):
                    continue
                sock.setblocking(True)
                conn = Connection(sock.detach())
                deliver_challenge(conn, key)
                answer_challenge(conn, key)
                kind, rank, _pid = recv(conn)
                by_rank[rank] = conn
            self.conns.extend(by_rank[rank] for rank in range(1, self.world_size))
        finally:
            server.close()
        fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "hf_config"}
        common = dict(fields, world_size=self.world_size, store_host=host,
                      store_port=store_port, backend=backend, num_threads=self.num_threads)
        for rank, conn in enumerate(self.conns, start=1):
            send(conn, {**common, "rank": rank, "device_index": self._device_index(rank)})

    def _expect(self, rank: int, kind: str, timeout: float = START_TIMEOUT_S):
        """The next message of ``rank``, which must be ``kind``; a dead worker or an error it sent raises."""
        conn, proc = self.conns[rank - 1], self.procs[rank - 1]
        deadline = time.monotonic() + timeout
        while not conn.poll(0.2):
            if proc.poll() is not None:
                raise self._died(rank)
            if time.monotonic() > deadline:
                raise TimeoutError(f"tensor-parallel rank {rank} did not answer {kind!r} within {timeout:.0f} s")
        try:
            message = recv(conn)
        except (EOFError, ConnectionError):
            proc.wait(STOP_GRACE_S)
            raise self._died(rank) from None
        if message[0] == "error":
            raise RuntimeError(f"tensor-parallel rank {rank} failed to start:\n{message[1]}")
        if message[0] != kind:
            raise RuntimeError(f"tensor-parallel rank {rank} answered {message[0]!r}, expected {kind!r}")
        return message[1] if len(message) > 1 else None

    def _died(self, rank: int) -> WorkerDiedError:
        proc = self.procs[rank - 1]
        return WorkerDiedError(f"tensor-parallel worker rank {rank} (pid {proc.pid}) died with exit code "
                               f"{proc.returncode}; the engine has stopped its other workers and cannot run more "
                               "steps: start a new one")

    def _dead_ranks(self) -> list[int]:
        return [rank for rank, proc in enumerate(self.procs, start=1) if proc.poll() is not None]

    def _check_alive(self) -> None:
        dead = self._dead_ranks()
        if dead:
            raise self._died(dead[0])

    # ---- what the driver's runner calls every step -------------------------------------------
    def _broadcast(self, message: tuple) -> None:
        self._check_alive()
        data = encode(message)
        for rank, conn in enumerate(self.conns, start=1):
            try:
                conn.send_bytes(data)
            except (BrokenPipeError, ConnectionError, OSError):
                self.procs[rank - 1].wait(STOP_GRACE_S)
                raise self._died(rank) from None

    def broadcast_forward(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata) -> None:
        shipped = dataclasses.replace(metadata, backend_state=StepState())  # each rank prepares its own
        self._broadcast(("forward", input_ids, positions, shipped))

    def broadcast_logits(self, rows: torch.Tensor) -> None:
        self._broadcast(("logits", rows.cpu()))

    def broadcast_pipeline(self, microbatches: list) -> None:
        """A pipelined step's micro-batches, to every rank of every stage (``pipeline_stage``)."""
        self._broadcast(("pipeline", [dataclasses.replace(mb, metadata=dataclasses.replace(
            mb.metadata, backend_state=StepState())) for mb in microbatches]))

    # ---- the executor interface --------------------------------------------------------------
    def num_kv_blocks(self, driver_blocks: int, per_block: int, budget_bytes: int | None,
                      gpu_utilization: float, reserve: int) -> int:
        self._broadcast(("num_blocks", per_block, budget_bytes, gpu_utilization, reserve))
        return min([driver_blocks] + [self._expect(rank, "num_blocks") for rank in range(1, self.world_size)])

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self._broadcast(("allocate", num_blocks))
        self.driver_runner.allocate_kv_cache(num_blocks)
        for rank in range(1, self.world_size):
            self._expect(rank, "allocated")

    def execute_model(self, scheduled):
        if not self._finalizer.alive:
            raise WorkerDiedError("the tensor-parallel workers were shut down (a worker died, or the engine was shut "
                                  "down): this engine cannot run more steps; start a new one")
        try:
            return self.driver_runner.execute(scheduled)
        except WorkerDiedError:
            self.shutdown()
            raise
        except Exception as exc:  # noqa: BLE001 - a collective fails when a peer died: say which
            dead = self._dead_ranks()
            if not dead:
                time.sleep(0.5)  # the peer's exit may trail the broken socket
                dead = self._dead_ranks()
            if dead:
                error = self._died(dead[0])
                self.shutdown()
                raise error from exc
            self.shutdown()  # the ranks may now wait in different collectives: none of them can step again
            raise

    def stats(self) -> list[dict]:
        self._broadcast(("stats",))
        return super().stats() + [self._expect(rank, "stats") for rank in range(1, self.world_size)]

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def shutdown(self) -> None:
        self._finalizer()


def _stop_workers(procs: list, conns: list[Connection], previous_threads: int, cleanups: list) -> None:
    """Ask every worker to stop, kill the ones still running after the grace period, leave the group,
    then release what the executor reserved (``cleanups``, last first)."""
    for conn in conns:
        try:
            send(conn, ("stop",))
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for conn in conns:
        conn.close()
    if procs:  # the driver joins the group after starting its workers: before that, a group here is another's
        distributed.destroy_tensor_parallel()
        torch.set_num_threads(previous_threads)
    while cleanups:
        release = cleanups.pop()
        try:
            release()
        except Exception:  # noqa: BLE001 - release the rest; shutdown must not raise
            logger.warning("tensor-parallel shutdown: %r failed", release, exc_info=True)
