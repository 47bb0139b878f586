"""Beyond one GPU: the server as a Ray Serve application, a replica per GPU, requests routed by session id.

Specification (``ppllava-hermes serve --ray``; extra ``[ray]``: Ray Serve).

* A **replica** is one whole server of :mod:`.app` (its own model, worker thread, scheduler, sessions and
  limits: ``max_sessions`` is per replica), deployed as a Ray Serve ingress deployment whose FastAPI app is
  built in the replica when it starts. ``replicas`` of them; with ``gpus_per_replica`` > 0 each holds that
  many GPUs (Ray sets ``CUDA_VISIBLE_DEVICES``; the model goes to ``cuda``), else ``cpus_per_replica`` CPUs.
  Defaults: on a cluster with GPUs one GPU per replica and a replica per GPU; without GPUs one replica.
  Asking for more GPUs or CPUs than the cluster has is a ``ValueError`` before anything is deployed.
* One front door: Ray Serve's HTTP proxy on ``host:port`` (every endpoint of :mod:`.app`, server-sent
  events and WebSockets included). Bearer token, allow-lists and limits are each replica's, the same config.
* **Session ids name their replica**: a replica mints ``REPLICA-HEX``, REPLICA being its Ray Serve replica
  id (``serve.get_replica_context().replica_id.unique_id``); the creating response carries it, so the id is
  all a client needs to keep.
* **Routing** (:class:`SessionRouter`, a custom Ray Serve request router, ``RequestRouterConfig``): a request
  with the header ``x-session-id: ID`` (Ray Serve's session-id header, which the proxy copies into the
  request's routing metadata; the ``RAY_SERVE_SESSION_ID_HEADER_KEY`` environment variable renames it
  cluster-wide) goes to the replica that ID names and only there: if that replica is at
  ``max_ongoing_requests`` the request waits, it never falls back to another replica. An ID whose replica
  no longer runs (or that names none) goes to any replica, which answers the JSON 404 of an unknown
  session. A request without the header (creating a session, ``/health``, ``/metrics``, a one-shot
  ``/v1/chat/completions`` on a file) goes round robin over the replicas, those reporting room for another
  session first (each replica reports ``{"sessions", "room"}`` through ``record_routing_stats``).
* Every request for a session must carry the header: ``/sessions/{id}...``, its WebSocket and
  ``/v1/chat/completions`` with ``"session"`` are refused with 400 and a JSON reason without it (the path
  does not reach the router, so without the header a request could land on a replica that does not hold
  the session). Every HTTP response names its replica (``X-Replica``), as do ``/health`` and ``/metrics``.
* **Not shared between replicas**: a session and its memory live in the process of the replica that
  created it (gone if that replica dies); ``GET /sessions``, ``/metrics`` and ``/health`` answer for the
  replica a request reaches. With ``snapshot_dir`` every replica writes its sessions' snapshots there
  (ids never clash); a snapshot moves a session to a server started with ``serve --restore DIR``
  (``--restore`` itself is refused with ``--ray``: a restored id would name a replica that is gone).

Why not Ray Serve's model multiplexing (``serve_multiplexed_model_id``): it *prefers* a replica that has the
model id loaded and otherwise (that replica busy, or not yet reported to the router) sends the request to a
replica with the fewest models to load it there, which suits weights anyone can load, not a live session's
memory. The request-router API (Ray docs, "Use Custom Algorithm for Request Routing";
``RequestRouter.choose_replicas`` returns ranks of replicas, the first the most preferred, and Serve tries
only the replicas returned) lets the owner be the only choice.

Ray's own machinery does the rest (placement on GPUs and nodes, replica restarts, the HTTP proxy); nothing
here talks to other machines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from .app import ServeConfig

__all__ = ["SESSION_HEADER", "PoolingSpec", "ReplicaServer", "SessionRouter", "application", "owner_of", "start"]

# Ray Serve's session-stickiness header (the proxy puts its value in RequestMetadata.session_id).
SESSION_HEADER = os.environ.get("RAY_SERVE_SESSION_ID_HEADER_KEY", "x-session-id")
APP_NAME = "ppllava-hermes"


def owner_of(session_id: str) -> str:
    """The replica id a session id names (``REPLICA-HEX`` -> ``REPLICA``; an id without ``-``: itself)."""
    return session_id.rsplit("-", 1)[0]


class SessionRouter(RequestRouter):
    """A request naming a session goes to the replica that holds it; others round robin (see the module)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._turn = 0

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is None:  # no request to place (the router's bookkeeping): any replica
            return [candidate_replicas]
        pending_request.routing_context.should_backoff = True  # a busy owner: wait and retry, no busy loop
        sid = pending_request.metadata.session_id
        if sid:
            owner = owner_of(sid)
            held = [r for r in candidate_replicas if r.replica_id.unique_id == owner]
            return [held] if held else [candidate_replicas]  # gone: any replica answers 404
        ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        roomy = [r for r in ordered if (r.routing_stats or {}).get("room", 1) > 0]
        full = [r for r in ordered if r not in roomy]  # they answer 429 to a new session, not to the rest
        turn = getattr(self, "_turn", 0)
        self._turn = turn + 1
        group = roomy or full
        start = turn % len(group)
        ordered = group[start:] + group[:start] + (full if roomy else [])
        return [[r] for r in ordered]


