"""Data parallelism for serving: N independent engines as Ray Serve replicas behind one OpenAI endpoint.

``pagedllm serve MODEL --data-parallel-size N`` (vLLM's flag) and ``build_openai_app(model, num_replicas=N)``
(the Python API, a Serve application as ``ray.serve.llm.build_openai_app`` returns one) both end here. Each
replica is one Ray actor holding one ``AsyncEngine`` and serving the very app ``pagedllm serve`` serves
(``api_server.build_app``: the same routes, errors, guard and /metrics), built in the replica once its engine
is up (Serve's late-bound ingress, ``__serve_build_asgi_app__``). Serve's HTTP proxy spreads requests over the
replicas; each response names the replica that served it in the ``x-pagedllm-replica`` header, so a client
(or a test) sees the spread, and a replica's own /metrics counters are read from the responses it answers.

Ray: the cluster of ``RAY_ADDRESS`` (started with ``ray start``), or the one this process joined already,
else a local instance holding exactly the replicas, which ``shutdown`` stops again. Each replica reserves one
CPU per tensor-parallel rank on CPU (its torch threads), one GPU per rank on CUDA.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

from pagedllm.config import EngineConfig
from pagedllm.engine.ray_executor import CARRIED_ENV_PREFIXES


APP_NAME = "pagedllm"
DEPLOYMENT_NAME = "OpenAIReplica"
REPLICA_HEADER = "x-pagedllm-replica"
OBJECT_STORE_BYTES = 128 << 20  # a local instance's: requests go through Serve's proxy, not the object store
MAX_ONGOING_REQUESTS = 1024  # per replica (Serve's default, 5, would starve the batch); max_waiting_requests bounds it
HEALTH_CHECK_PERIOD_S = 2.0  # how often Serve asks each replica whether its engine loop lives


def import_serve():
    try:
        from ray import serve
    except ImportError as exc:
        raise ImportError("data_parallel_size > 1 runs on Ray Serve: pip install 'pagedllm[ray]' (ray[serve])") from exc
    return serve


class ReplicaHeaderMiddleware:
    """Adds ``x-pagedllm-replica: <replica id>`` to every HTTP response (a plain ASGI middleware: streams
    pass through untouched)."""

    def __init__(self, app, replica: str):
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


class OpenAIReplica:
    """One Serve replica: its engines (the model, then ``--also`` models) and ``build_app``'s app over them.

    Not a Serve deployment by itself: ``deployment()`` wraps it (``serve.ingress()``, late-bound), so this
    module imports without Ray."""

    def __init__(self, engines: list[tuple[EngineConfig, list[str]]], app_kwargs: dict, num_threads: int):
        import torch

        from pagedllm.engine.async_engine import AsyncEngine

        torch.set_num_threads(num_threads)
        self.names = [names for _, names in engines]
        self.app_kwargs = app_kwargs
        self.engines: list[AsyncEngine] = []
        try:
            for config, _ in engines:
                self.engines.append(AsyncEngine.from_config(config, log_requests=False))
        except BaseException:
            self.shutdown()
            raise

    def __serve_build_asgi_app__(self):
        from ray import serve

        from pagedllm.entrypoints.openai.api_server import build_app

        app = build_app(self.engines[0], self.names[0], also=list(zip(self.engines[1:], self.names[1:])),
                        **self.app_kwargs)
        app.add_middleware(ReplicaHeaderMiddleware, replica=serve.get_replica_context().replica_tag)
        return app

    def served(self) -> list[tuple[str, str]]:
        """(name answered, runner) of each served model, for the ready message."""
        return [(names[0], engine.engine.runner_type) for engine, names in zip(self.engines, self.names)]

    def check_health(self) -> None:
        """Serve's health probe: a replica whose engine loop died is replaced, not routed to."""
        for engine, names in zip(self.engines, self.names):
            if not engine.healthy:
                raise RuntimeError(f"the engine loop of {names[0]!r} died: {engine.dead_error!r}")

    def shutdown(self) -> None:
        for engine in self.engines:
            engine.shutdown()
        self.engines = []

    def __del__(self):
        self.shutdown()


def replica_actor_options(config: EngineConfig, num_cpus: int | None = None) -> dict:
    """What each replica reserves: ``num_cpus`` CPUs (default and least: one per tensor-parallel rank), its
    torch threads; on CUDA one GPU per rank."""
    ranks = config.tensor_parallel_size
    if config.torch_device.type == "cuda":
        return {"num_cpus": num_cpus or 1, "num_gpus": ranks}
    return {"num_cpus": max(ranks, num_cpus or ranks), "num_gpus": 0}


