"""``ray``: tensor parallelism with ranks 1..N-1 as Ray actors, on this machine or on a Ray cluster.

As with ``mp`` (and as vLLM runs it), rank 0 stays in the engine's process. What differs is only
where the other ranks run, so ``RayExecutor`` is the mp executor with another launcher: a placement
group reserves one bundle per rank (``{"CPU": 1}`` on CPU, ``{"GPU": 1}`` on CUDA; rank 0's bundle
pinned to this node, since the driver runs there), and each worker is an actor in its bundle that
runs the mp worker's loop (``worker.connect_and_serve``): the same socket protocol each step, the
same TCPStore and gloo/NCCL group. The driver talks to the actors through Ray only to start them.

Ray: the cluster of ``RAY_ADDRESS``, or the one this process joined already (``ray.init`` before
the engine); else a local instance with one CPU (GPU) per rank, which the engine shuts down with
itself. A placement group the cluster cannot hold fails the start with ``ValueError``: at once when
the cluster has too few CPUs (GPUs) in all, after ``PLACEMENT_TIMEOUT_S`` when others hold them.
A dead actor (``ray.kill``, a killed process, a lost node) raises ``WorkerDiedError`` naming the
rank, as in mp. Shutdown kills the actors and removes the placement group.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
import time

from pagedllm.engine.executor import RunnerSpec, WorkerDiedError
from pagedllm.engine.mp_executor import START_TIMEOUT_S, MultiprocExecutor, check_placeable

logger = logging.getLogger(__name__)

PLACEMENT_TIMEOUT_S = 30.0  # a group that fits the cluster but not its free resources: wait this long for them
OBJECT_STORE_BYTES = 128 << 20  # a local instance's object store: nothing but start-up calls pass through it
CAUSE_TIMEOUT_S = 2.0  # how long to ask Ray why an actor whose process is gone died
# An actor gets its node's environment, not the driver's (an mp worker inherits it): these travel, as
# vLLM's own variables do to its Ray workers, so every rank loads the same plugins and files.
CARRIED_ENV_PREFIXES = ("PAGEDLLM_", "HF_", "TRANSFORMERS_", "TRITON_")


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError("distributed_executor_backend='ray' needs Ray: pip install 'pagedllm[ray]' (or use "
                          "distributed_executor_backend='mp', local worker processes)") from exc
    return ray


class RayWorker:
    """One rank as a Ray actor: it answers the driver over the mp worker's socket protocol."""

    def describe(self) -> tuple[int, str]:
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def serve(self, address: str, key: bytes, rank: int) -> int:
        from pagedllm.worker.worker import connect_and_serve

        logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(levelname)s %(message)s")
        return connect_and_serve(address, key, rank)


