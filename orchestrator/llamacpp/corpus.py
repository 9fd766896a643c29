"""Record a corpus from the real model: every byte of it came from SmolLM2-135M on llama-server.

``python -m orchestrator.llamacpp.corpus --out orchestrator/llamacpp/data/smollm2_arith_k16.jsonl``
starts the server (``install.py`` builds it on first use), then for each of :data:`QUESTIONS` streams
K traces (seeded, so a re-run on the same build gives the same bytes), keeps their text, and probes each
trace at every checkpoint (every ``interval`` tokens) with the adapter's own ``continue`` probe on the
prefix the trace had there. The final answer is extracted from the text with the service's extractor.
The file is our JSONL corpus format (``replay/jsonl.py``), readable by ``mars eval``, the replay server
and ``load_corpus``.

Checkpoints are cut on the server's token counts (``timings.predicted_n``), so a checkpoint's prefix is
exactly the text of the trace's first ``position`` tokens, give or take a chunk that carried two.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.answers import DEFAULT_EXTRACTOR, answer_or_none
from orchestrator.corpus import NO_ANSWER, Corpus, CorpusQuestion, CorpusTrace
from orchestrator.domain import ProbeStrategy
from orchestrator.llamacpp.install import ensure_installed
from orchestrator.llamacpp.server import LlamaServer, ServerOptions, running_llama_server
from orchestrator.providers.base import ProbeRequest, TraceRequest
from orchestrator.providers.llamacpp import LlamaCppProvider
from orchestrator.replay.jsonl import write_jsonl

INSTRUCTION = " Think step by step, then put the final answer in \\boxed{}."
QUESTIONS: tuple[tuple[str, str], ...] = (
    ("Tom has 3 apples and buys 4 more. How many apples does he have now?", "7"),
    ("There are 9 birds on a tree. 3 fly away. How many birds are left?", "6"),
    ("A box holds 5 pens. Sara puts 5 more pens in the box. How many pens are in the box?", "10"),
    ("Ann has 2 bags with 4 candies in each bag. How many candies does she have?", "8"),
    ("What is 6 plus 2?", "8"),
    ("Ben reads 10 pages on Monday and 5 pages on Tuesday. How many pages did he read in total?", "15"),
    ("A farmer has 12 cows and sells 2. How many cows does he have left?", "10"),
    ("Lucy has 4 red balls and 3 blue balls. How many balls does she have?", "7"),
    ("A car has 4 wheels. How many wheels do 2 cars have?", "8"),
    ("What is 10 minus 4?", "6"),
    ("Sam had 20 dollars and spent 5 dollars. How much money does he have left?", "15"),
    ("There are 3 plates with 3 cookies on each plate. How many cookies are there?", "9"),
    ("A class has 11 boys and 9 girls. How many children are in the class?", "20"),
    ("Mia buys 2 notebooks for 3 dollars each. How much does she pay?", "6"),
    ("What is 5 times 3?", "15"),
    ("A shelf has 8 books. Jack takes away 6 books. How many books are on the shelf now?", "2"),
    ("Each week has 7 days. How many days are in 2 weeks?", "14"),
    ("Emma has 1 cat and 2 dogs. How many pets does she have?", "3"),
    ("A bus has 15 people. 5 people get off. How many people are still on the bus?", "10"),
    ("What is half of 18?", "9"),
)


async def record_trace(
    provider: LlamaCppProvider, request: TraceRequest, interval: int, probe_tokens: int
) -> CorpusTrace:
    text: list[str] = []
    tokens = 0
    prefixes: list[tuple[int, str]] = []
    next_position = interval
    async with provider.stream(request) as deltas:
        async for delta in deltas:
            text.append(delta.reasoning + delta.text)
            tokens += delta.tokens
            while next_position <= tokens and delta.finish_reason is None:
                prefixes.append((next_position, "".join(text)))
                next_position += interval
    full = "".join(text)
    answers = []
    for position, prefix in prefixes:
        if position >= tokens:
            break
        probe = ProbeRequest(
            trace=request,
            prefix=prefix,
            position_tokens=position,
            strategy=ProbeStrategy.CONTINUE,
            max_tokens=probe_tokens,
        )
        result = await provider.probe(probe)
        answers.append(answer_or_none(result.answer) or NO_ANSWER)
    return CorpusTrace(
        index=request.trace_index,
        checkpoint_answers=tuple(answers),
        positions=tuple(p for p, _ in prefixes[: len(answers)]),
        total_tokens=tokens,
        final_answer=answer_or_none(DEFAULT_EXTRACTOR.final(full)) or NO_ANSWER,
        text=full,
    )


async def record_corpus(
    server: LlamaServer,
    *,
    traces: int = 16,
    max_tokens: int = 128,
    interval: int = 32,
    probe_tokens: int = 8,
    questions: Sequence[tuple[str, str]] = QUESTIONS,
    say: Callable[[str], None] = print,
) -> Corpus:
    provider = LlamaCppProvider(name="llamacpp", base_url=server.url)
    recorded = []
    try:
        for n, (question, gold) in enumerate(questions, start=1):
            requests = [
                TraceRequest(
                    messages=({"role": "user", "content": question + INSTRUCTION},),
                    model=server.model,
                    max_tokens=max_tokens,
                    temperature=0.7,
                    top_p=0.95,
                    top_k=40,
                    seed=1000 * n + i,
                    trace_index=i,
                )
                for i in range(traces)
            ]
            done = await asyncio.gather(
                *(record_trace(provider, r, interval, probe_tokens) for r in requests)
            )
            recorded.append(
                CorpusQuestion(
                    qid=f"arith-{n:02d}",
                    question=question,
                    gold_answer=gold,
                    probe_interval_tokens=interval,
                    traces=tuple(done),
                )
            )
            correct = sum(t.final_answer == gold for t in done)
            say(
                f"{n:2d}/{len(questions)} {gold:>3}: {correct}/{traces} traces right, {sum(t.total_tokens for t in done)} tokens"
            )
    finally:
        await provider.aclose()
    return Corpus(
        name="smollm2-135m-arith-k16",
        source="llama-server build 11434, SmolLM2-135M-Instruct Q4_1 (recorded by orchestrator/llamacpp/corpus.py)",
        questions=tuple(recorded),
        synthetic=False,
        notes=(
            "REAL: every trace text, probe answer and final answer was generated by SmolLM2-135M-Instruct "
            "(Apache-2.0) on llama.cpp's llama-server; nothing is synthetic or edited.",
            f"K={traces}, max_tokens={max_tokens}, checkpoints every {interval} tokens, continue probes of "
            f"{probe_tokens} tokens on the server's own chat template; temperature 0.7, top_p 0.95, top_k 40, "
            "seed 1000*question+trace.",
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator.settings import load_settings

    parser = argparse.ArgumentParser(description="Record a corpus from SmolLM2 on llama-server.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--traces", type=int, default=16)
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    args = parser.parse_args(argv)
    installation = ensure_installed(load_settings().llamacpp_home)
    with running_llama_server(installation, ServerOptions(slots=args.traces, ctx_per_slot=1024)) as server:
        corpus = asyncio.run(record_corpus(server, traces=args.traces, questions=QUESTIONS[: args.questions]))
    write_jsonl(corpus, args.out)
    print(f"wrote {args.out}: {len(corpus.questions)} questions x {args.traces} traces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
