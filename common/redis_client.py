"""``REDIS_URL`` -> a Redis client: one server, a Redis Cluster or a Sentinel-managed primary.

Every component that talks to Redis (the feature reader and writer, the response cache, the
events log and consumer, the exposure log, the precomputed lists, the jobs) builds its client
here, so the three deployment shapes are one setting, not a code path per caller:

=============================================================  ==========================================
``redis://[user:password@]host:port/db``                        one server (``rediss://``: TLS)
``redis+cluster://[user:password@]host:port,host:port,...``     Redis Cluster; the nodes are seeds, the
                                                                client learns the slot map from them
                                                                (``rediss+cluster://``: TLS; db 0 only)
``redis+sentinel://[user:password@]host:port,.../master/db``    the primary that Sentinel names
                                                                ``master`` (``rediss+sentinel://``);
                                                                the password is the data nodes'
=============================================================  ==========================================

What makes the cluster work is the key layout, not the client: keys that one command, script or
transaction touches together share a hash tag (:mod:`common.realtime`, the item snapshot's
``{<project>:fsreader:items}``), and what spans users (Feast's rows, one hash per entity) is read
and written with non-transactional pipelines, which the cluster client splits by node.

``fail_fast`` clients (the gateway's) make no retries of their own: a slow or dead Redis costs
one timeout, then the caller's circuit breaker stops calling. On a cluster they still follow
``MOVED`` / ``ASK`` and refresh the slot map once after a connection error, so a failover costs
the requests in flight, not every request until a restart. redis-py is imported when a client is
built, not at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

Kind = Literal["standalone", "cluster", "sentinel"]
SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("standalone", False), "rediss": ("standalone", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
}
DEFAULT_PORT = {"standalone": 6379, "cluster": 6379, "sentinel": 26379}
# A fail-fast cluster client: one more attempt after a connection error or a moved slot, with
# the slot map refreshed in between (redis-py's default is 3, each up to a socket timeout).
FAIL_FAST_CLUSTER_ATTEMPTS = 1


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a ``REDIS_URL`` names (see the module docstring)."""

    kind: Kind
    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    master: str | None = None  # sentinel: the monitored primary's name

    @property
    def is_cluster(self) -> bool:
        return self.kind == "cluster"

    def redacted(self) -> str:
        """The URL without its password (for logs and errors)."""
        scheme = next(s for s, (k, tls) in SCHEMES.items() if k == self.kind and tls == self.ssl)
        auth = f"{self.username or ''}:***@" if self.password else ""
        hosts = ",".join(f"{h}:{p}" for h, p in self.nodes)
        path = f"/{self.master}/{self.db}" if self.kind == "sentinel" else ("" if self.is_cluster else f"/{self.db}")
        return f"{scheme}://{auth}{hosts}{path}"


def parse_redis_url(url: str) -> RedisTarget:
    """:class:`RedisTarget` of ``url``; :class:`ValueError` naming REDIS_URL and what is wrong."""
    if not url or "://" not in url:
        raise ValueError(f"REDIS_URL must look like redis://host:port/db, redis+cluster://h1:p1,h2:p2 "
                         f"or redis+sentinel://h1:p1/master/db; got {url!r}")
    scheme, rest = url.split("://", 1)
    if scheme.lower() not in SCHEMES:
        raise ValueError(f"REDIS_URL scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    kind, tls = SCHEMES[scheme.lower()]
    # urlsplit does not take several hosts: split the authority ourselves
    authority, _, tail = rest.partition("/")
    tail, _, query = tail.partition("?")
    if "?" in authority:
        authority, _, query = authority.partition("?")
    username = password = None
    if "@" in authority:
        userinfo, authority = authority.rsplit("@", 1)
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
        if not sep:  # redis://password@host is not a thing; redis://user@host has no password
            username = unquote(user) or None
    nodes = []
    for part in filter(None, authority.split(",")):
        u = urlsplit("//" + part)
        try:
            port = u.port or DEFAULT_PORT[kind]
        except ValueError:
            raise ValueError(f"REDIS_URL: bad port in {part!r}") from None
        if not u.hostname:
            raise ValueError(f"REDIS_URL: no host in {part!r}")
        nodes.append((u.hostname, port))
    if not nodes:
        raise ValueError(f"REDIS_URL names no host: {url!r}")
    segments = [s for s in tail.split("/") if s]
    master = None
    if kind == "sentinel":
        if not segments:
            raise ValueError("REDIS_URL: a redis+sentinel:// URL names the primary: redis+sentinel://h1:p1,h2:p2/<master>/<db>")
        master, segments = unquote(segments[0]), segments[1:]
    elif len(nodes) > 1 and kind == "standalone":
        raise ValueError("REDIS_URL: several hosts need redis+cluster:// (or redis+sentinel://)")
    db_text = segments[0] if segments else parse_qs(query).get("db", ["0"])[0]
    try:
        db = int(db_text)
    except ValueError:
        raise ValueError(f"REDIS_URL: the database must be a number, got {db_text!r}") from None
    if kind == "cluster" and db != 0:
        raise ValueError(f"REDIS_URL: a Redis Cluster has database 0 only, got /{db}")
    return RedisTarget(kind, tuple(nodes), db, username, password, tls, master)


def _common(t: RedisTarget, socket_timeout: float | None, connect_timeout: float | None) -> dict[str, Any]:
    kw: dict[str, Any] = {"socket_timeout": socket_timeout,
                          "socket_connect_timeout": connect_timeout if connect_timeout is not None else socket_timeout}
    if t.username:
        kw["username"] = t.username
    if t.password:
        kw["password"] = t.password
    if t.ssl:
        kw["ssl"] = True
    return kw


def sync_client(url: str, *, socket_timeout: float | None = None, connect_timeout: float | None = None,
                fail_fast: bool = False, **extra: Any):
    """A ``redis.Redis`` or ``redis.cluster.RedisCluster`` (same command API) for ``url``.
    ``extra``: further redis-py keyword arguments (``max_connections``, ``decode_responses``)."""
    import redis

    t = parse_redis_url(url)
    kw = {**_common(t, socket_timeout, connect_timeout), **extra}
    if fail_fast:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kw.update(retry=Retry(NoBackoff(), 0), health_check_interval=0)
    if t.kind == "cluster":
        from redis.cluster import ClusterNode, RedisCluster

        if fail_fast:
            kw["cluster_error_retry_attempts"] = FAIL_FAST_CLUSTER_ATTEMPTS
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in t.nodes], **kw)
    if t.kind == "sentinel":
        from redis.sentinel import Sentinel

        sentinel_kw = {k: kw[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kw}
        return Sentinel(list(t.nodes), sentinel_kwargs=sentinel_kw).master_for(t.master, db=t.db, **kw)
    host, port = t.nodes[0]
    return redis.Redis(host=host, port=port, db=t.db, **kw)


def async_client(url: str, *, timeout_s: float, max_connections: int, fail_fast: bool = True):
    """A ``redis.asyncio`` client (or ``RedisCluster``) for the gateway: ``timeout_s`` on
    connects and replies, at most ``max_connections`` per server, no retries (``fail_fast``)."""
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    t = parse_redis_url(url)
    kw = _common(t, timeout_s, timeout_s)
    kw["health_check_interval"] = 0
    if fail_fast:
        kw["retry"] = Retry(NoBackoff(), 0)
    if t.kind == "cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        if fail_fast:
            kw["cluster_error_retry_attempts"] = FAIL_FAST_CLUSTER_ATTEMPTS
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in t.nodes], max_connections=max_connections, **kw)
    if t.kind == "sentinel":
        from redis.asyncio.sentinel import Sentinel

        sentinel_kw = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        return Sentinel(list(t.nodes), sentinel_kwargs=sentinel_kw).master_for(
            t.master, db=t.db, max_connections=max_connections, **kw)
    host, port = t.nodes[0]
    return aredis.Redis(host=host, port=port, db=t.db, max_connections=max_connections, **kw)


