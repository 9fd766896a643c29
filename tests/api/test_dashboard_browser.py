"""The dashboard in headless Chromium (Debian's chromium + chromedriver, driven by Selenium with explicit
paths, so nothing is downloaded): the page loads, updates as events arrive, shows a job's waves, and
shows the decision."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.console.runner import RunningService, running_service
from orchestrator.corpus import Corpus, CorpusQuestion, CorpusTrace
from orchestrator.domain import Accounting, JobResult, JobStatus
from orchestrator.replay.catalog import Catalog
from orchestrator.replay.server import running_replay_server
from orchestrator.settings import ProviderConfig
from orchestrator.store.memory import MemoryStore
from tests.api.conftest import ALICE, auth, job_body, make_settings
from tests.api.live import QUESTION, small_corpus

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


class Browser:
    """A Selenium Chrome session whose blocking calls run in a thread, so the server keeps serving."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def get(self, url: str) -> None:
        await asyncio.to_thread(self.driver.get, url)

    async def text(self, css: str) -> str:
        return str(await asyncio.to_thread(lambda: self.driver.find_element("css selector", css).text))

    async def count(self, css: str) -> int:
        return len(await asyncio.to_thread(self.driver.find_elements, "css selector", css))

    async def run(self, script: str) -> Any:
        return await asyncio.to_thread(self.driver.execute_script, script)

    async def until(self, condition: Callable[[], Any], timeout_s: float = 15.0) -> None:
        """Wait until ``condition()`` (run in the browser thread) is truthy."""

        def check() -> bool:
            try:
                return bool(condition())
            except Exception:  # element not there yet
                return False

        async with asyncio.timeout(timeout_s):
            while not await asyncio.to_thread(check):  # noqa: ASYNC110 - the browser has no event to await
                await asyncio.sleep(0.05)

    def text_now(self, css: str) -> str:
        return str(self.driver.find_element("css selector", css).text)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromedriver are required: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture
def browser(driver: Any) -> Browser:
    driver.delete_all_cookies()
    return Browser(driver)


@pytest.fixture
async def open_service(store: MemoryStore) -> AsyncIterator[RunningService]:
    """No keys (open, loopback only), no workers: the test plays the coordinator through the store."""
    settings = make_settings(api_keys={})
    async with running_service(settings, store=store, providers={}, run_workers=False, sse_ping_s=0.5) as svc:
        yield svc


async def test_job_page_follows_events_and_shows_the_decision(
    open_service: RunningService, store: MemoryStore, browser: Browser
) -> None:
    """Traces, vote-share lines, margin against the threshold and the final answer appear as events do."""
    async with httpx.AsyncClient(base_url=open_service.url) as http:
        job_id = (await http.post("/v1/jobs", json=job_body())).json()["id"]
    await browser.get(f"{open_service.url}/dashboard/jobs/{job_id}")
    await browser.until(lambda: browser.text_now("#status") == "QUEUED")
    assert await browser.count("#chart polyline") == 0

    await store.set_status(job_id, JobStatus.RUNNING)
    await store.publish(job_id, "status", {"status": "running"})
    await store.publish(
        job_id,
        "trace",
        {"traces": [{"index": i, "state": "running", "tokens": 0, "answer": None} for i in range(4)]},
    )
    await browser.until(lambda: len(browser.driver.find_elements("css selector", ".trace")) == 4)
    await browser.until(lambda: browser.text_now("#status") == "RUNNING")

    await store.publish(job_id, "checkpoint", {"checkpoint": 1, "position_tokens": 100})
    await store.publish(
        job_id,
        "vote",
        {"checkpoint": 1, "counts": {"42": 2, "41": 1}, "leader": "42", "margin": 1, "threshold": 3},
    )
    await browser.until(lambda: len(browser.driver.find_elements("css selector", "#chart polyline")) == 2)
    assert await browser.text("#margin") == "1"
    assert await browser.text("#threshold") == "3"
    assert "100 tok" in await browser.text('.trace[data-index="0"]')
    width = await browser.run("return document.querySelector('.trace .bar > span').style.width")
    assert width == "100%"  # styles set from script pass the page's content security policy

    await store.publish(job_id, "checkpoint", {"checkpoint": 2, "position_tokens": 200})
    await store.publish(
        job_id,
        "vote",
        {"checkpoint": 2, "counts": {"42": 4, "41": 0}, "leader": "42", "margin": 4, "threshold": 3},
    )
    await browser.until(lambda: browser.text_now("#margin") == "4")
    points = await browser.run(
        "return document.querySelector('#chart polyline[data-class=\"42\"]').getAttribute('points')"
    )
    assert len(points.split()) == 2  # one point per checkpoint
    assert await browser.text("#checkpoint") == "2"
    mars_vote = {
        "checkpoint": 3,
        "counts": {"42": 4},
        "margin": 4,
        "threshold": None,
        "details": {"slack": 1.5},
    }
    await store.publish(job_id, "vote", mars_vote)
    await browser.until(lambda: browser.text_now("#threshold") == "2.50")  # margin minus the rule's slack

    await store.publish(
        job_id,
        "trace",
        {"traces": [{"index": i, "state": "cancelled", "tokens": 230, "answer": "42"} for i in range(4)]},
    )
    await store.publish(job_id, "stop", {"answer": "42", "reason": "mars: margin certified", "checkpoint": 2})
    await store.store_result(
        JobResult(
            job_id=job_id,
            status=JobStatus.SUCCEEDED,
            answer="42",
            stop_checkpoint=2,
            stop_position_tokens=200,
            stop_reason="mars: margin certified",
            method="default",
            probe_strategy="extract",
            traces=(),
            # a job that cost more than plain SC all-in, though its generated tokens saved 40%
            accounting=Accounting(
                total_tokens=1305,
                full_budget_estimate_tokens=720,
                saved_tokens=-585,
                saved_fraction=-0.8125,
                saved_generated_fraction=0.4,
            ),
            votes={"42": 4},
        )
    )
    await browser.until(lambda: browser.text_now("#final-answer") == "42")
    assert await browser.text("#status") == "SUCCEEDED"
    assert await browser.text("#reason") == "mars: margin certified"
    assert await browser.text("#all-in") == "All-in: cost 81% more than running all 8 traces"
    assert "spent 1,305 tokens against ≈ 720" in await browser.text("#savings")
    assert "paper's view (generated tokens only): saved 40%" in await browser.text("#paper-view")
    assert "cancelled" in (await browser.run("return document.querySelector('.trace').className"))


