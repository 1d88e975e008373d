"""The local stack without Docker: ``python -m deploy.local up|down|demo|status`` (``make up`` ...).

``up`` starts retrieval, ranking and the gateway as background processes with logs and pid
files in ``run/``, and waits (with a deadline) until the gateway's ``/readyz`` says both gRPC
services are SERVING; on failure it prints the tail of each log and stops what it started.
With ``GATEWAY_MODE=inprocess`` it starts the gateway alone (retrieval and ranking run inside its
workers) and waits until its ``/readyz`` reports the in-process stages SERVING.
``down`` stops exactly the processes named by the pid files (SIGTERM, wait, SIGKILL as a last
resort), after checking that each pid still runs the command it was started with.

Redis: ``REDIS_URL`` when set; otherwise a private ``redis-server`` on a free port (when the
binary exists; tracked in ``run/`` and stopped by ``down``) into which the features are
materialised; otherwise Feast's embedded SQLite online store and the gateway's in-process cache.

:class:`Stack` is the one process manager of the repo: besides ``make up`` the gateway and
service tests, the test Redis and the benchmarks (``benchmarks.harness``, ``benchmarks.e2e``)
use it to run private processes on free ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from common.net import free_port, port_in_use
from common.settings import REPO_ROOT

RUN_DIR = REPO_ROOT / "run"
STACK_FILE = "stack.json"
STOP_ORDER = ("gateway", "events", "ranking", "retrieval", "redis")  # front to back
RDB_AOF_DIR = "appendonlydir-online-rdb"  # the AOF of a Redis started from a saved store (up --online-rdb)

console = Console()
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Local stack: up, down, demo, status.")


class StackError(RuntimeError):
    """The stack could not be started (message says what and where to look)."""


# -- ports (free_port / port_in_use live in common.net; imported here, also for the tests) ------
@dataclass(frozen=True)
class Ports:
    gateway: int
    retrieval: int
    ranking: int
    retrieval_metrics: int
    ranking_metrics: int
    events_metrics: int

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in range(6)))

    @classmethod
    def from_settings(cls) -> Ports:
        """The configured ports (GATEWAY_PORT, RETRIEVAL_PORT, ...: defaults 8000/50051/50052)."""
        from services.events.settings import EventsSettings
        from services.ranking.settings import RankingSettings
        from services.retrieval.settings import RetrievalSettings

        g, r, k, e = gateway_settings(), RetrievalSettings(), RankingSettings(), EventsSettings()
        return cls(g.port, r.port, k.port, r.metrics_port, k.metrics_port, e.metrics_port)

    def check_free(self, gateway_only: bool = False, events: bool = True) -> None:
        names = {"gateway": "GATEWAY_PORT", "retrieval": "RETRIEVAL_PORT", "ranking": "RANKING_PORT",
                 "retrieval_metrics": "RETRIEVAL_METRICS_PORT", "ranking_metrics": "RANKING_METRICS_PORT"}
        if gateway_only:  # GATEWAY_MODE=inprocess: the services' ports are not used
            names = {"gateway": names["gateway"]}
        if events:
            names["events_metrics"] = "EVENTS_METRICS_PORT"
        taken = [f"port {getattr(self, n)} ({var}) is already in use" for n, var in names.items()
                 if port_in_use(getattr(self, n))]
        if taken:
            raise StackError("; ".join(taken) + ". Stop whatever listens there (`make down` if it is an earlier "
                             "stack) or choose other ports with those variables.")


# -- processes ---------------------------------------------------------------------------------
def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (field 22 of /proc/<pid>/stat): tells a recycled pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); treat it as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Stack:
    """Background processes with ``<run_dir>/<name>.pid`` and ``<name>.log``."""

    run_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def log_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"

    def pid_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, *,
              inherit_env: bool = True) -> subprocess.Popen:
        """Start ``argv`` as ``name``; ``env`` is added to this process's environment, or with
        ``inherit_env=False`` is the whole environment (the benchmarks strip service variables)."""
        if self.pid_path(name).exists() and self.pid(name) is not None:
            raise StackError(f"{name} is already running (pid {self.pid(name)}, {self.pid_path(name)}): "
                             "run `make down` first")
        log = open(self.log_path(name), "wb")  # noqa: SIM115 - the child owns it; a fresh log per start
        try:
            proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env={**(os.environ if inherit_env else {}), **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,  # Ctrl-C in the shell does not reach it
            )
        finally:
            log.close()
        self.pid_path(name).write_text(json.dumps({"pid": proc.pid, "argv": argv, "start": _start_time(proc.pid)}))
        self.procs[name] = proc
        return proc

    def start_module(self, name: str, module: str, env: dict[str, str] | None = None, *,
                     inherit_env: bool = True) -> subprocess.Popen:
        return self.start(name, [sys.executable, "-m", module], env, inherit_env=inherit_env)

    def pid(self, name: str) -> int | None:
        """The pid from the pid file if that process still runs what we started."""
        try:
            info = json.loads(self.pid_path(name).read_text())
        except (OSError, ValueError):
            return None
        pid = int(info["pid"])
        if not _alive(pid) or _start_time(pid) != info.get("start"):
            return None
        # redis-server rewrites its title ("redis-server 127.0.0.1:6390"): compare the program name
        tokens, argv = _cmdline(pid).split(), info["argv"]
        return pid if tokens and Path(tokens[0]).name == Path(argv[0]).name else None

    def names(self) -> list[str]:
        found = {p.stem for p in self.run_dir.glob("*.pid")}
        return [n for n in STOP_ORDER if n in found] + sorted(found - set(STOP_ORDER))

    def signal(self, name: str, sig: int) -> None:
        pid = self.pid(name)
        if pid is None:
            raise StackError(f"{name} is not running")
        os.kill(pid, sig)

    def stop(self, name: str, timeout: float = 10.0) -> str:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns what happened."""
        pid = self.pid(name)
        proc = self.procs.pop(name, None)
        outcome = "not running"
        if pid is not None:
            try:
                os.kill(pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                os.kill(pid, signal.SIGTERM)
                outcome = "stopped"
                deadline = time.monotonic() + timeout
                while _alive(pid) and time.monotonic() < deadline:
                    if proc is not None and proc.poll() is not None:
                        break
                    time.sleep(0.05)
                if _alive(pid) and (proc is None or proc.poll() is None):
                    # the group it leads (start_new_session): a gateway's uvicorn workers too,
                    # which would outlive a killed parent and keep its port
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                    os.kill(pid, signal.SIGKILL)
                    outcome = f"killed (no exit {timeout:.0f}s after SIGTERM)"
            except ProcessLookupError:
                pass
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.pid_path(name).unlink(missing_ok=True)
        return outcome

    def stop_all(self, timeout: float = 10.0) -> dict[str, str]:
        return {name: self.stop(name, timeout) for name in self.names()}

    def check_alive(self, names: list[str]) -> None:
        for name in names:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise StackError(f"{name} exited with code {proc.returncode}; last lines of "
                                 f"{self.log_path(name)}:\n{log_tail(self.log_path(name))}")


# -- the recsys stack --------------------------------------------------------------------------
@dataclass
class StackInfo:
    gateway_url: str
    retrieval_addr: str
    ranking_addr: str
    redis_url: str | None
    redis_mode: str  # "given", "private", "embedded"
    run_dir: str
    gateway_mode: str = "grpc"  # GATEWAY_MODE: "inprocess" = no retrieval / ranking processes
    events_url: str | None = None  # the events consumer's health / metrics (None: no Redis, no consumer)

    def save(self, run_dir: Path) -> None:
        (Path(run_dir) / STACK_FILE).write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> StackInfo:
        path = Path(run_dir) / STACK_FILE
        if not path.is_file():
            raise StackError(f"no {path}: start the stack with `make up`")
        return cls(**json.loads(path.read_text()))


def start_redis(stack: Stack, port: int | None = None, *, appendonly: bool = False, rdb: Path | None = None,
                save_as: Path | None = None, timeout: float = 10.0) -> str:
    """A private ``redis-server`` on 127.0.0.1; ``appendonly``: with its AOF (``appendfsync
    everysec``) in the stack's folder, as the acknowledged events need (``make up``); ``rdb``: an
    online store saved by ``online-store`` (the 1M-item catalog's ~1 GB of Feast rows), copied into
    the stack's folder and loaded at start instead of materialising again; ``save_as``: an empty
    Redis whose ``SAVE`` writes that file (``online-store``)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server is not on PATH")
    port = port or free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--dir", str(save_as.parent), "--dbfilename", save_as.name] if save_as is not None else [
        "--dir", str(stack.run_dir)]
    from_rdb = False
    if rdb is not None:
        rdb = Path(rdb)
        if not rdb.is_file():
            raise StackError(f"no saved online store at {rdb}: build it with `make artifacts-scale`")
        # an AOF of its own (never the `make up` stack's), continued across restarts unless the
        # saved store was rebuilt since: events acknowledged by an earlier run are kept
        aof = stack.run_dir / RDB_AOF_DIR
        manifests = list(aof.glob("*.manifest")) if aof.is_dir() else []
        argv += ["--appenddirname", RDB_AOF_DIR]
        if manifests and max(m.stat().st_mtime for m in manifests) > rdb.stat().st_mtime:
            argv += ["--appendonly", "yes"]
        else:
            shutil.rmtree(aof, ignore_errors=True)
            shutil.copyfile(rdb, stack.run_dir / "online.rdb")
            # Redis loads an RDB only with the AOF off; the AOF is switched on once the data is in
            argv += ["--dbfilename", "online.rdb", "--appendonly", "no"]
            from_rdb = True
    else:
        argv += ["--appendonly", "yes" if appendonly else "no"]
    stack.start("redis", argv)
    deadline = time.monotonic() + timeout
    while not port_in_use(port):
        stack.check_alive(["redis"])
        if time.monotonic() > deadline:
            raise StackError(f"redis-server did not listen on {port} within {timeout:.0f}s: {stack.log_path('redis')}")
        time.sleep(0.05)
    url = f"redis://127.0.0.1:{port}/0"
    if rdb is not None:
        wait_redis_loaded(stack, url, timeout, appendonly=appendonly and from_rdb)
    return url


def wait_redis_loaded(stack: Stack, url: str, timeout: float, *, appendonly: bool) -> None:
    """Until the RDB is loaded (``INFO persistence`` loading:0); with ``appendonly``, switch the
    AOF on and wait for its first rewrite, so that what is acknowledged afterwards is on disk."""
    import redis

    deadline = time.monotonic() + timeout
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        enabled = False
        while True:
            stack.check_alive(["redis"])
            try:
                info = client.info("persistence")
                if not info["loading"]:
                    if not appendonly:
                        return
                    if not enabled:
                        client.config_set("appendonly", "yes")
                        enabled = True
                    elif info["aof_enabled"] and not info["aof_rewrite_in_progress"] \
                            and not info.get("aof_rewrite_scheduled", 0):
                        return
            except redis.exceptions.BusyLoadingError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"redis-server at {url} did not load its data within {timeout:.0f}s: "
                                 f"{stack.log_path('redis')}")
            time.sleep(0.1)


CLUSTER_NODE = "redis-cluster-{}"  # Stack names of start_redis_cluster's nodes


def start_redis_cluster(stack: Stack, nodes: int = 3, *, appendonly: bool = False, timeout: float = 30.0) -> str:
    """A private Redis Cluster of ``nodes`` primaries (no replicas) on free 127.0.0.1 ports, each
    ``redis-server --cluster-enabled yes`` in a folder of its own under the stack's, the slots
    assigned by ``redis-cli --cluster create``; returns its ``redis+cluster://`` URL once every
    node reports ``cluster_state:ok``. :func:`stop_redis_cluster` stops the nodes by PID."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise StackError("redis-server and redis-cli must be on PATH for a Redis Cluster")
    ports = []
    for i in range(nodes):
        port = free_port()
        folder = stack.run_dir / f"cluster-{i}"
        shutil.rmtree(folder, ignore_errors=True)  # a node keeps its slot map in nodes.conf: start clean
        folder.mkdir(parents=True)
        stack.start(CLUSTER_NODE.format(i), [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder),
            # the bus port is its own free port: the default (port + 10000) may be taken or past 65535
            "--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000",
            "--appendonly", "yes" if appendonly else "no"])
        ports.append(port)
    deadline = time.monotonic() + timeout
    names = [CLUSTER_NODE.format(i) for i in range(nodes)]
    while not all(port_in_use(p) for p in ports):
        stack.check_alive(names)
        if time.monotonic() > deadline:
            raise StackError(f"Redis Cluster nodes did not listen within {timeout:.0f}s: {stack.run_dir}")
        time.sleep(0.05)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    made = subprocess.run([cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                          capture_output=True, text=True, timeout=timeout)
    if made.returncode != 0:
        raise StackError(f"redis-cli --cluster create failed: {made.stdout[-2000:]}{made.stderr[-2000:]}")
    import redis

    for p in ports:  # every node must know every slot before a client trusts its map
        with redis.Redis(port=p, socket_timeout=5) as node:
            while node.cluster("info").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise StackError(f"Redis Cluster node {p} not cluster_state:ok within {timeout:.0f}s")
                time.sleep(0.05)
    return "redis+cluster://" + ",".join(addrs)


def stop_redis_cluster(stack: Stack, nodes: int = 3) -> None:
    for i in range(nodes):
        stack.stop(CLUSTER_NODE.format(i))


def materialize(redis_url: str, log_path: Path) -> None:
    """Copy the offline features into Redis (``python -m feature_store materialize``)."""
    with open(log_path, "ab") as log:
        done = subprocess.run([sys.executable, "-m", "feature_store", "materialize"], cwd=REPO_ROOT,
                              env={**os.environ, "REDIS_URL": redis_url}, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=600)
    if done.returncode != 0:
        raise StackError(f"materialising features into {redis_url} failed; see {log_path}:\n{log_tail(log_path)}")


def service_env(ports: Ports, redis_url: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        "RETRIEVAL_PORT": str(ports.retrieval), "RETRIEVAL_METRICS_PORT": str(ports.retrieval_metrics),
        "RANKING_PORT": str(ports.ranking), "RANKING_METRICS_PORT": str(ports.ranking_metrics),
        "GATEWAY_PORT": str(ports.gateway), "EVENTS_METRICS_PORT": str(ports.events_metrics),
        "GATEWAY_RETRIEVAL_ADDR": f"127.0.0.1:{ports.retrieval}",
        "GATEWAY_RANKING_ADDR": f"127.0.0.1:{ports.ranking}",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra or {})
    return env


def wait_ready(stack: Stack, url: str, names: list[str], timeout: float) -> dict:
    """Poll ``url`` (``/readyz``) until 200; fail early when a process dies."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=2.0) as client:
        while True:
            stack.check_alive(names)
            try:
                r = client.get(url)
                if r.status_code == 200:
                    return r.json()
                last = f"{r.status_code} {r.text}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n} ({stack.log_path(n)}):\n{log_tail(stack.log_path(n), 15)}" for n in names)
                raise StackError(f"{url} not ready after {timeout:.0f}s (last: {last})\n{tails}")
            time.sleep(0.2)


def start_services(stack: Stack, ports: Ports, redis_url: str | None, *, extra_env: dict[str, str] | None = None,
                   gateway_env: dict[str, str] | None = None, timeout: float = 180.0, mode: str = "grpc",
                   events: bool = False) -> str:
    """Start retrieval, ranking and the gateway (``mode="inprocess"``: the gateway alone, the
    pipelines in its workers) and, with ``events``, the events consumer; return the gateway URL
    once its ``/readyz`` (and the consumer's) is 200."""
    env = service_env(ports, redis_url, extra_env)
    names = ["gateway"]
    if mode != "inprocess":
        stack.start_module("retrieval", "services.retrieval", env)
        stack.start_module("ranking", "services.ranking", env)
        names = ["retrieval", "ranking", "gateway"]
    if events:
        stack.start_module("events", "services.events", env)
        names.append("events")
    stack.start_module("gateway", "services.gateway", {**env, "GATEWAY_MODE": mode, **(gateway_env or {})})
    url = f"http://127.0.0.1:{ports.gateway}"
    wait_ready(stack, f"{url}/readyz", names, timeout)
    if events:
        wait_ready(stack, f"http://127.0.0.1:{ports.events_metrics}/readyz", names, timeout)
    return url


def gateway_settings():
    """``GatewaySettings`` as the gateway will read them. Without REDIS_URL, `up` starts a private
    Redis and hands its URL to the gateway: stand in for it here, so that a setting that needs
    Redis (GATEWAY_SERVING_MODE=precomputed) is not refused before that Redis exists."""
    from services.gateway.settings import GatewaySettings

    given = {} if os.environ.get("REDIS_URL") or not shutil.which("redis-server") else {"redis_url": "redis://127.0.0.1:1/0"}
    return GatewaySettings(**given)


def gateway_mode() -> str:
    """``GATEWAY_MODE`` as the gateway will read it (an unknown value fails here, in one line)."""
    from pydantic import ValidationError


    try:
        return gateway_settings().mode
    except ValidationError as exc:
        raise StackError("; ".join(str(e["msg"]) for e in exc.errors())) from None


# -- CLI ---------------------------------------------------------------------------------------
@app.command()
def up(
    timeout: float = typer.Option(180.0, help="Seconds to wait for /readyz."),
    online_rdb: Annotated[Path | None, typer.Option(
        help="Start the private Redis from this saved online store (`online-store --rdb`) instead of "
             "materialising (make up-scale); ignored when REDIS_URL is set.")] = None,
    redis_cluster: Annotated[bool, typer.Option(
        "--redis-cluster", help="Start a private 3-node Redis Cluster (AOF on) instead of one redis-server, and "
                                "materialise into it (make up-cluster); ignored when REDIS_URL is set.")] = False,
) -> None:
    """Start retrieval, ranking and the gateway in the background (GATEWAY_MODE=inprocess: the
    gateway alone); wait until ready."""
    stack = Stack(RUN_DIR)
    running = [n for n in stack.names() if stack.pid(n) is not None]
    if running:
        info = StackInfo.load(RUN_DIR) if (RUN_DIR / STACK_FILE).is_file() else None
        wanted = {"gateway"} if info is not None and info.gateway_mode == "inprocess" else {"retrieval", "ranking", "gateway"}
        if info is not None and info.events_url:
            wanted.add("events")
        if info is not None and wanted <= set(running):
            try:  # idempotent: `make demo` twice reuses the stack
                wait_ready(stack, f"{info.gateway_url}/readyz", [], 10)
            except StackError as exc:
                console.print(f"[red]the stack in {RUN_DIR} runs but is not ready: {exc}[/red]")
                raise typer.Exit(1) from exc
            console.print(f"already up and ready: {info.gateway_url} (`make down` stops it)")
            return
        console.print(f"[red]partly running: {', '.join(running)} (pid files in {RUN_DIR}); run `make down` first[/red]")
        raise typer.Exit(1)
    for stale in stack.names():
        stack.pid_path(stale).unlink(missing_ok=True)
    try:
        mode = gateway_mode()
        ports = Ports.from_settings()
        redis_url = os.environ.get("REDIS_URL") or None
        ports.check_free(gateway_only=mode == "inprocess", events=bool(redis_url or shutil.which("redis-server")))
        if redis_url:
            redis_mode = "given"
            console.print(f"Redis: REDIS_URL={redis_url} (features are expected there: `make materialize`)")
        elif shutil.which("redis-server") and online_rdb is not None:
            redis_mode = "private"
            t = time.perf_counter()
            redis_url = start_redis(stack, appendonly=True, rdb=online_rdb, timeout=timeout)
            console.print(f"Redis: started a private redis-server at {redis_url} from {online_rdb}, or from its AOF "
                          f"in {RUN_DIR}/{RDB_AOF_DIR} when that is newer (loaded, AOF on, in {time.perf_counter() - t:.1f}s)")
        elif shutil.which("redis-server"):
            redis_mode = "private"
            if redis_cluster:
                redis_url = start_redis_cluster(stack, appendonly=True, timeout=timeout)
                console.print(f"Redis: started a private 3-node Redis Cluster at {redis_url} (each node's AOF "
                              f"in {RUN_DIR}/cluster-N/); materialising features…")
            else:
                redis_url = start_redis(stack, appendonly=True)
                console.print(f"Redis: started a private redis-server at {redis_url} (AOF in {RUN_DIR}/); "
                              "materialising features…")
            t = time.perf_counter()
            materialize(redis_url, stack.log_path("materialize"))
            console.print(f"       features materialised in {time.perf_counter() - t:.1f}s")
        else:
            redis_mode = "embedded"
            console.print("[yellow]No REDIS_URL and no redis-server binary: using Feast's embedded SQLite online "
                          "store and the gateway's in-process response cache.[/yellow]")
        if mode == "inprocess":
            console.print(f"Starting the gateway :{ports.gateway} with retrieval and ranking in-process "
                          f"(GATEWAY_MODE=inprocess; logs in {RUN_DIR}/)…")
        else:
            console.print(f"Starting retrieval :{ports.retrieval}, ranking :{ports.ranking}, gateway :{ports.gateway} "
                          f"(logs in {RUN_DIR}/)…")
        t = time.perf_counter()
        url = start_services(stack, ports, redis_url, timeout=timeout, mode=mode, events=redis_url is not None)
    except (StackError, subprocess.TimeoutExpired) as exc:
        console.print(f"[red]make up failed:[/red] {exc}")
        stack.stop_all()
        raise typer.Exit(1) from exc
    local = mode == "inprocess"
    StackInfo(url, "in-process" if local else f"127.0.0.1:{ports.retrieval}",
              "in-process" if local else f"127.0.0.1:{ports.ranking}", redis_url, redis_mode, str(RUN_DIR),
              mode, f"http://127.0.0.1:{ports.events_metrics}" if redis_url else None).save(RUN_DIR)
    console.print(f"[green]ready[/green] in {time.perf_counter() - t:.1f}s: {url}/recommend?user_id=1&k=10  "
                  f"(docs {url}/docs, metrics {url}/metrics; `make down` stops it)")


@app.command("online-store")
def online_store(
    rdb: Annotated[Path, typer.Option(help="Where the private Redis saves the materialised store (RDB file).")],
    batch_rows: int = typer.Option(50_000, min=1, help="Rows per Feast write batch."),
) -> None:
    """Feast apply + batched materialisation of FEAST_OFFLINE_DIR; into REDIS_URL when it is set,
    else into a private redis-server saved as RDB for `up --online-rdb` (make artifacts-scale)."""
    env = dict(os.environ)
    stack = None
    tmp = rdb.resolve().with_name(rdb.name + ".tmp")  # SAVE writes here; renamed once complete
    try:
        if env.get("REDIS_URL"):
            url = env["REDIS_URL"]
        else:
            rdb = rdb.resolve()
            rdb.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)  # the Redis below would load a stale one
            stack = Stack(rdb.parent / ".online-store-run")
            url = env["REDIS_URL"] = start_redis(stack, save_as=tmp)
        console.print(f"online store: {url}")
        for argv in (["apply"], ["materialize", "--batch-rows", str(batch_rows)]):
            done = subprocess.run([sys.executable, "-m", "feature_store", *argv], cwd=REPO_ROOT, env=env,
                                  stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise StackError(f"`python -m feature_store {' '.join(argv)}` failed (exit {done.returncode})")
        if stack is not None:
            import redis

            t = time.perf_counter()
            with redis.Redis.from_url(url, socket_timeout=600) as client:
                client.save()
            tmp.replace(rdb)  # a half-written file is never the saved store
            console.print(f"saved {rdb} ({rdb.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - t:.1f}s")
    except StackError as exc:
        console.print(f"[red]online-store failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        if stack is not None:
            stack.stop_all()


@app.command()
def down(timeout: float = typer.Option(10.0, help="Seconds between SIGTERM and SIGKILL.")) -> None:
    """Stop exactly the processes `up` started (pid files in run/)."""
    stack = Stack(RUN_DIR)
    names = stack.names()
    if not names:
        console.print("nothing to stop (no pid files in run/)")
    for name, outcome in stack.stop_all(timeout).items():
        console.print(f"{name}: {outcome}")
    (RUN_DIR / STACK_FILE).unlink(missing_ok=True)


@app.command()
def status() -> None:
    """Which processes of the local stack are running."""
    stack = Stack(RUN_DIR)
    for name in stack.names():
        pid = stack.pid(name)
        console.print(f"{name}: {'running, pid ' + str(pid) if pid else 'not running (stale pid file)'}")


def demo_users(artifacts_dir: Path, n: int = 3) -> list[str]:
    """A few real user ids from the bundle (row 0 is the reserved unknown row)."""
    import numpy as np

    from common.bundle import load_bundle

    bundle = load_bundle(artifacts_dir, verify=False)
    ids = np.load(bundle.path("user_ids"), allow_pickle=False)
    real = [int(i) for i in ids[1:] if i >= 0]
    step = max(1, len(real) // n)
    return [str(u) for u in real[::step][:n]]


def show_click(client: httpx.Client, user: str, k: int, timeout_s: float = 3.0) -> None:
    """The events loop, seen from outside: the user's answer, a click on its first item posted to
    ``/events``, and the first answer after it (polled until the clicked item has left it)."""
    import uuid

    before = client.get("/recommend", params={"user_id": user, "k": k}).json()
    if not before.get("items"):
        return
    clicked = before["items"][0]
    event = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": clicked["item_id"], "type": "click"}
    r = client.post("/events", json={"events": [event]})
    t0 = time.perf_counter()
    if r.status_code != 202:
        console.print(f"[red]POST /events: HTTP {r.status_code} {r.text}[/red]")
        return
    after = before
    while time.perf_counter() - t0 < timeout_s:
        after = client.get("/recommend", params={"user_id": user, "k": k}).json()
        if all(i["item_id"] != clicked["item_id"] for i in after["items"]):
            break
        time.sleep(0.01)
    ms = (time.perf_counter() - t0) * 1000
    gone = all(i["item_id"] != clicked["item_id"] for i in after["items"])
    from rich.table import Table

    table = Table(title=f"user {user} clicked #{clicked['item_id']} {clicked.get('title') or ''}: "
                        + (f"the next answer reflects it after {ms:.0f} ms" if gone else
                           f"[red]still in the answer after {ms:.0f} ms (is the events consumer running?)[/red]"))
    table.add_column("#", justify="right")
    table.add_column("before the click")
    table.add_column("after the click")
    for i in range(max(len(before["items"]), len(after["items"]))):
        cell = [f"{lst[i]['item_id']} {lst[i].get('title') or ''}" if i < len(lst) else "" for lst in
                (before["items"], after["items"])]
        table.add_row(str(i + 1), *cell)
    console.print(table)


@app.command()
def demo(k: int = typer.Option(5, min=1, max=100)) -> None:
    """Recommendations for a few real users and one unknown user, and how to call the API."""
    from rich.table import Table

    from common.settings import ArtifactSettings

    try:
        info = StackInfo.load(RUN_DIR)
        users = demo_users(ArtifactSettings().artifacts_dir)
    except Exception as exc:  # noqa: BLE001 - a demo explains, it does not trace back
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    users.append("new-user-never-seen")
    url = info.gateway_url
    with httpx.Client(base_url=url, timeout=5.0) as client:
        client.get("/healthz")  # connection warm-up (a /recommend here would make the first table a cache hit)
        for user in users:
            t = time.perf_counter()
            r = client.get("/recommend", params={"user_id": user, "k": k})
            ms = (time.perf_counter() - t) * 1000
            if r.status_code != 200:
                console.print(f"[red]user {user}: HTTP {r.status_code} {r.text}[/red]")
                continue
            body = r.json()
            kind = "unknown user (cold start)" if user.startswith("new-") else "user"
            table = Table(title=f"{kind} {user} — {ms:.1f} ms, model {body['model_version']}, "
                                f"fallback {body['fallback']}, cached {body['cached']}")
            table.add_column("#", justify="right")
            table.add_column("item_id", justify="right")
            table.add_column("title")
            table.add_column("score", justify="right")
            for i, item in enumerate(body["items"], 1):
                table.add_row(str(i), str(item["item_id"]), item.get("title") or "—", f"{item['score']:.4f}")
            console.print(table)
        if info.events_url:
            show_click(client, users[0], k)
    console.print("\nCall it yourself:")
    console.print(f"  curl -s '{url}/recommend?user_id={users[0]}&k=10'")
    console.print(f"  curl -s -X POST {url}/recommend -H 'content-type: application/json' \\\n"
                  f"       -d '{{\"user_id\": \"{users[0]}\", \"k\": 10, \"context\": {{\"recent_item_ids\": [50, 181]}}, "
                  f"\"exclude_item_ids\": [50]}}'")
    if info.events_url:
        console.print(f"  curl -s -X POST {url}/events -H 'content-type: application/json' \\\n"
                      f"       -d '{{\"events\": [{{\"event_id\": \"my-1\", \"user_id\": \"{users[0]}\", \"item_id\": 50, "
                      f"\"type\": \"click\"}}]}}'   # 202; the consumer's metrics: {info.events_url}/metrics")
    console.print(f"  curl -s {url}/readyz ; curl -s {url}/metrics | grep gateway_ ; open {url}/docs")


if __name__ == "__main__":
    app()