class RayWorkerHandle:
    """A rank's actor through the part of ``subprocess.Popen`` the mp executor uses (``pid``, ``poll``,
    ``wait``, ``kill``, ``returncode``). On the driver's node the actor's pid tells at no cost whether
    it lives (read every step); elsewhere Ray does, through the serve call ending."""

    def __init__(self, actor, pid: int, local: bool):
        self.actor, self.pid, self.local = actor, pid, local
        self.serving = None  # the serve call's ObjectRef: ready when the loop returned or the actor died
        self.returncode: int | None = None
        self.cause = ""

    def poll(self) -> int | None:
        if self.returncode is None and not self._running():
            self._ended()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import ray

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired(f"Ray actor {self.actor_id}", timeout)
            if ray.wait([self.serving], timeout=left)[0]:
                self._ended()
        return self.returncode

    def kill(self) -> None:
        import ray

        if ray.is_initialized():
            ray.kill(self.actor, no_restart=True)

    @property
    def actor_id(self) -> str:
        return self.actor._actor_id.hex()

    def _running(self) -> bool:
        import ray

        if not ray.is_initialized():  # Ray was shut down (interpreter exit): its actors with it
            return False
        if self.local and not _pid_alive(self.pid):
            return False
        return self.local or not ray.wait([self.serving], timeout=0)[0]

    def _ended(self) -> None:
        """The serve loop's exit code (0 after stop, 1 after a failed start), or -1 and Ray's reason."""
        import ray

        if not ray.is_initialized():
            self.returncode, self.cause = -1, "Ray was shut down"
            return
        try:
            self.returncode = ray.get(self.serving, timeout=CAUSE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.returncode, self.cause = -1, f"its process (pid {self.pid}) is gone"
        except Exception as exc:  # noqa: BLE001 - ActorDiedError and kin: Ray's reason, in one line
            self.returncode, self.cause = -1, _death_reason(exc)


class RayExecutor(MultiprocExecutor):
    """Ranks 1..N-1 as Ray actors in a placement group; rank 0, the step protocol and the collectives
    as in ``MultiprocExecutor``."""

    def _reserve(self, spec: RunnerSpec) -> None:
        ray = import_ray()
        self.device_type = spec.device.type
        self.actors: list = []
        if not ray.is_initialized():
            start_ray(self.world_size, spec.device, self.tensor_parallel_size)
            self.cleanups.append(ray.shutdown)  # released last: the group and the actors go first
        self.placement_group = place_ranks(self.world_size, self.device_type)
        # removing the group ends the actors in it too; killing them first does not depend on that
        self.cleanups.append(functools.partial(_remove_group, self.placement_group))
        self.cleanups.append(functools.partial(_kill_actors, self.actors))

    def _host(self) -> str:
        return import_ray().util.get_node_ip_address()

    def _launch(self, ranks: range, address: str, key: bytes) -> list:
        ray = import_ray()
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        resources = dict(num_cpus=0, num_gpus=1) if self.device_type == "cuda" else dict(num_cpus=1)
        env = {name: value for name, value in os.environ.items() if name.startswith(CARRIED_ENV_PREFIXES)}
        actor_cls = ray.remote(RayWorker)
        for rank in ranks:
            strategy = PlacementGroupSchedulingStrategy(self.placement_group, placement_group_bundle_index=rank)
            self.actors.append(actor_cls.options(scheduling_strategy=strategy, max_restarts=0,
                                                 runtime_env={"env_vars": env}, **resources).remote())
        described = ray.get([actor.describe.remote() for actor in self.actors], timeout=START_TIMEOUT_S)
        here = ray.get_runtime_context().get_node_id()
        handles = []
        for rank, actor, (pid, node) in zip(ranks, self.actors, described):
            handle = RayWorkerHandle(actor, pid, local=node == here)
            handle.serving = actor.serve.remote(address, key, rank)
            handles.append(handle)
        return handles

    def _device_index(self, rank: int) -> int:
        return 0  # Ray sets each actor's CUDA_VISIBLE_DEVICES to the one GPU of its bundle

    def _died(self, rank: int) -> WorkerDiedError:
        handle = self.procs[rank - 1]
        return WorkerDiedError(f"tensor-parallel worker rank {rank} (Ray actor {handle.actor_id}, pid {handle.pid}) "
                               f"died: {handle.cause or 'its serve loop ended'}; the engine has stopped its other "
                               "workers and cannot run more steps: start a new one")


def start_ray(world_size: int, device, tensor_parallel_size: int | None = None) -> None:
    """Join the cluster of ``RAY_ADDRESS``, else start a local instance holding exactly the ranks."""
    ray = import_ray()
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    check_placeable(world_size, device, tensor_parallel_size)  # a local instance: the ranks share this machine's cores
    gpus = world_size if device.type == "cuda" else 0
    ray.init(address="local", num_cpus=world_size, num_gpus=gpus, include_dashboard=False,
             object_store_memory=OBJECT_STORE_BYTES)


def place_ranks(world_size: int, device_type: str):
    """A placement group of one bundle per rank, rank 0's on this node; ``ValueError`` naming what is
    missing when the cluster cannot hold it (the group removed again)."""
    ray = import_ray()
    from ray.util.placement_group import placement_group

    kind = "GPU" if device_type == "cuda" else "CPU"
    node = ray.util.get_node_ip_address()
    have = ray.cluster_resources().get(kind, 0)
    if have < world_size:
        raise ValueError(f"tensor_parallel_size={world_size} with distributed_executor_backend='ray' needs "
                         f"{world_size} {kind}s, one bundle {{'{kind}': 1}} per rank; the Ray cluster has {have:g} "
                         f"in all: use tensor_parallel_size <= {int(have)}, or add nodes to the cluster")
    bundles = [{kind: 1.0} for _ in range(world_size)]
    bundles[0][f"node:{node}"] = 0.001  # rank 0 is this process: its bundle must be on this node
    group = placement_group(bundles, strategy="PACK")
    if not ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)[0]:
        _remove_group(group)
        free = ray.available_resources().get(kind, 0)
        raise ValueError(f"tensor_parallel_size={world_size} with distributed_executor_backend='ray': the Ray "
                         f"cluster did not place {world_size} bundles {{'{kind}': 1}} (rank 0's on this node, "
                         f"{node}) within {PLACEMENT_TIMEOUT_S:g} s: {free:g} of its {have:g} {kind}s are free, "
                         f"{max(world_size - free, 0):g} missing; free them, or use a smaller tensor_parallel_size")
    return group


def _remove_group(group) -> None:
    import ray
    from ray.util.placement_group import remove_placement_group

    if ray.is_initialized():
        remove_placement_group(group)


def _kill_actors(actors: list) -> None:
    import ray

    if ray.is_initialized():
        for actor in actors:
            ray.kill(actor, no_restart=True)
    actors.clear()


def _death_reason(exc: Exception) -> str:
    """Ray's one-sentence reason from its long ActorDiedError text (``it was killed by `ray.kill```)."""
    text = re.sub(r"\s+", " ", str(exc)).strip()
    found = re.search(r"The actor is dead because (.*?)\.(?: |$)", text)
    return found.group(1) if found else text.split(". ")[0][:200]


def _pid_alive(pid: int) -> bool:
    """Whether a process of this machine runs (a zombie, waiting for its parent to reap it, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