def build_openai_app(model: str | None = None, *, num_replicas: int = 1, also: list[tuple[str, str]] = (),
                     app_kwargs: dict | None = None, ray_actor_options: dict | None = None, **engine_kwargs):
    """A Ray Serve application of ``num_replicas`` independent engines of ``model`` behind one OpenAI endpoint,
    each replica serving what ``pagedllm serve`` serves. Run it with ``serve.run(app, route_prefix="/")``, or
    ``ServeRun(app, ...)``, which also starts Ray and Serve as ``pagedllm serve -dp`` does and stops them again.

    ``engine_kwargs``: ``LLM(...)``'s keywords, checked here (a bad one raises before any replica starts).
    ``also``: (model, served name) pairs of more models each replica serves (``serve --also``).
    ``app_kwargs``: ``build_app``'s keywords (``api_key``, ``chat_template``, ``tool_call_parser``, ...).
    ``ray_actor_options``: Serve's per-replica resources (default ``replica_actor_options``: one CPU per
    tensor-parallel rank, one GPU per rank on CUDA); a replica runs as many torch threads per rank as it has
    CPUs per rank."""
    from pagedllm.entrypoints.cli_args import DEFAULT_MODEL

    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"num_replicas must be a positive int (data_parallel_size: engines behind the endpoint), "
                         f"got {num_replicas!r}")
    config = EngineConfig.from_kwargs(model=model or DEFAULT_MODEL, **engine_kwargs)
    shared = {k: engine_kwargs[k] for k in ("device", "dtype", "seed", "download_dir", "trust_remote_code")
              if k in engine_kwargs}
    engines = [(config, _names(config))]
    engines += [(EngineConfig.from_kwargs(model=m, **shared), [name]) for m, name in also]
    options = dict(ray_actor_options or replica_actor_options(config))
    env = {name: value for name, value in os.environ.items() if name.startswith(CARRIED_ENV_PREFIXES)}
    options.setdefault("runtime_env", {"env_vars": env})
    num_threads = max(1, int(options.get("num_cpus", 1)) // config.tensor_parallel_size)
    return make_deployment(num_replicas, options).bind(engines, dict(app_kwargs or {}), num_threads)


def _names(config: EngineConfig) -> list[str]:
    names = config.served_model_name or [config.model]
    return [names] if isinstance(names, str) else list(names)


def make_deployment(num_replicas: int, ray_actor_options: dict):
    """``OpenAIReplica`` as a Serve deployment: late-bound ingress, ``num_replicas`` fixed (no autoscaling), a
    replica that fails to start is not retried in a loop (a bad model fails the start)."""
    serve = import_serve()
    ingress = serve.ingress()(OpenAIReplica)
    return serve.deployment(ingress, name=DEPLOYMENT_NAME, num_replicas=num_replicas,
                            ray_actor_options=ray_actor_options, max_ongoing_requests=MAX_ONGOING_REQUESTS,
                            max_constructor_retry_count=1, health_check_period_s=HEALTH_CHECK_PERIOD_S)


# ---- running it -------------------------------------------------------------------------------
class ServeRun:
    """A started Serve application and the Ray it runs on; ``shutdown()`` removes the application, stops
    Serve (its controller and proxies) unless it ran before (then its other applications keep running, and so
    do its proxies, on their own port), and the local Ray this process started: no actor of ours is left.

    Ray: ``RAY_ADDRESS``'s cluster, or the one this process joined already, else a local instance of exactly
    ``num_replicas`` times the replica's resources. Too few CPUs (GPUs) fail here with ``ValueError``, before
    Serve would wait for them."""

    def __init__(self, app, num_replicas: int, replica_options: dict, *, host: str = "127.0.0.1",
                 port: int = 8000, ssl_keyfile: str | None = None, ssl_certfile: str | None = None):
        import ray

        serve = import_serve()
        self.started_ray = False
        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):
                ray.init()
            else:
                check_capacity(num_replicas, replica_options, local=True)
                ray.init(address="local", num_cpus=num_replicas * replica_options.get("num_cpus", 1),
                         num_gpus=num_replicas * replica_options.get("num_gpus", 0), include_dashboard=False,
                         object_store_memory=OBJECT_STORE_BYTES)
                self.started_ray = True
        self.owns_serve = not serve_running()  # a Serve someone else started keeps running, with their apps
        try:
            check_capacity(num_replicas, replica_options, local=False)
            serve.start(http_options={"host": host, "port": port, "ssl_keyfile": ssl_keyfile,
                                      "ssl_certfile": ssl_certfile})
            self.handle = serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as exc:  # Serve's "Deploying application failed": the replica's own error says why
            reason = replica_error()
            self.shutdown()
            raise RuntimeError(f"{exc} {reason}".strip()) from exc
        except BaseException:
            self.shutdown()
            raise

    def served(self) -> list[tuple[str, str]]:
        """(name, runner) of each served model, asked of a replica (the driver loads no model)."""
        return self.handle.served.remote().result()

    def shutdown(self) -> None:
        import ray

        if ray.is_initialized():
            serve = import_serve()
            if self.owns_serve:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
            if self.started_ray:
                ray.shutdown()


