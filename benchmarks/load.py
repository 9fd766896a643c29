"""Load: many concurrent jobs through the REST API and the OpenAI-compatible proxy, against the replay
server with paced (realistic-rate) streams, and what the service looks like afterwards.

Unless given ``--api-url``, it starts ``mars serve`` in a child process (embedded store, or Redis with
``--redis-url``) with its upstream ``replay`` pointing at a replay server; unless given ``--replay-url``,
that replay server runs in this process behind a gauge that counts open upstream streams exactly. With
``--workers N`` (Redis only) the service is ``mars serve --no-workers`` (the API alone) plus N separate
``mars worker`` processes, whose ``/metrics`` endpoints say how many jobs are in flight.
Jobs alternate between ``POST /v1/jobs`` (then the SSE feed until it closes, then the job view) and a
voting ``POST /v1/chat/completions``; at most ``--concurrency`` are in flight. It then waits for the
service to go idle and measures what is left open.

Prints ONE JSON object (and writes it to ``--json``): jobs per second; p50/p95/p99 time to answer;
upstream streams open at peak and after the run; errors; the service's resident memory before, halfway
and after; jobs in flight, upstream streams and client sockets left open after the run; ``target`` and
``target_met``. Exits non-zero if any job failed.

    .venv/bin/python benchmarks/load.py --jobs 40 --concurrency 20 --budget 64 --json load.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.requests import ClientDisconnect

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.corpus import Corpus  # noqa: E402
from orchestrator.replay.demo_generator import packaged_demo_path  # noqa: E402
from orchestrator.replay.importers import load_corpus  # noqa: E402
from orchestrator.replay.server import ReplayOptions, ReplayServer  # noqa: E402
from orchestrator.serving import serve_app  # noqa: E402

TARGET = {
    "errors": 0,
    "jobs_in_flight_after": 0,
    "upstream_streams_open_after": 0,
    "client_sockets_open_after": 0,
    "rss_growth_second_half_mb_max": 64.0,
}


# --- the upstream, with an exact gauge of open streams --------------------------------------------


class StreamGauge:
    """ASGI middleware: counts responses of type ``text/event-stream`` from start until they end (or
    the client goes away), and remembers the peak."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.open = 0
        self.peak = 0
        self.total = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streaming = False

        async def watch(message: Any) -> None:
            nonlocal streaming
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                    streaming = True
                    self.open += 1
                    self.total += 1
                    self.peak = max(self.peak, self.open)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except ClientDisconnect:
            pass  # a probe cancelled while its body was still being sent: nobody to answer
        finally:
            if streaming:
                self.open -= 1


@contextlib.asynccontextmanager
async def local_replay(corpus: Corpus, args: argparse.Namespace) -> AsyncIterator[tuple[str, StreamGauge]]:
    options = ReplayOptions(
        seed=args.seed,
        chunk_tokens=args.chunk_tokens,
        tokens_per_s=args.speed,
        ttft_s=args.ttft,
    )
    gauge = StreamGauge(ReplayServer(corpus, options=options).app)
    async with serve_app(gauge) as url:
        yield url, gauge


# --- the service ---------------------------------------------------------------------------------


@dataclass
class Service:
    url: str
    pid: int | None = None
    log_path: Path | None = None
    worker_pids: list[int] = field(default_factory=list)
    worker_metrics: list[str] = field(default_factory=list)  # URLs of the workers' /metrics


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def mars_serve(replay_url: str, args: argparse.Namespace, log_dir: Path) -> AsyncIterator[Service]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARS_", "REDIS_"))}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "MARS_PROVIDER_REPLAY_KIND": "replay",
            "MARS_PROVIDER_REPLAY_BASE_URL": replay_url,
            "MARS_WORKERS": str(-(-args.concurrency // max(1, args.workers))),
            "MARS_MAX_CONCURRENT_JOBS": str(2 * args.concurrency + 8),
            "MARS_MAX_BUDGET": str(max(args.budget, 512)),
            "MARS_LOG_FORMAT": "json",
            "MARS_LOG_LEVEL": "warning",
        }
    )
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
        env["MARS_REDIS_PREFIX"] = args.redis_prefix
    log_path = log_dir / "service.log"
    serve = ["serve", "--host", "127.0.0.1", "--port", "0", *(["--no-workers"] if args.workers else [])]
    workers: list[asyncio.subprocess.Process] = []
    metrics: list[str] = []
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator.cli",
            *serve,
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
        try:
            for n in range(args.workers):
                port = free_port()
                metrics.append(f"http://127.0.0.1:{port}/metrics")
                with (log_dir / f"worker-{n}.log").open("wb") as worker_log:
                    workers.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable,
                            "-m",
                            "orchestrator.cli",
                            "worker",
                            "--metrics-port",
                            str(port),
                            "--metrics-host",
                            "127.0.0.1",
                            cwd=REPO,
                            env=env,
                            stderr=worker_log,
                        )
                    )
            assert proc.stdout is not None
            url = ""
            async with asyncio.timeout(120):
                while not url:
                    line = (await proc.stdout.readline()).decode()
                    if not line:
                        raise RuntimeError(f"mars serve exited early; see {log_path}")
                    found = re.search(r"http://[0-9.:]+", line)
                    url = found.group(0) if found else ""
            if metrics:
                async with httpx.AsyncClient(timeout=5) as probe:
                    await wait_for_metrics(probe, metrics)
            yield Service(url, proc.pid, log_path, [w.pid for w in workers], metrics)
        finally:
            await asyncio.gather(stop(proc), *(stop(w) for w in workers))
            if args.redis_url:
                await drop_prefix(args.redis_url, args.redis_prefix)