async def test_job_list_links_to_jobs(open_service: RunningService, browser: Browser) -> None:
    """/dashboard lists the jobs with their status and links to each job's page."""
    async with httpx.AsyncClient(base_url=open_service.url) as http:
        job_id = (await http.post("/v1/jobs", json=job_body())).json()["id"]
    await browser.get(f"{open_service.url}/dashboard")
    await browser.until(
        lambda: len(browser.driver.find_elements("css selector", f'tr[data-job="{job_id}"]')) == 1
    )
    assert await browser.text(f'tr[data-job="{job_id}"] .status') == "QUEUED"
    href = await browser.run(
        f"return document.querySelector('tr[data-job=\"{job_id}\"] a').getAttribute('href')"
    )
    assert href == f"/dashboard/jobs/{job_id}"


async def test_page_asks_for_the_key_when_keys_are_configured(store: MemoryStore, browser: Browser) -> None:
    """With API keys the page asks for one, then reads the job with it (the key never goes in a URL)."""
    async with (
        running_service(make_settings(), store=store, providers={}, run_workers=False) as svc,
        httpx.AsyncClient(base_url=svc.url) as http,
    ):
        job_id = (await http.post("/v1/jobs", json=job_body(), headers=auth(ALICE))).json()["id"]
        await browser.get(f"{svc.url}/dashboard/jobs/{job_id}")
        await browser.run("sessionStorage.clear()")
        await browser.get(f"{svc.url}/dashboard/jobs/{job_id}")
        await browser.until(lambda: browser.driver.find_element("css selector", "#auth").is_displayed())
        await asyncio.to_thread(
            lambda: browser.driver.find_element("css selector", "#auth input").send_keys(ALICE)
        )
        await asyncio.to_thread(lambda: browser.driver.find_element("css selector", "#auth button").click())
        await browser.until(lambda: browser.text_now("#status") == "QUEUED")
        await browser.run("sessionStorage.clear()")


async def test_real_job_end_to_end_in_the_page(browser: Browser) -> None:
    """A real job (workers, coordinator, replay server over HTTP) shows up live and ends with its answer."""
    assert shutil.which(str(CHROMIUM))
    async with running_replay_server(small_corpus(traces=8, total_tokens=1200), tokens_per_s=1500) as url:
        replay = ProviderConfig(name="replay", kind="replay", base_url=f"{url}/v1", models=("replay",))
        settings = make_settings(api_keys={}, providers={"replay": replay})
        async with (
            running_service(settings, sse_ping_s=0.5) as svc,
            httpx.AsyncClient(base_url=svc.url) as http,
        ):
            body = {
                "prompt": QUESTION,
                "model": "replay",
                "budget": 8,
                "max_tokens": 4096,
                "probe": {"interval_tokens": 100},
            }
            job_id = (await http.post("/v1/jobs", json=body)).json()["id"]
            await browser.get(f"{svc.url}/dashboard/jobs/{job_id}")
            await browser.until(lambda: browser.text_now("#final-answer") == "42", timeout_s=30)
            assert await browser.count("#chart polyline") >= 1
            assert await browser.count(".trace") == 8
            assert int(await browser.text("#event-count")) > 5


