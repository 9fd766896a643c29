"""Latency of one stopping decision with 20 answer classes, at K = 64 and K = 512: MARS (switch-model
prediction included, features already in the snapshot), the service's ``default`` rule (adaptive width,
``width``, on wave snapshots: some traces finished, some running, the rest never launched — its
certificate and its launch policy included), ``mars-pop`` (population features, the MARS slack under
the prior q, the logistic stop model) and the opt-in ``mars-pop-gbt`` (tree ensemble). Prints one JSON
object; target: median < 1 ms at K = 512 for MARS and for ``default``. ``default`` is also timed cold
(``cold_k64``, ``cold_k512``: every cache emptied before each decision, a snapshot never seen).

Run: .venv/bin/python benchmarks/decision_latency.py
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable

from orchestrator.domain import Snapshot, TraceView
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.mars import Mars
from orchestrator.stopping.registry import build_rule
from orchestrator.stopping.switch_model import SwitchModel, feature_rows, fit_switch_model

NUM_CLASSES = 20
CHECKPOINT = 20
PROBE_INTERVAL = 500
TARGET_MS = 1.0


def make_snapshot(k: int, rng: random.Random) -> Snapshot:
    traces = []
    for i in range(k):
        # a skewed answer distribution over 20 classes, some traces silent, some finished
        history = tuple(
            None if rng.random() < 0.1 else min(int(rng.expovariate(0.5)), NUM_CLASSES - 1)
            for _ in range(CHECKPOINT)
        )
        positions = [PROBE_INTERVAL * (t + 1) for t in range(CHECKPOINT)]
        features = tuple(float(v) for v in feature_rows(history, positions)[-1])
        answer = history[-1]
        traces.append(
            TraceView(
                index=i,
                answer_class=answer,
                eligible=answer is not None,
                finished=rng.random() < 0.1,
                history=history,
                features=features,
                tokens=PROBE_INTERVAL * CHECKPOINT,
            )
        )
    return Snapshot(CHECKPOINT, PROBE_INTERVAL * CHECKPOINT, tuple(traces), k, NUM_CLASSES)


def make_wave_snapshot(k: int, rng: random.Random) -> Snapshot:
    """Adaptive width mid-job: between k/16 and k/2 traces launched, 40-100% of them finished with a
    skewed answer distribution, the rest running; the remaining traces never launched."""
    launched = rng.randint(max(2, k // 16), k // 2)
    finished = rng.randint(max(1, (2 * launched) // 5), launched)
    traces = []
    for i in range(k):
        answer = min(int(rng.expovariate(1.0)), NUM_CLASSES - 1) if i < finished else None
        traces.append(
            TraceView(
                index=i,
                answer_class=answer,
                eligible=answer is not None,
                finished=i < finished,
                started=i < launched,
                tokens=PROBE_INTERVAL * CHECKPOINT,
            )
        )
    return Snapshot(0, 0, tuple(traces), k, NUM_CLASSES)


def fitted_model(rng: random.Random) -> SwitchModel:
    rows, labels = [], []
    for _ in range(16):
        history = [min(int(rng.expovariate(0.5)), 5) for _ in range(40)]
        final = history[-1]
        rows.extend(feature_rows(history, [PROBE_INTERVAL * (t + 1) for t in range(40)]).tolist())
        labels.extend(int(a != final) for a in history)
    return fit_switch_model(rows, labels)


def measure(
    rule: StoppingRule,
    k: int,
    rng: random.Random,
    repeats: int = 2000,
    make: Callable[[int, random.Random], Snapshot] = make_snapshot,
    clear: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Median and p99 over ``repeats`` decisions on 20 snapshots in turn; with ``clear``, every
    decision first empties the rule's caches (a snapshot the job has not seen yet)."""
    snapshots = [make(k, rng) for _ in range(20)]
    for s in snapshots:  # warm-up
        rule.decide(s)
    samples = []
    for r in range(repeats):
        s = snapshots[r % len(snapshots)]
        if clear is not None:
            clear()
        start = time.perf_counter_ns()
        rule.decide(s)
        samples.append((time.perf_counter_ns() - start) / 1e6)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 4),
        "p99_ms": round(samples[int(0.99 * (len(samples) - 1))], 4),
    }


def clear_width_caches() -> None:
    """Forget every decision the adaptive-width rule has cached (certificates, losses, launch sizes)."""
    from orchestrator.stopping import width, width_certificate

    for fn in (
        width._fewest_to_certify,
        width_certificate.certify,
        width_certificate._lose_bound,
        width_certificate.adversarial_pmf,
        width_certificate._betabinom_pmf,
    ):
        fn.cache_clear()


def main() -> None:
    rng = random.Random(0)
    rule = Mars(gamma=0.8, use_epsilon=True, switch_model=fitted_model(rng))
    k64 = measure(rule, 64, rng)
    k512 = measure(rule, 512, rng)
    default, gbt, pop = build_rule("default"), build_rule("mars-pop-gbt"), build_rule("mars-pop")
    default_64 = measure(default, 64, rng, make=make_wave_snapshot)
    default_512 = measure(default, 512, rng, make=make_wave_snapshot)
    cold_64 = measure(default, 64, rng, repeats=200, make=make_wave_snapshot, clear=clear_width_caches)
    cold_512 = measure(default, 512, rng, repeats=200, make=make_wave_snapshot, clear=clear_width_caches)
    pop_64, pop_512 = measure(pop, 64, rng), measure(pop, 512, rng)
    gbt_64, gbt_512 = measure(gbt, 64, rng, repeats=500), measure(gbt, 512, rng, repeats=500)
    print(
        json.dumps(
            {
                "k64": k64,
                "k512": k512,
                "default": {
                    "rule": default.name,
                    "k64": default_64,
                    "k512": default_512,
                    "cold_k64": cold_64,
                    "cold_k512": cold_512,
                },
                "mars_pop": {"k64": pop_64, "k512": pop_512},
                "mars_pop_gbt": {"k64": gbt_64, "k512": gbt_512},
                "target": "median < 1 ms at K=512 for mars and default",
                "target_met": k512["median_ms"] < TARGET_MS and default_512["median_ms"] < TARGET_MS,
            }
        )
    )


if __name__ == "__main__":
    main()