async def drop_prefix(redis_url: str, prefix: str) -> None:
    """Remove the run's keys (its own prefix) from a shared Redis."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    import psutil  # type: ignore[import-untyped]  # no stubs in the env

    return round(float(psutil.Process(pid).memory_info().rss) / 2**20, 1)


def cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def sockets(pid: int | None, service_url: str, replay_url: str) -> dict[str, int] | None:
    """The service's TCP sockets: from clients (on its listening port) and to the upstream."""
    if pid is None:
        return None
    import psutil

    own_port = int(service_url.rsplit(":", 1)[1])
    upstream_port = int(replay_url.rstrip("/").rsplit(":", 1)[1].split("/")[0])
    clients = upstream = 0
    for conn in psutil.Process(pid).net_connections(kind="tcp"):
        if conn.status != psutil.CONN_ESTABLISHED:
            continue
        if conn.laddr and conn.laddr.port == own_port:
            clients += 1
        elif conn.raddr and conn.raddr.port == upstream_port:
            upstream += 1
    return {"client_sockets": clients, "upstream_connections": upstream}


# --- driving jobs ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    via: str
    ok: bool
    seconds: float
    error: str = ""
    answer: str | None = None


@dataclass
class Driver:
    client: httpx.AsyncClient
    corpus: Corpus
    args: argparse.Namespace
    service_pid: int | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    halfway_rss: float | None = None

    def job_body(self, n: int) -> dict[str, Any]:
        question = self.corpus.questions[n % len(self.corpus.questions)]
        return {
            "messages": [{"role": "user", "content": question.question}],
            "provider": "replay",
            "model": "replay",
            "budget": self.args.budget,
            "warmup": "none",
            "probe": {"interval_tokens": question.probe_interval_tokens},
            "max_tokens": self.args.max_tokens,
            "job_id": f"load-{self.args.run_id}-{n}",
        }

    async def via_rest(self, n: int) -> Outcome:
        body = self.job_body(n)
        started = time.monotonic()
        resp = await self.client.post("/v1/jobs", json=body)
        if resp.status_code != 202:
            return Outcome(
                "rest", False, time.monotonic() - started, f"submit {resp.status_code}: {resp.text[:200]}"
            )
        job_id = resp.json()["id"]
        async with self.client.stream("GET", f"/v1/jobs/{job_id}/events") as feed:
            async for _ in feed.aiter_lines():
                pass  # the feed closes after the job's terminal event
        view = (await self.client.get(f"/v1/jobs/{job_id}")).json()
        seconds = time.monotonic() - started
        ok = view.get("status") == "succeeded" and view.get("answer") is not None
        return Outcome(
            "rest",
            ok,
            seconds,
            "" if ok else str(view.get("error") or view.get("status")),
            view.get("answer"),
        )

    async def via_proxy(self, n: int) -> Outcome:
        body = self.job_body(n)
        request = {
            "model": "mars/replay",
            "messages": body["messages"],
            "max_tokens": body["max_tokens"],
            "mars": {
                "budget": body["budget"],
                "warmup": "none",
                "probe": body["probe"],
                "provider": "replay",
                "job_id": body["job_id"],
            },
        }
        started = time.monotonic()
        resp = await self.client.post("/v1/chat/completions", json=request)
        seconds = time.monotonic() - started
        if resp.status_code != 200:
            return Outcome("proxy", False, seconds, f"{resp.status_code}: {resp.text[:200]}")
        data = resp.json()
        answer = data["choices"][0]["message"]["content"] if data.get("choices") else None
        return Outcome("proxy", bool(answer), seconds, "" if answer else "empty answer", answer)

    async def one(self, n: int) -> None:
        try:
            outcome = await (self.via_proxy(n) if n % 2 else self.via_rest(n))
        except httpx.HTTPError as exc:
            outcome = Outcome("proxy" if n % 2 else "rest", False, 0.0, f"{type(exc).__name__}: {exc}")
        self.outcomes.append(outcome)
        if len(self.outcomes) == self.args.jobs // 2:
            self.halfway_rss = rss_mb(self.service_pid)  # memory once half the jobs are done

    async def run(self, numbers: range) -> None:
        slots = asyncio.Semaphore(self.args.concurrency)

        async def guarded(n: int) -> None:
            async with slots:
                await self.one(n)

        async with asyncio.TaskGroup() as tg:
            for n in numbers:
                tg.create_task(guarded(n))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return round(cuts[int(q) - 1], 3)