@dataclass(frozen=True)
class PoolingSpec:
    """The ``--pool`` stage each replica builds for its own model (picklable, unlike the stage)."""

    mode: str
    kernel: tuple[int, int, int] = (2, 3, 3)
    standing_query: str | None = None
    relevance: str | None = None  # the relevance model's spec (``--pool prompt``)

    def build(self, adapter: Any) -> Any:
        from ..specs import load_relevance
        from ..streaming.pooling_stage import make_pooling_stage

        scorer = None
        if self.mode == "prompt":
            scorer = load_relevance(self.relevance, frames_per_token=adapter.frames_per_group)
        return make_pooling_stage(adapter, mode=self.mode, kernel=self.kernel,
                                  standing_query=self.standing_query, scorer=scorer)


@serve.deployment(name="ppllava-hermes")
@serve.ingress()
class ReplicaServer:
    """One replica: a whole server (:func:`.app.create_app`) named by its Ray Serve replica id."""

    def __init__(self, config: ServeConfig, device: str | None = None, pooling: PoolingSpec | None = None) -> None:
        import ray

        from ..specs import load_model
        from .app import create_app

        # names of their own: the ingress wrapper has attributes of its own (``app`` among them)
        self.hermes_replica = serve.get_replica_context().replica_id.unique_id
        config = replace(config, replica_id=self.hermes_replica, session_header=SESSION_HEADER)
        if device is None and ray.get_gpu_ids():
            device = "cuda"  # the replica's own GPU (Ray sets CUDA_VISIBLE_DEVICES)
        adapter = load_model(config.model, device=device)
        self.hermes_app = create_app(config, adapter=adapter, pooling=pooling.build(adapter) if pooling else None)
        self.hermes_server = self.hermes_app.state.server

    def __serve_build_asgi_app__(self):
        return self.hermes_app

    def record_routing_stats(self) -> dict[str, int]:
        n = len(self.hermes_server.sessions)
        return {"sessions": n, "room": self.hermes_server.config.max_sessions - n}

    def check_health(self) -> None:
        if not self.hermes_server.scheduler.alive:
            raise RuntimeError(f"replica {self.hermes_replica}: the model's worker thread stopped")


def _resources(replicas: int | None, gpus_per_replica: float | None,
               cpus_per_replica: float) -> tuple[int, float, float]:
    """``(replicas, gpus, cpus)`` per replica for this cluster (``ValueError`` if it cannot hold them)."""
    import ray

    total = ray.cluster_resources()
    gpus_total, cpus_total = total.get("GPU", 0.0), total.get("CPU", 0.0)
    gpus = gpus_per_replica if gpus_per_replica is not None else (1.0 if gpus_total >= 1 else 0.0)
    if replicas is None:
        replicas = max(1, int(gpus_total // gpus)) if gpus > 0 else 1
    if replicas < 1:
        raise ValueError(f"serve --ray: --replicas must be >= 1, got {replicas}")
    if gpus < 0 or cpus_per_replica < 0:
        raise ValueError("serve --ray: GPUs and CPUs per replica must be >= 0")
    if replicas * gpus > gpus_total:
        raise ValueError(f"serve --ray: {replicas} replicas x {gpus:g} GPUs, but the Ray cluster has "
                         f"{gpus_total:g} GPUs")
    if replicas * cpus_per_replica > cpus_total:
        raise ValueError(f"serve --ray: {replicas} replicas x {cpus_per_replica:g} CPUs, but the Ray cluster has "
                         f"{cpus_total:g} CPUs (--cpus-per-replica)")
    return replicas, gpus, cpus_per_replica


def application(config: ServeConfig, *, replicas: int, gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0,
                device: str | None = None, pooling: PoolingSpec | None = None, max_ongoing_requests: int = 1024):
    """The Ray Serve application (``serve.run`` it): ``replicas`` replicas routed by :class:`SessionRouter`.

    ``max_ongoing_requests`` is high because alert streams and WebSockets hold a request open for as long
    as a client listens; the server's own bounds (sessions, queues, sizes) are what limit the work.
    """
    if config.session_header is not None or config.replica_id is not None:
        raise ValueError("serve --ray: replica_id and session_header are set per replica, not in the config")
    deployment = ReplicaServer.options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        max_ongoing_requests=max_ongoing_requests,
        request_router_config=RequestRouterConfig(request_router_class=SessionRouter,
                                                  request_routing_stats_period_s=2.0),
    )
    return deployment.bind(config, device, pooling)


def start(config: ServeConfig, *, replicas: int | None = None, gpus_per_replica: float | None = None,
          cpus_per_replica: float = 1.0, device: str | None = None, pooling: PoolingSpec | None = None,
          host: str = "127.0.0.1", port: int = 8000, address: str | None = None) -> tuple[str, int]:
    """Deploy on Ray (started here, or joined at ``address``) and return ``(url, replicas)`` once every
    replica is ready; ``serve.shutdown()`` takes it down."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    replicas, gpus, cpus = _resources(replicas, gpus_per_replica, cpus_per_replica)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(config, replicas=replicas, gpus_per_replica=gpus, cpus_per_replica=cpus, device=device,
                          pooling=pooling), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}", replicas
