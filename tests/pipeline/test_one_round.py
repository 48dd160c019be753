"""One smoke round, every asset and check materialized in this process with a station and MLflow,
on PostgreSQL where the server is installed (CI), else SQLite; then three views of it: its
records in both PostgreSQL stores, through the APIs and in PostgreSQL's own tables; the
world-model exploitation check's figures; and the Dagster UI in a real headless Chromium (the
asset graph renders, materialized, and the champion's page shows the success-over-rounds chart).
One round serves all three: each is a minute or two of CI on a 2-core CPU."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import postgres_server as pg
import pytest

from pipeline.demo import STAGES
from pipeline.round.config import SMOKE_ROUND

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.timeout(1200)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FinishedRound:
    home: Path
    env: dict[str, str]
    instance: dg.DagsterInstance
    key: str
    result: dg.ExecuteInProcessResult
    on_postgres: bool


@pytest.fixture(scope="module")
def finished_round(tmp_path_factory):
    """Round 1 of the smoke preset (both its tasks: with one, a 5-step SFT can fail every
    collected episode on some CPUs, and the judge refuses single-class data, as it should)."""
    from pipeline.assets import ROUND_ASSETS
    from pipeline.checks import ROUND_CHECKS
    from pipeline.definitions import resources
    from pipeline.demo import last_rounds

    home = tmp_path_factory.mktemp("round") / "home"
    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as mp:
        on_postgres = pg.bindir() is not None or pg.required()
        database = f"{stack.enter_context(pg.postgres_server())}/one" if on_postgres else None
        with pg.round_stack(mp, home, SMOKE_ROUND, database) as (env, instance):
            (key,) = last_rounds(1)
            result = dg.materialize(
                [*ROUND_ASSETS, *ROUND_CHECKS],
                partition_key=key,
                instance=instance,
                resources=resources(),
            )
            assert result.success
            yield FinishedRound(home, dict(env), instance, key, result, on_postgres)


def test_the_round_is_in_both_postgres_stores(finished_round):
    if not finished_round.on_postgres:
        pg.unavailable("PostgreSQL's initdb is not installed")
    r = finished_round
    pg.check_stores(r.home, r.env, r.instance, [r.key])


def test_the_exploitation_check_replayed_the_challengers_real_episodes(finished_round):
    (exploit,) = [
        e
        for e in finished_round.result.get_asset_check_evaluations()
        if e.check_name == "world_model_exploitation"
    ]
    assert {"false_success_rate", "fp", "tn"} <= set(exploit.metadata)
    assert exploit.metadata["n"].value > 0


@pytest.fixture(scope="module")
def webserver(finished_round):
    env = finished_round.env
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_webserver",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            "pipeline.definitions",
        ],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("dagster-webserver did not come up in 240 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.browser
@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"
)
def test_asset_graph_of_a_finished_round_renders_materialized(finished_round, webserver, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    round_key = finished_round.key
    shot = Path("/tmp/gymnast_dagster_asset_graph.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1800, "height": 1100})
        page.goto(f"{webserver}/asset-groups/round", wait_until="domcontentloaded", timeout=120_000)
        for name in STAGES:  # every node of the round's graph is drawn
            page.get_by_text(name, exact=True).first.wait_for(timeout=120_000)
        skip = page.get_by_role("button", name="Skip")  # the first-visit community dialog
        with contextlib.suppress(PlaywrightTimeout):  # not every Dagster version shows it
            skip.first.click(timeout=15_000)
        page.wait_for_timeout(3000)
        page.screenshot(path=str(shot), full_page=True)

        materialized = {}
        for name in STAGES:  # each asset's partitions page: this round materialized, none running
            page.goto(f"{webserver}/assets/{name}?view=partitions", wait_until="domcontentloaded")
            page.get_by_text(round_key, exact=False).first.wait_for(timeout=60_000)
            page.get_by_text("Materialized (", exact=False).first.wait_for(timeout=60_000)
            materialized[name] = page.inner_text("body")
        page.screenshot(path="/tmp/gymnast_dagster_champion.png", full_page=True)

        # the champion's page for the round shows the success-over-rounds chart: a PNG inlined in
        # its metadata (markdown over 1,000 characters sits behind "[Show Markdown]", whose
        # dialog draws it)
        chart_src, chart_size = _inline_image(
            page, f"{webserver}/assets/champion", round_key, "success_over_rounds",
            "success over rounds", "/tmp/gymnast_dagster_success_chart.png",
        )  # fmt: skip
        # the challenger's page shows the strip of GRPO's imagined rollouts, judge score on each
        strip_src, strip_size = _inline_image(
            page, f"{webserver}/assets/challenger", round_key, "imagined_rollouts",
            "GRPO's imagined rollouts", "/tmp/gymnast_dagster_grpo_rollouts.png",
        )  # fmt: skip
        browser.close()
    assert chart_src.startswith("data:image/png;base64,")
    assert chart_size[0] > 300 and chart_size[1] > 200  # decoded and drawn, not a broken image
    assert strip_src.startswith("data:image/png;base64,")
    assert strip_size[0] > 300 and strip_size[1] > 200  # rows of frames, drawn
    assert shot.stat().st_size > 10_000
    for name, text in materialized.items():
        assert "Materialized (1)" in text, name
        assert "Failed (0)" in text and "Materializing (0)" in text, name
    shutil.copy(shot, tmp_path / shot.name)


def _inline_image(page, asset_url: str, round_key: str, key: str, alt: str, screenshot: str):
    """The (src, natural size) of a PNG inlined in an asset's metadata ``key`` for the round:
    markdown over 1,000 characters sits behind "[Show Markdown]", whose dialog draws it."""
    page.goto(f"{asset_url}?view=partitions&partition={round_key}", wait_until="domcontentloaded")
    row = page.locator("tr", has_text=key).first
    row.wait_for(timeout=60_000)
    row.get_by_text("[Show Markdown]").first.click()
    image = page.locator(f'img[alt^="{alt}"]').first
    image.wait_for(state="visible", timeout=60_000)
    src = image.get_attribute("src") or ""
    size = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    page.screenshot(path=screenshot, full_page=True)
    return src, size