def in_flight_of(text: str) -> float | None:
    found = re.search(r"^mars_jobs_in_flight (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


async def jobs_in_flight(client: httpx.AsyncClient, service: Service) -> float | None:
    """Jobs in flight: the service's own gauge, or the sum over its separate workers' gauges."""
    if not service.worker_metrics:
        return in_flight_of((await client.get("/metrics")).text)
    values = [in_flight_of((await client.get(url)).text) for url in service.worker_metrics]
    return None if None in values else sum(v for v in values if v is not None)


async def wait_for_metrics(client: httpx.AsyncClient, urls: list[str], timeout_s: float = 60.0) -> None:
    """Until every worker's /metrics endpoint answers (the workers are up)."""
    async with asyncio.timeout(timeout_s):
        for url in urls:
            while True:
                try:
                    if (await client.get(url)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)


async def wait_idle(client: httpx.AsyncClient, service: Service, timeout_s: float = 60.0) -> float | None:
    """Until the service reports no job in flight (bounded)."""
    value = await jobs_in_flight(client, service)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while value:
                await asyncio.sleep(0.25)
                value = await jobs_in_flight(client, service)
    return value


async def remote_peak(replay_url: str) -> tuple[int | None, int | None]:
    """Peak and final open streams from a remote replay server's log (may be truncated on long runs)."""
    async with httpx.AsyncClient(base_url=replay_url.removesuffix("/v1"), timeout=60) as client:
        replies = (await client.get("/_replay/log", params={"kind": "reply"})).json()
        ends = [
            *(await client.get("/_replay/log", params={"kind": "stream_end"})).json(),
            *(await client.get("/_replay/log", params={"kind": "disconnect"})).json(),
        ]
    started = {e["request_id"]: e["ts"] for e in replies if e.get("mode") in {"trace", "continue"}}
    finished = {e["request_id"]: e["ts"] for e in ends if e["request_id"] in started}
    moments = sorted([(t, 1) for t in started.values()] + [(t, -1) for t in finished.values()])
    open_now = peak = 0
    for _, step in moments:
        open_now += step
        peak = max(peak, open_now)
    return peak, len(started) - len(finished)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    corpus = load_corpus(args.corpus)
    async with contextlib.AsyncExitStack() as stack:
        gauge: StreamGauge | None = None
        if args.replay_url:
            replay_url = args.replay_url
        else:
            replay_url, gauge = await stack.enter_async_context(local_replay(corpus, args))
        service = Service(args.api_url) if args.api_url else None
        if service is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mars-load-")))
            service = await stack.enter_async_context(mars_serve(replay_url, args, log_dir))
        headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        limits = httpx.Limits(
            max_connections=args.concurrency + 8, max_keepalive_connections=args.concurrency + 8
        )
        timeout = httpx.Timeout(args.job_timeout_s, connect=10.0)
        rss_before = rss_mb(service.pid)
        cpu_before = cpu_s(service.pid)
        workers_cpu_before = [cpu_s(pid) or 0.0 for pid in service.worker_pids]
        own_cpu_before = time.process_time()
        load_before = os.getloadavg()[0]
        async with httpx.AsyncClient(
            base_url=service.url, headers=headers, limits=limits, timeout=timeout
        ) as client:
            driver = Driver(client, corpus, args, service.pid)
            started = time.monotonic()
            await driver.run(range(args.jobs))
            wall = time.monotonic() - started
            own_cpu = time.process_time() - own_cpu_before
            rss_mid = driver.halfway_rss
            in_flight_after = await wait_idle(client, service)
        await asyncio.sleep(1.0)  # let closed connections settle before counting sockets
        open_after = gauge.open if gauge is not None else None
        peak = gauge.peak if gauge is not None else None
        if gauge is None:
            peak, open_after = await remote_peak(replay_url)
        socks = sockets(service.pid, service.url, replay_url)
        rss_after = rss_mb(service.pid)
        cpu_after = cpu_s(service.pid)
        workers_rss = [rss_mb(pid) for pid in service.worker_pids]
        workers_cpu = [
            (cpu_s(pid) or 0.0) - b for pid, b in zip(service.worker_pids, workers_cpu_before, strict=True)
        ]

    times = [o.seconds for o in driver.outcomes if o.ok]
    errors = [o for o in driver.outcomes if not o.ok]
    growth = None if rss_after is None or rss_mid is None else round(rss_after - rss_mid, 1)
    report: dict[str, Any] = {
        "benchmark": "load",
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "budget": args.budget,
        "corpus": corpus.name,
        "replay_speed_tokens_per_s": args.speed,
        "chunk_tokens": args.chunk_tokens,
        "max_tokens": args.max_tokens,
        "store": "redis" if args.redis_url else "memory",
        "worker_processes": args.workers,
        "wall_s": round(wall, 2),
        "service_cpu_s": None
        if cpu_before is None or cpu_after is None
        else round(cpu_after - cpu_before, 1),
        "driver_and_replay_cpu_s": round(own_cpu, 1),
        "worker_processes_cpu_s": round(sum(workers_cpu), 1) if workers_cpu else None,
        "worker_processes_rss_mb_after": workers_rss or None,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m_before": load_before,
            "load_avg_1m_after": os.getloadavg()[0],
        },
        "jobs_per_s": round(args.jobs / wall, 3) if wall > 0 else None,
        "time_to_answer_s": {
            "p50": percentile(times, 50),
            "p95": percentile(times, 95),
            "p99": percentile(times, 99),
            "max": round(max(times), 3) if times else None,
        },
        "by_path": {
            via: sum(1 for o in driver.outcomes if o.via == via and o.ok) for via in ("rest", "proxy")
        },
        "errors": len(errors),
        "error_samples": [f"{o.via}: {o.error}" for o in errors[:5]],
        "upstream_streams_started": gauge.total if gauge is not None else None,
        "upstream_streams_open_peak": peak,
        "upstream_streams_open_after": open_after,
        "rss_mb": {"before": rss_before, "half_the_jobs_done": rss_mid, "after": rss_after},
        "rss_growth_second_half_mb": growth,
        "jobs_in_flight_after": in_flight_after,
        "client_sockets_open_after": None if socks is None else socks["client_sockets"],
        "upstream_keepalive_connections_after": None if socks is None else socks["upstream_connections"],
        "target": TARGET,
    }
    report["target_met"] = (
        report["errors"] == TARGET["errors"]
        and report["jobs_in_flight_after"] in (0, None)
        and report["upstream_streams_open_after"] in (0, None)
        and report["client_sockets_open_after"] in (0, None)
        and (growth is None or growth <= TARGET["rss_growth_second_half_mb_max"])
    )
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, required=True, help="jobs to run in total")
    parser.add_argument("--concurrency", type=int, required=True, help="jobs in flight at once")
    parser.add_argument("--budget", type=int, default=64, help="K, traces per job")
    parser.add_argument("--json", type=Path, required=True, help="write the JSON report here")
    parser.add_argument("--api-url", help="a running MARS service (default: start `mars serve`)")
    parser.add_argument("--api-key", default=os.environ.get("MARS_API_KEY"), help="key for --api-url")
    parser.add_argument("--replay-url", help="a running replay server (default: start one in process)")
    parser.add_argument("--redis-url", help="run the started service on this Redis (default: embedded store)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run the API alone (`mars serve --no-workers`) plus this many `mars worker` processes "
        "(needs --redis-url); --concurrency jobs are spread over them",
    )
    parser.add_argument(
        "--corpus", type=Path, default=packaged_demo_path(), help="corpus the replay server serves"
    )
    parser.add_argument("--speed", type=float, default=400.0, help="tokens per second per upstream stream")
    parser.add_argument("--ttft", type=float, default=0.2, help="seconds before each stream's first token")
    parser.add_argument("--chunk-tokens", type=int, default=16, help="tokens per streamed chunk")
    parser.add_argument("--max-tokens", type=int, default=4000, help="token limit per trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--job-timeout-s", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.workers and not args.redis_url:
        parser.error("--workers needs --redis-url (separate workers take jobs from Redis)")
    if args.workers and args.api_url:
        parser.error("--workers starts its own service; leave out --api-url")
    args.run_id = f"{int(time.time())}-{os.getpid()}"
    args.redis_prefix = f"marsload:{args.run_id}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(main_async(args))
    text = json.dumps(report, indent=2)
    args.json.write_text(text + "\n")
    print(json.dumps(report))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
