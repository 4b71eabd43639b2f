"""``GET /v1/consumers`` reports the personalization processor's consumer group (on both
of its topics) next to the profiles processor's, with the lag it really has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tessera.api.app import create_app
from tessera.runtime import Runtime
from tests.personalization.helpers import config_with
from tests.personalization.test_api import Client, member

READ = {"Authorization": "Bearer rk_read_123"}


def lags(body: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    return {(c["group"], c["topic"]): c["lag"] for c in body}


async def test_the_personalization_group_is_listed_with_its_lag(api: Client) -> None:
    await member(api, "M-1", consent=True, tows=2)  # four events
    before = lags(await api.get("/v1/consumers", headers=READ))
    assert before[("profiles", "events")] == 4
    assert before[("personalization", "events")] == 4  # nothing read yet either

    await api.runtime.worker().run_until_idle()  # the profiles processor only
    middle = lags(await api.get("/v1/consumers", headers=READ))
    assert middle[("profiles", "events")] == 0
    assert middle[("personalization", "events")] == 4
    assert middle[("personalization", "derived")] > 0  # profile.updated and the like

    await api.service.run_until_idle()
    after = lags(await api.get("/v1/consumers", headers=READ))
    assert after[("personalization", "events")] == 0
    assert after[("personalization", "derived")] == 0
    assert (await api.http.get("/v1/consumers")).status_code == 401


async def test_no_personalization_group_where_personalization_is_off(tmp_path: Path) -> None:
    runtime = Runtime(config_with({}), tmp_path / "data")
    app = create_app(runtime)
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://tessera.test") as http):
        response = await http.get("/v1/consumers", headers=READ)
    assert response.status_code == 200, response.text
    groups = {c["group"] for c in response.json()}
    assert "profiles" in groups and "personalization" not in groups


async def test_metrics_report_the_groups_of_processors_in_other_processes(api: Client) -> None:
    """The processors run in worker processes of their own, so the API process scrapes the
    lag of every group the configuration runs, not only the groups registered in it."""
    from tests.observability.test_metrics import scraped

    await member(api, "M-2", consent=True, tows=1)  # three events
    text = (await api.http.get("/metrics")).text
    assert scraped(text, "tessera_consumer_lag", topic="events", group="profiles") == 3
    assert scraped(text, "tessera_consumer_lag", topic="events", group="personalization") == 3

    await api.process()
    text = (await api.http.get("/metrics")).text
    assert scraped(text, "tessera_consumer_lag", topic="events", group="personalization") == 0
    assert scraped(text, "tessera_consumer_lag", topic="derived", group="personalization") == 0


def test_journey_groups_are_watched_where_journeys_are_configured() -> None:
    from tessera.config import load_config
    from tessera.observability.metrics import watched_groups

    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "examples" / "activation" / "tessera.yaml")
    assert config.journeys
    assert {("events", "journeys"), ("derived", "journeys")} <= set(watched_groups(config))
    assert not {g for _, g in watched_groups(config_with({}))} & {"journeys", "personalization"}
