"""The seeded generator of the packaged demo corpus (synthetic; no real trace is copied).

Its dynamics are fitted to *aggregate* statistics of the real Qwen3-8B corpus
(``../shared/data/parallel-probe-qwen3-8b``, 60 questions × 128 traces, probed every 500 tokens):
decile tables and a few moments, listed in :class:`DemoParams`. The model, per question:

1. accuracy ``p`` drawn (stratified over the questions) from the deciles of the real per-question accuracy; median trace length from
   the deciles of the real per-question median length; each trace's length log-normal around it with
   the real within-question log-sd;
2. final answer: the gold answer with probability ``p``, else a wrong answer from a Chinese-restaurant
   process whose concentration is fitted to the real number of distinct final answers per question;
3. checkpoint count: ``floor(total / 500)`` plus an offset drawn from the real offset frequencies;
4. checkpoint answers: the trace settles on its final answer at a fraction of its checkpoints drawn
   from the real "settle point" deciles; before that it is a sticky process: with probability
   ``stay`` the answer repeats, else a new one is drawn: ``ERR`` with the real probability at that
   relative position, else one of the question's final answers (real share of intermediate answers
   that are some final answer, matched through the hand-fitted ``pool_draw``; the trace's own final is
   down-weighted by ``own_final_weight`` to match how rarely the first probe already holds it), else a
   fresh wrong intermediate value. ``stay`` is fitted so the mean
   number of answer changes per trace matches the real one.

``python -m orchestrator.replay.demo_generator fit`` recomputes the statistics from the real corpus
and refits; ``... write`` writes the packaged file; ``... stats`` compares the packaged file, a large
sample from the generator, and (when present) the real corpus. ``demo/README.md`` has the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from orchestrator.corpus import NO_ANSWER, Corpus, CorpusQuestion, CorpusTrace

PROBE_INTERVAL_TOKENS = 500
DEMO_FILE = "demo_corpus.jsonl"
DECILES = tuple(i / 10 for i in range(11))


@dataclass(frozen=True, slots=True)
class DemoParams:
    """Aggregate statistics of the real corpus (deciles are at 0, 10, ..., 100 %) and fitted knobs."""

    accuracy_deciles: tuple[float, ...]
    median_length_deciles: tuple[float, ...]
    within_log_sd: float
    settle_deciles: tuple[float, ...]
    err_by_decile: tuple[float, ...]  # P(ERR) of a fresh draw by relative position (tenths)
    count_offsets: tuple[tuple[int, float], ...]  # checkpoints - floor(total/500): frequency
    intermediate_is_final: float
    first_is_final: float  # share of traces whose first checkpoint already holds the final answer
    own_final_weight: float  # hand-fitted: weight of the trace's own final among intermediate draws
    pool_draw: float  # hand-fitted: P(a fresh intermediate answer is drawn from the question's finals)
    min_length: int
    max_length: int
    crp_alpha: float  # fitted: distinct final answers per question
    stay: float  # fitted: answer changes per trace
    targets: tuple[tuple[str, float], ...] = ()  # the real figures the two knobs were fitted to


# Fitted on 2026-11-21 from aime24.json + aime25.json (see ``fit``).
FITTED = DemoParams(
    accuracy_deciles=(0.0, 0.022, 0.156, 0.698, 0.83, 0.93, 0.953, 0.992, 1.0, 1.0, 1.0),
    median_length_deciles=(
        3629.0,
        5066.8,
        6938.8,
        8874.7,
        10721.8,
        12648.0,
        15295.2,
        19290.8,
        22774.0,
        27565.7,
        40316.0,
    ),
    within_log_sd=0.277,
    settle_deciles=(0.0, 0.283, 0.417, 0.542, 0.632, 0.714, 0.778, 0.846, 0.906, 0.957, 0.988),
    err_by_decile=(0.016, 0.041, 0.067, 0.092, 0.1, 0.114, 0.105, 0.089, 0.081, 0.096),
    count_offsets=((0, 0.467), (-1, 0.192), (1, 0.186), (-2, 0.084), (-3, 0.045), (-4, 0.017)),
    intermediate_is_final=0.4,
    first_is_final=0.044,
    own_final_weight=0.05,
    pool_draw=0.6,
    min_length=1977,
    max_length=41508,
    crp_alpha=12.0,
    stay=0.4,
    targets=(("distinct_finals_mean", 12.233), ("flips_mean", 11.027)),
)


def _from_deciles(deciles: Sequence[float], u: float) -> float:
    """Inverse CDF by linear interpolation between deciles."""
    x = u * 10
    i = min(9, int(x))
    return deciles[i] + (deciles[i + 1] - deciles[i]) * (x - i)


def _quantiles(values: Sequence[float]) -> tuple[float, ...]:
    ordered = sorted(values)
    n = len(ordered)
    out = []
    for q in DECILES:
        pos = q * (n - 1)
        lo = math.floor(pos)
        hi = min(n - 1, lo + 1)
        out.append(round(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), 3))
    return tuple(out)


class _Question:
    """The random state of one synthetic question."""

    def __init__(
        self, params: DemoParams, rng: random.Random, n: int, u_accuracy: float, u_length: float
    ) -> None:
        self.params = params
        self.rng = rng
        self.gold = str(rng.randint(0, 999))
        self.accuracy = _from_deciles(params.accuracy_deciles, u_accuracy)
        self.median_length = _from_deciles(params.median_length_deciles, u_length)
        self.wrong: Counter[str] = Counter()
        self.finals: Counter[str] = Counter()
        self.n = n

    def _wrong_final(self) -> str:
        total = sum(self.wrong.values())
        if not self.wrong or self.rng.random() < self.params.crp_alpha / (self.params.crp_alpha + total):
            value = str(self.rng.randint(0, 999))
            while value == self.gold or value in self.wrong:
                value = str(self.rng.randint(0, 999))
        else:
            value = self.rng.choices(list(self.wrong), weights=list(self.wrong.values()))[0]
        self.wrong[value] += 1
        return value

    def final(self) -> str:
        value = self.gold if self.rng.random() < self.accuracy else self._wrong_final()
        self.finals[value] += 1
        return value

    def length(self) -> int:
        raw = math.exp(self.rng.gauss(math.log(self.median_length), self.params.within_log_sd))
        return int(min(self.params.max_length, max(self.params.min_length, raw)))

    def checkpoints(self, total: int) -> int:
        offsets = [k for k, _ in self.params.count_offsets]
        weights = [w for _, w in self.params.count_offsets]
        offset: int = self.rng.choices(offsets, weights=weights)[0]
        return max(1, total // PROBE_INTERVAL_TOKENS + offset)

    def fresh(self, rel: float, final: str, previous: str | None) -> str:
        p = self.params
        if self.rng.random() < p.err_by_decile[min(9, int(rel * 10))]:
            return NO_ANSWER
        others = [a for a in self.finals if a != final]
        if others and self.rng.random() < p.pool_draw:
            # A trace rarely passes through its own final answer before settling on it.
            values = list(self.finals)
            weights = [c * (p.own_final_weight if a == final else 1.0) for a, c in self.finals.items()]
            return self.rng.choices(values, weights=weights)[0]
        return str(self.rng.randint(0, 999))

    def answers(self, n: int, final: str) -> tuple[str, ...]:
        settle = round(_from_deciles(self.params.settle_deciles, self.rng.random()) * n)
        if self.rng.random() >= self.params.first_is_final:
            settle = max(settle, 1)  # the first probe rarely holds the final answer already
        settle = min(settle, n - 1)  # the last checkpoint always holds the final answer
        out: list[str] = []
        previous: str | None = None
        for k in range(settle):
            if previous is not None and self.rng.random() < self.params.stay:
                value = previous
            else:
                value = self.fresh(k / n, final, previous)
            if k == settle - 1:
                while value == final:  # by definition the settle point is where it last changes
                    value = self.fresh(k / n, final, previous)
            out.append(value)
            previous = value
        out.extend([final] * (n - settle))
        return tuple(out)


def generate(
    *, questions: int = 10, traces: int = 64, seed: int = 20261121, params: DemoParams = FITTED
) -> Corpus:
    rng = random.Random(seed)
    # Stratified draws: even a 10-question corpus spans the accuracy and length distributions.
    u_acc = [(k + rng.random()) / questions for k in range(questions)]
    u_len = [(k + rng.random()) / questions for k in range(questions)]
    rng.shuffle(u_acc)
    rng.shuffle(u_len)
    qs = []
    for qn in range(questions):
        state = _Question(params, random.Random(rng.getrandbits(64)), traces, u_acc[qn], u_len[qn])
        ts = []
        for i in range(traces):
            total = state.length()
            final = state.final()
            n = state.checkpoints(total)
            answers = state.answers(n, final)
            positions = tuple(PROBE_INTERVAL_TOKENS * (k + 1) for k in range(n))
            ts.append(CorpusTrace(i, answers, positions, total, final))
        text = (
            f"Synthetic demo question {qn + 1}: a stand-in for a competition problem whose answer is an "
            f"integer from 0 to 999. (Generated; no real problem text.)"
        )
        qs.append(CorpusQuestion(f"demo-{qn + 1}", text, state.gold, PROBE_INTERVAL_TOKENS, tuple(ts)))
    return Corpus(
        name="mars-demo-synthetic",
        source=f"orchestrator.replay.demo_generator seed={seed}",
        questions=tuple(qs),
        synthetic=True,
        notes=(
            "SYNTHETIC: generated by orchestrator/replay/demo_generator.py; no real trace or problem is "
            "included. Dynamics fitted to aggregate statistics of the Parallel-Probe Qwen3-8B corpus.",
        ),
    )


# --- statistics ----------------------------------------------------------------------------------


def corpus_stats(questions: Sequence[tuple[str, Sequence[tuple[Sequence[str], int, str]]]]) -> dict[str, Any]:
    """Aggregate statistics of (gold, [(checkpoint answers, total tokens, final)]) per question."""
    lengths: list[float] = []
    medians: list[float] = []
    accuracy: list[float] = []
    distinct: list[float] = []
    top_share: list[float] = []
    errs: list[float] = []
    flips: list[float] = []
    settles: list[float] = []
    first_is_final: list[float] = []
    inter_final: list[float] = []
    offsets: Counter[int] = Counter()
    log_sd: list[float] = []
    err_pos: list[list[float]] = [[] for _ in range(10)]
    for gold, branches in questions:
        ls = [b[1] for b in branches]
        lengths.extend(ls)
        medians.append(sorted(ls)[len(ls) // 2])
        logs = [math.log(x) for x in ls]
        mu = sum(logs) / len(logs)
        log_sd.append(math.sqrt(sum((x - mu) ** 2 for x in logs) / len(logs)))
        finals = [b[2] for b in branches]
        accuracy.append(sum(f == gold for f in finals) / len(finals))
        counts = Counter(finals)
        distinct.append(len(counts))
        top_share.append(counts.most_common(1)[0][1] / len(finals))
        final_set = set(finals)
        for answers, total, final in branches:
            n = len(answers)
            offsets[n - total // PROBE_INTERVAL_TOKENS] += 1
            errs.append(sum(a == NO_ANSWER for a in answers) / n)
            flips.append(sum(answers[i] != answers[i - 1] for i in range(1, n)))
            k = n
            while k > 0 and answers[k - 1] == final:
                k -= 1
            settles.append(k / n)
            first_is_final.append(float(answers[0] == final))
            inter_final.extend(float(a in final_set) for a in answers[:k] if a != NO_ANSWER)
            for i, a in enumerate(answers[:k]):
                err_pos[min(9, int(10 * i / n))].append(float(a == NO_ANSWER))

    def mean(xs: Sequence[float]) -> float:
        return round(sum(xs) / len(xs), 3) if xs else 0.0

    total_offsets = sum(offsets.values())
    return {
        "questions": len(questions),
        "traces": len(lengths),
        "length_deciles": _quantiles(lengths),
        "length_mean": mean(lengths),
        "median_length_deciles": _quantiles(medians),
        "within_log_sd": mean(log_sd),
        "accuracy_deciles": _quantiles(accuracy),
        "accuracy_mean": mean(accuracy),
        "distinct_finals_mean": mean(distinct),
        "distinct_finals_median": _quantiles(distinct)[5],
        "top_share_mean": mean(top_share),
        "err_fraction_mean": mean(errs),
        "flips_mean": mean(flips),
        "flips_deciles": _quantiles(flips),
        "settle_deciles": _quantiles(settles),
        "first_probe_is_final": mean(first_is_final),
        "intermediate_is_final": mean(inter_final),
        "err_by_decile": tuple(mean(x) for x in err_pos),
        "count_offsets": tuple(
            sorted(((k, round(v / total_offsets, 3)) for k, v in offsets.items()), key=lambda kv: -kv[1])
        )[:6],
    }


def stats_of(corpus: Corpus) -> dict[str, Any]:
    return corpus_stats(
        [
            (q.gold_answer, [(t.checkpoint_answers, t.total_tokens, t.final_answer) for t in q.traces])
            for q in corpus.questions
        ]
    )


def read_real(paths: Sequence[Path]) -> list[tuple[str, list[tuple[list[str], int, str]]]]:
    out = []
    for path in paths:
        for q in json.loads(path.read_text()):
            branches = [([str(a) for a in b[0]], int(b[1]), str(b[2])) for b in q["each_branch"]]
            out.append((str(q["gold_answer"]), branches))
    return out


def fit(real: Sequence[tuple[str, Sequence[tuple[Sequence[str], int, str]]]], *, seed: int = 1) -> DemoParams:
    """Statistics from the real corpus, then a grid search of ``crp_alpha`` and ``stay`` against the
    real mean distinct finals per question and mean answer changes per trace."""
    s = corpus_stats(real)
    lengths = [b[1] for _, bs in real for b in bs]
    base = replace(
        FITTED,
        accuracy_deciles=s["accuracy_deciles"],
        median_length_deciles=s["median_length_deciles"],
        within_log_sd=s["within_log_sd"],
        settle_deciles=s["settle_deciles"],
        err_by_decile=s["err_by_decile"],
        count_offsets=s["count_offsets"],
        intermediate_is_final=s["intermediate_is_final"],
        first_is_final=s["first_probe_is_final"],
        min_length=min(lengths),
        max_length=max(lengths),
    )
    target_distinct, target_flips = s["distinct_finals_mean"], s["flips_mean"]
    alpha = min(
        (2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0),
        key=lambda a: abs(
            stats_of(generate(questions=120, traces=128, seed=seed, params=replace(base, crp_alpha=a)))[
                "distinct_finals_mean"
            ]
            - target_distinct
        ),
    )
    base = replace(base, crp_alpha=alpha)
    stay = min(
        (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
        key=lambda st: abs(
            stats_of(generate(questions=60, traces=128, seed=seed, params=replace(base, stay=st)))[
                "flips_mean"
            ]
            - target_flips
        ),
    )
    return replace(
        base, stay=stay, targets=(("distinct_finals_mean", target_distinct), ("flips_mean", target_flips))
    )


def packaged_demo_path() -> Path:
    """The packaged demo corpus file (works from a fresh clone: no ../shared needed)."""
    return Path(str(resources.files("orchestrator.replay") / "demo" / DEMO_FILE))


def main(argv: Sequence[str] | None = None) -> None:
    from orchestrator.replay.jsonl import write_jsonl

    parser = argparse.ArgumentParser(prog="python -m orchestrator.replay.demo_generator")
    parser.add_argument("action", choices=["fit", "write", "stats"])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/parallel-probe-qwen3-8b"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=20261121)
    args = parser.parse_args(argv)
    real_paths = sorted(args.data.glob("aime2*.json"))
    if args.action == "fit":
        print(json.dumps(asdict(fit(read_real(real_paths)))))
    elif args.action == "write":
        out = args.out or packaged_demo_path()
        write_jsonl(generate(seed=args.seed), out)
        print(f"wrote {out} ({out.stat().st_size} bytes)")
    else:
        from orchestrator.replay.importers import load_corpus

        report = {
            "packaged": stats_of(load_corpus(packaged_demo_path())),
            "generator_large_sample": stats_of(generate(questions=200, traces=128, seed=args.seed + 1)),
        }
        if real_paths:
            report["real"] = corpus_stats(read_real(real_paths))
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
