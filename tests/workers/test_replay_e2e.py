"""Live path against the replay server over HTTP, and the end-to-end check of EVALUATION.md: for sampled
runs of the bundled corpus, queue → worker → coordinator → OpenAI-compatible adapter → replay server
reaches the same stop checkpoint, answer and generated-token count as the offline simulator."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from orchestrator.corpus import NO_ANSWER, Corpus
from orchestrator.evaluation.prepared import prepare
from orchestrator.evaluation.simulate import simulate, timeline
from orchestrator.providers.factory import build_provider
from orchestrator.replay.importers import load_corpus
from orchestrator.replay.server import replay_server_process
from orchestrator.settings import ProviderConfig
from orchestrator.stopping.registry import build_rule
from orchestrator.stopping.switch_model import CONSERVATIVE_DEFAULT, FEATURES_NO_CONFIDENCE, SwitchModel
from orchestrator.store.base import request_fingerprint
from orchestrator.store.factory import open_store
from orchestrator.tokens import estimate_messages_tokens
from tests.fakes import wait_until
from tests.workers import scenario
from tests.workers.live_path import replay_spec, run_live
from tests.workers.test_workers import REPO, tokens_at_least, wait_for_result
from workers.pool import WorkerPool

pytestmark = [pytest.mark.redis, pytest.mark.shared_data, pytest.mark.timeout(120)]

BUDGET = 8
# q = sigmoid(3 - streak): lets MARS stop early on these runs, so the stop checkpoint is a real test
EAGER = SwitchModel(FEATURES_NO_CONFIDENCE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, -1.0), 3.0)
RUNS: list[tuple[str, int, int, str, dict[str, Any]]] = [  # (file, question, repetition, method, params)
    ("aime24", 0, 0, "mars", {"switch_model": EAGER.to_dict(), "gamma": 1.0}),
    ("aime25", 5, 2, "mars", {"switch_model": CONSERVATIVE_DEFAULT.to_dict(), "gamma": 1.0}),
    ("aime24", 3, 1, "consensus", {"threshold": 0.75}),
    # waves (staggered launches) and prunes through the real path
    ("aime25", 2, 3, "esc", {"window": 3}),
    ("aime24", 7, 0, "parallel-probe", {"warmup_steps": 3, "patience": 2, "stability": 4}),
]


def exact_or_none(strings: Sequence[str]) -> list[int | None]:
    """Exact string classes, with the no-answer marker as no answer (as the live path reads it)."""
    return [None if s == NO_ANSWER else i for i, s in enumerate(strings)]


@functools.cache
def corpus(shared_data: Path, name: str) -> Corpus:
    return load_corpus(shared_data / "parallel-probe-qwen3-8b" / f"{name}.json")


@pytest.mark.parametrize(("file", "question", "rep", "method", "params"), RUNS)
async def test_live_path_matches_the_simulator(
    shared_data: Path,
    redis_url: str,
    prefix: str,
    file: str,
    question: int,
    rep: int,
    method: str,
    params: dict[str, Any],
) -> None:
    """Same stop checkpoint, answer and generated tokens live (over HTTP, through Redis) as offline."""
    data = corpus(shared_data, file)
    q = data.questions[question]
    order = list(range(len(q.traces)))
    random.Random(rep).shuffle(order)
    prepared = prepare(q, exact_or_none)
    rule = build_rule(method, **params)
    expected = simulate(rule, timeline(prepared), order[:BUDGET])
    expected_answer = None if expected.answer is None else prepared.answers[expected.answer]

    # The replay server runs in its own process: its CPU (building trace texts) is not the coordinator's.
    run = await run_live(
        shared_data,
        redis_url,
        prefix,
        file=file,
        question=q,
        job_id=f"{file}-{question}-{rep}",
        budget=BUDGET,
        method=method,
        params=params,
        server_args=("--seed", str(rep), "--chunk-tokens", "20"),
        timeout_s=90,
    )
    result = run.result
    assert result.stop_reason == expected.reason
    assert result.stop_checkpoint == expected.stop_checkpoint
    assert result.answer == expected_answer
    assert result.accounting.generated_tokens == expected.generated_tokens
    # what the live path adds on top of the simulator's view is reported, never hidden
    acc = result.accounting
    assert acc.total_tokens >= acc.generated_tokens + acc.generated_past_checkpoint_tokens
    assert acc.probe_calls >= expected.probe_calls - BUDGET


async def test_a_worker_killed_mid_job_over_http_resumes_to_the_simulators_answer(
    shared_data: Path, redis_url: str, prefix: str
) -> None:
    """SIGKILL a worker process streaming from the replay server; another worker reclaims the job,
    continues every trace from its stored prefix over HTTP and reaches the simulator's decision."""
    file, question, rep, method, params = RUNS[0]
    data = corpus(shared_data, file)
    q = data.questions[question]
    order = list(range(len(q.traces)))
    random.Random(rep).shuffle(order)
    prepared = prepare(q, exact_or_none)
    expected = simulate(build_rule(method, **params), timeline(prepared), order[:BUDGET])
    path = shared_data / "parallel-probe-qwen3-8b" / f"{file}.json"
    settings = scenario.settings(redis_url, prefix)
    async with replay_server_process(
        path, "--seed", str(rep), "--chunk-tokens", "20", "--speed", "1500"
    ) as url:
        victim = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.workers.scenario",
            redis_url,
            prefix,
            "victim",
            "0",
            url,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert victim.stdout is not None
            assert (await asyncio.wait_for(victim.stdout.readline(), 30)).strip() == b"ready"
            async with open_store(settings) as store:
                spec = replay_spec("killed-http", q, BUDGET, method, params)
                await store.create_job(spec, request_fingerprint(spec))
                await wait_until(lambda: tokens_at_least(store, spec.job_id, BUDGET * 600), timeout_s=60)
                victim.send_signal(signal.SIGKILL)
                await victim.wait()
                provider = build_provider(ProviderConfig(name="replay", kind="replay", base_url=url))
                try:
                    async with WorkerPool(
                        settings, store, {"replay": provider}, worker_id="rescuer", poll_ms=50
                    ):
                        record = await wait_for_result(store, spec.job_id, timeout_s=90)
                finally:
                    await provider.aclose()
        finally:
            if victim.returncode is None:
                victim.kill()
                await victim.wait()
    result = record.result
    assert result is not None
    assert record.attempts == 2
    assert (
        result.answer == prepared.answers[expected.answer]
        if expected.answer is not None
        else result.answer is None
    )
    assert result.stop_checkpoint == expected.stop_checkpoint
    assert result.accounting.generated_tokens == expected.generated_tokens
    assert sum(t.continued_from_tokens for t in result.traces) >= BUDGET * 600
    # issue 14 item 9: the continuation prompts are the crash's cost, never SC's: the counterfactual
    # holds K plain prompts (the replay server counts them with the offline estimator), not K resumes
    acc = result.accounting
    plain = estimate_messages_tokens([{"role": "user", "content": q.question}])
    assert abs(acc.full_budget_estimate_tokens - acc.full_budget_generated_tokens - BUDGET * plain) <= 1
    assert acc.prompt_tokens > BUDGET * (plain + 600)  # spent: every resume re-sent its prefix
