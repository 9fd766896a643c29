"""Run ``llama-server`` on a free loopback port for the length of a ``with`` block.

The server gets ``-np`` parallel slots of ``ctx_per_slot`` tokens each, ``--metrics`` and ``/slots``,
and the model's alias as its one model id. Startup waits for ``/health`` to answer 200; a server that
exits or stays unhealthy is one clear error with the tail of its log. On exit the process gets SIGTERM,
then SIGKILL after a grace period, so no server outlives its block.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from orchestrator.errors import InvalidRequest
from orchestrator.llamacpp.install import Installation


@dataclass(frozen=True, slots=True)
class ServerOptions:
    slots: int = 4  # -np: requests the server runs at once; more queue inside it (we never send more)
    ctx_per_slot: int = 2048
    threads: int = 1  # one thread: under CPU contention two threads spin at barriers (2 vs 17 tok/s here)
    startup_timeout_s: float = 120.0
    stop_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class LlamaServer:
    url: str  # the root (``/health``, ``/slots``); the OpenAI API is under ``url + "/v1"``
    model: str  # the alias listed on ``/v1/models``
    slots: int
    log_path: Path
    pid: int


class ServerStartError(InvalidRequest):
    """llama-server did not come up (missing binary, bad flags, port taken, model unreadable)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def command(installation: Installation, options: ServerOptions, port: int) -> list[str]:
    return [
        str(installation.server),
        "--model",
        str(installation.model),
        "--alias",
        installation.alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--parallel",
        str(options.slots),
        "--ctx-size",
        str(options.slots * options.ctx_per_slot),
        "--threads",
        str(options.threads),
        "--metrics",
        "--slots",
        "--no-webui",
    ]


@contextmanager
def running_llama_server(
    installation: Installation, options: ServerOptions | None = None, *, log_dir: Path | None = None
) -> Iterator[LlamaServer]:
    """Blocking: startup takes a second or two (model load), before anything else of a test or demo runs."""
    options = options or ServerOptions()
    port = free_port()
    folder = log_dir or Path(tempfile.mkdtemp(prefix="mars-llamacpp-"))
    log_path = folder / f"llama-server-{port}.log"
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(  # a fixed argument list, no shell
                command(installation, options, port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            raise ServerStartError(f"cannot start {installation.server}: {exc}") from None
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, process, log_path, options.startup_timeout_s)
        yield LlamaServer(
            url=url, model=installation.alias, slots=options.slots, log_path=log_path, pid=process.pid
        )
    finally:
        _stop(process, options.stop_timeout_s)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerStartError(f"llama-server exited with {process.returncode}: {_tail(log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/health").status_code == 200:
                    return
            time.sleep(0.1)
    raise ServerStartError(f"llama-server not healthy after {timeout_s:.0f} s: {_tail(log_path)}")


def _stop(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(log_path: Path, lines: int = 8) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:])
