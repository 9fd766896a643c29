"""Process control for the fault tests: a private redis-server we may stop and restart, and ``mars serve``
in a child process we may SIGKILL. Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

REPO = Path(__file__).resolve().parents[2]


async def blocked_in_xread(redis_url: str, *, at_least: int = 1) -> bool:
    """Whether at least ``at_least`` clients of the Redis at ``redis_url`` are blocked in ``XREAD``
    (a reader is waiting for events now: what a test waits on instead of sleeping)."""
    client = aioredis.from_url(redis_url)
    try:
        clients = await client.client_list()
    finally:
        await client.aclose()
    blocked = [c for c in clients if c.get("cmd", "").startswith("xread") and "b" in c.get("flags", "")]
    return len(blocked) >= at_least


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateRedis:
    port: int
    folder: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not on the PATH"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.folder), "--daemonize", "yes"]
        subprocess.run(command, check=True, capture_output=True, timeout=10)

    def stop(self, *, keep_data: bool) -> None:
        """``keep_data`` writes a snapshot first (a Redis with persistence coming back); else nosave."""
        command = ["redis-cli", "-p", str(self.port), "shutdown", "save" if keep_data else "nosave"]
        subprocess.run(command, capture_output=True, timeout=10)

    async def wait_up(self, timeout_s: float = 10.0) -> None:
        client = aioredis.from_url(self.url)
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    with contextlib.suppress(Exception):
                        if await client.ping():
                            return
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def wait_down(self, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", self.port)) != 0:
                        return
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[PrivateRedis]:
    folder = Path(tempfile.mkdtemp(prefix="mars-rel-redis-"))
    server = PrivateRedis(free_port(), folder)
    await asyncio.to_thread(server.start)
    try:
        await server.wait_up()
        yield server
    finally:
        await asyncio.to_thread(server.stop, keep_data=False)
        shutil.rmtree(folder, ignore_errors=True)


def service_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment without any MARS_/REDIS_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARS_", "REDIS_"))}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


@dataclass
class ServiceProcess:
    url: str
    process: asyncio.subprocess.Process
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()


@contextlib.asynccontextmanager
async def mars_serve(env: Mapping[str, str], *args: str, log_dir: Path) -> AsyncIterator[ServiceProcess]:
    """``mars serve --port 0`` in a child process; yields its URL. Logs go to a file in ``log_dir``."""
    log_path = log_dir / f"serve-{free_port()}.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *args,
            cwd=REPO,
            env=service_env(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
        service = ServiceProcess("", process, log_path)
        try:
            assert process.stdout is not None
            async with asyncio.timeout(60):
                while not service.url:
                    line = (await process.stdout.readline()).decode()
                    if not line:
                        raise RuntimeError(f"mars serve exited early:\n{log_path.read_text()[-2000:]}")
                    if "listening on http://" in line:
                        service.url = line[line.index("http://") :].split()[0]
            yield service
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(15):
                        await process.wait()
                except TimeoutError:
                    process.kill()
                    await process.wait()