def replica_error() -> str:
    """The last line of the error a replica's constructor raised (Serve keeps it in the deployment's status), e.g.
    ``ValueError: max_model_len=100000 is larger than ...``; empty when there is none."""
    try:
        deployment = import_serve().status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
    except Exception:  # noqa: BLE001 - no status to read: the caller's own message stands
        return ""
    lines = [line.strip() for line in deployment.message.splitlines() if line.strip()]
    return f"(a replica failed: {lines[-1]})" if lines else ""


def serve_running() -> bool:
    """Whether the Ray cluster runs a Serve instance already (its controller is a named actor)."""
    import ray

    return {"namespace": "serve", "name": "SERVE_CONTROLLER_ACTOR"} in ray.util.list_named_actors(all_namespaces=True)


def check_capacity(num_replicas: int, replica_options: dict, local: bool) -> None:
    """Fail before Serve waits forever: the replicas' CPUs (GPUs) against this machine (a local Ray) or the
    cluster's total."""
    import ray

    from pagedllm.engine.mp_executor import available_cores

    per = {"CPU": replica_options.get("num_cpus", 1), "GPU": replica_options.get("num_gpus", 0)}
    if local:
        import torch

        have = {"CPU": available_cores(), "GPU": torch.cuda.device_count()}
    else:
        have = {kind: ray.cluster_resources().get(kind, 0) for kind in per}
    for kind, each in per.items():
        if num_replicas * each > have[kind]:
            where = "this machine has" if local else "the Ray cluster has"
            raise ValueError(f"data_parallel_size={num_replicas} needs {num_replicas * each:g} {kind}s ({each:g} per "
                             f"replica, at least one per tensor-parallel rank); {where} {have[kind]:g}: use "
                             f"data_parallel_size <= {int(have[kind] // each)}, or add nodes to the Ray cluster "
                             "(RAY_ADDRESS)")


def run_data_parallel(args, model: str, chat_template: str | None) -> int:
    """``pagedllm serve MODEL --data-parallel-size N``: the replicas on Ray Serve until SIGINT/SIGTERM, then
    Serve and the Ray it started stopped. Bad flags exit 2 before anything starts."""
    from pagedllm.entrypoints.cli_args import engine_kwargs
    from pagedllm.entrypoints.openai.api_server import also_models, cors_settings, ready_message

    kwargs = engine_kwargs(args, model=model)
    kwargs.pop("model")
    app_kwargs = dict(api_key=args.api_key, chat_template=chat_template, max_body_bytes=args.max_request_body_bytes,
                      lora_modules=args.lora_modules, request_timeout=args.request_timeout,
                      cors=cors_settings(args.allowed_origins, args.allowed_credentials, args.allowed_methods,
                                         args.allowed_headers),
                      tool_call_parser=args.tool_call_parser if args.enable_auto_tool_choice else None)
    try:
        if args.lora_modules and not kwargs.get("enable_lora"):
            raise ValueError("--lora-modules needs --enable-lora")
        config = EngineConfig.from_kwargs(model=model, **kwargs)
        if not os.environ.get("RAY_ADDRESS"):  # the replicas run here: an unknown model fails now, in one line
            from pagedllm.loader import resolve_model

            resolve_model(config.model, revision=config.revision, download_dir=config.download_dir)
        options = replica_actor_options(config, _cpus_per_replica(args))
        app = build_openai_app(model, num_replicas=args.data_parallel_size, also=also_models(args),
                               app_kwargs=app_kwargs, ray_actor_options=options, **kwargs)
        run = ServeRun(app, args.data_parallel_size, options, host=args.host, port=args.port,
                       ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile)
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as exc:
        # RuntimeError: Serve's "deploying the application failed" (a replica's engine did not start)
        print(f"pagedllm serve: cannot start: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        print(f"\n{args.data_parallel_size} replicas on Ray Serve, each one engine; the {REPLICA_HEADER} response "
              "header names the one that answered", flush=True)
        print(ready_message(args.host, args.port, args.api_key, run.served(),
                            "https" if args.ssl_certfile else "http"), flush=True)
        stop.wait()
    finally:
        run.shutdown()
    return 0


def _cpus_per_replica(args) -> int | None:
    """A local Ray (no RAY_ADDRESS): this machine's cores shared out over the replicas; a cluster: None (one CPU
    per rank: nodes differ, ``build_openai_app(ray_actor_options=...)`` sizes them)."""
    if os.environ.get("RAY_ADDRESS"):
        return None
    from pagedllm.engine.mp_executor import available_cores

    return max(1, available_cores() // args.data_parallel_size)