def is_cluster(client) -> bool:
    """Whether ``client`` (sync or async) talks to a Redis Cluster."""
    return type(client).__name__ == "RedisCluster"


def node_client_for(client, key: str):
    """A plain ``redis.Redis`` on the connections of the server that holds ``key`` (the client's
    own for one server or Sentinel; the slot owner's for a cluster): for readers that change
    response callbacks or read a stream page by page without a per-command slot lookup."""
    import redis

    if is_cluster(client):
        node = client.get_redis_connection(client.get_node_from_key(key))
        return redis.Redis(connection_pool=node.connection_pool)
    return redis.Redis(connection_pool=client.connection_pool)


def feast_online_store(url: str) -> dict[str, Any]:
    """Feast's ``RedisOnlineStoreConfig`` fields for ``url``: ``redis_type`` (``redis``,
    ``redis_cluster``, ``redis_sentinel``), ``connection_string`` in Feast's own format
    (``host:port[,host:port],db=N,password=...,ssl=true``) and, for Sentinel, ``sentinel_master``."""
    t = parse_redis_url(url)
    parts = [f"{h}:{p}" for h, p in t.nodes]
    if t.kind != "cluster":
        parts.append(f"db={t.db}")
    else:
        # Feast's cluster client refuses to start while a slot is unserved (mid-resharding);
        # the serving reads tolerate it, so the online store's writes should too
        parts.append("skip_full_coverage_check=true")
    if t.username and t.password:
        parts.append(f"username={t.username}")
    if t.password:
        parts.append(f"password={t.password}")
    if t.ssl:
        parts.append("ssl=true")
    out: dict[str, Any] = {"redis_type": {"standalone": "redis", "cluster": "redis_cluster",
                                          "sentinel": "redis_sentinel"}[t.kind],
                           "connection_string": ",".join(parts)}
    if t.kind == "sentinel":
        out["sentinel_master"] = t.master
    return out


class PipelinedScript:
    """A Lua script queued in non-transactional pipelines, on one server or a cluster.

    redis-py's ``Script`` objects load themselves into a plain pipeline at ``execute()``, but a
    cluster pipeline refuses ``evalsha`` outright. Here, on a cluster, the script is loaded on
    every primary up front and queued as a raw ``EVALSHA`` (routed by its first key's slot, so
    each call's keys must share a hash tag); :meth:`run` loads it again and rebuilds the pipeline
    once when a node answers ``NOSCRIPT`` (a failover, a restarted node, ``SCRIPT FLUSH``), which
    is safe for scripts whose effects are idempotent per call, as every script here is.
    """

    def __init__(self, client, source: str) -> None:
        self.client = client
        self.source = source
        self.script = client.register_script(source)
        self.cluster = is_cluster(client)
        if self.cluster:
            client.script_load(source)

    def queue(self, pipe, keys, args) -> None:
        if self.cluster:
            pipe.execute_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
        else:
            self.script(keys=keys, args=args, client=pipe)

    def run(self, build) -> list:
        """``build(pipe)`` queues the commands (this script's calls through :meth:`queue`); the
        replies of the executed pipeline."""
        from redis.exceptions import NoScriptError

        for attempt in (0, 1):
            with self.client.pipeline(transaction=False) as pipe:
                build(pipe)
                try:
                    return pipe.execute()
                except NoScriptError:
                    if not self.cluster or attempt:
                        raise
            self.client.script_load(self.source)
        raise AssertionError("unreachable")