def wave_corpus(traces: int = 32, interval: int = 100) -> Corpus:
    """One question whose served trace i (the replay server's seeded order) is 200-600 tokens long and
    answers 42, except served traces 3 and 5 (41): ``width`` at K = 32 launches 6, then 6 more, then 12
    more, and stops with 8 never launched (the simulator's run on the same order)."""
    order = Catalog(small_corpus(traces=traces), seed=0).order(small_corpus(traces=traces).questions[0])
    built: list[CorpusTrace] = [None] * traces  # type: ignore[list-item]
    for served, stored in enumerate(order):
        total = 200 + 100 * (served % 5)
        final = "41" if served in (3, 5) else "42"
        positions = tuple(range(interval, total, interval))
        built[stored] = CorpusTrace(
            index=stored,
            checkpoint_answers=tuple(final for _ in positions),
            positions=positions,
            total_tokens=total,
            final_answer=final,
        )
    question = CorpusQuestion(
        qid="q-waves",
        question=QUESTION,
        gold_answer="42",
        probe_interval_tokens=interval,
        traces=tuple(built),
    )
    return Corpus(name="waves-test", source="tests/api", questions=(question,), synthetic=True)


async def test_a_width_job_shows_its_waves(browser: Browser) -> None:
    """A live ``width`` job (workers, coordinator, replay server over HTTP): the job page counts launched
    of K, finished and never launched, its timeline starts the second wave later than the first, and the
    job list says "launched N of K"."""
    async with running_replay_server(wave_corpus(), tokens_per_s=1500) as url:
        replay = ProviderConfig(name="replay", kind="replay", base_url=f"{url}/v1", models=("replay",))
        settings = make_settings(api_keys={}, providers={"replay": replay})
        async with (
            running_service(settings, sse_ping_s=0.5) as svc,
            httpx.AsyncClient(base_url=svc.url) as http,
        ):
            body = {
                "prompt": QUESTION,
                "model": "replay",
                "budget": 32,
                "method": "width",
                "max_tokens": 4096,
                "probe": {"interval_tokens": 100},
            }
            job_id = (await http.post("/v1/jobs", json=body)).json()["id"]
            await browser.get(f"{svc.url}/dashboard/jobs/{job_id}")
            await browser.until(lambda: browser.text_now("#final-answer") == "42", timeout_s=30)
            job = (await http.get(f"/v1/jobs/{job_id}")).json()
            launched, never = job["launched"], job["never_launched"]
            assert (launched, never, job["waves"]) == (24, 8, 3)
            assert await browser.text("#launched") == "launched 24 of 32"
            assert await browser.text("#never-launched") == "8"
            assert await browser.text("#unlaunched-label") == "never launched"
            assert await browser.text("#wave-count") == "3"
            assert await browser.text("#running") == "0"
            statuses = [t["status"] for t in job["traces"]]
            finished = str(statuses.count("finished"))
            assert await browser.text("#finished") == finished
            assert await browser.text("#cancelled") == str(statuses.count("cancelled"))
            starts = await browser.run(
                "return [...document.querySelectorAll('#timeline rect')].map("
                "r => [Number(r.dataset.wave), Number(r.getAttribute('x'))])"
            )
            assert len(starts) == 24
            first = [x for wave, x in starts if wave == 1]
            second = [x for wave, x in starts if wave == 2]
            third = [x for wave, x in starts if wave == 3]
            assert (len(first), len(second), len(third)) == (6, 6, 12)
            assert min(second) > max(first)  # each wave visibly starts later
            assert min(third) > max(second)
            assert await browser.count("#timeline line[data-wave-start]") == 3
            assert await browser.count(".trace.pending") == 8
            assert "never launched" in await browser.text(".trace.pending")
            assert "wave 2" in await browser.text(f'.trace[data-index="{second_index(job)}"]')

            await browser.get(f"{svc.url}/dashboard")
            cell = f'tr[data-job="{job_id}"] .launched'
            await browser.until(lambda: browser.text_now(cell) == "launched 24 of 32 in 3 waves")


def second_index(job: dict[str, Any]) -> int:
    return next(t["index"] for t in job["traces"] if t["wave"] == 2)
