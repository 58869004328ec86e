"""A campaign's success as the team defines it: any event (default) or meaningful event types with a
minimum count, from the CampaignConfig through the send plan into the outcomes."""

from datetime import timedelta

import pytest

from retention_pipeline.outreach.campaign import CampaignConfig
from retention_pipeline.outreach.planning import record_success_definition, run_config_campaign
from retention_pipeline.schema import install_schema
from retention_pipeline_tests.scenario import Scenario
from retention_pipeline_tests.test_outcomes import (
    SEND_DAY,
    SENT_AT,
    add_send,
    evaluate,
    outcomes,
)


@pytest.fixture
def mixed_returns(app_db_env):
    db = app_db_env
    install_schema(db)
    s = Scenario(db)
    for user_id in range(1, 5):
        s.user(user_id, SENT_AT - timedelta(days=90))
        add_send(db, user_id, user_id)
    s.event(1, SENT_AT + timedelta(hours=1), "view_dashboard")  # opened the app once
    s.event(2, SENT_AT + timedelta(hours=2), "create_task")  # real work, twice
    s.event(2, SENT_AT + timedelta(days=2), "complete_task")
    s.event(3, SENT_AT + timedelta(days=1), "complete_task")  # real work, once
    s.event(3, SENT_AT + timedelta(days=1, hours=1), "login")
    # user 4: never returns
    return db


def test_success_defaults_to_any_event(mixed_returns, instance):
    record_success_definition(mixed_returns, run_config_campaign(CampaignConfig()))
    evaluate(instance, SEND_DAY + timedelta(days=20))
    o = outcomes(mixed_returns)
    assert [o[(u, 7)]["returned"] for u in (1, 2, 3, 4)] == [True, True, True, False]
    assert o[(3, 7)]["events"] == 2


def test_success_counts_only_meaningful_events_with_a_minimum(mixed_returns, instance):
    config = CampaignConfig(success_event_types=["create_task", "complete_task"], success_min_events=2)
    record_success_definition(mixed_returns, run_config_campaign(config))
    evaluate(instance, SEND_DAY + timedelta(days=20))
    o = outcomes(mixed_returns)
    assert [o[(u, 7)]["returned"] for u in (1, 2, 3, 4)] == [False, True, False, False]
    assert o[(2, 7)]["first_returned_at"] == SENT_AT + timedelta(days=2), "the return is the second qualifying event"
    assert not o[(2, 1)]["returned"], "only one qualifying event within the first day"
    assert o[(3, 7)]["events"] == 1 and o[(1, 7)]["events"] == 0, "events count qualifying ones only"


def test_success_of_one_meaningful_event(mixed_returns, instance):
    record_success_definition(
        mixed_returns, run_config_campaign(CampaignConfig(success_event_types=["create_task", "complete_task"]))
    )
    evaluate(instance, SEND_DAY + timedelta(days=20))
    o = outcomes(mixed_returns)
    assert [o[(u, 7)]["returned"] for u in (1, 2, 3, 4)] == [False, True, True, False]


def test_success_min_events_must_be_positive():
    with pytest.raises(Exception, match="success_min_events"):
        CampaignConfig(success_min_events=0)
