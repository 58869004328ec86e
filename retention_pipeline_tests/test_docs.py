"""The README's configuration reference names every field a user can set."""

from pathlib import Path

import pytest

from retention_pipeline.activity.config import SnapshotConfig
from retention_pipeline.billing.resource import StripeResource
from retention_pipeline.outcomes.assets import OutcomeConfig, PerformanceConfig
from retention_pipeline.outreach.campaign import CampaignConfig, CampaignStep
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.outreach.senders.smtp import SmtpSender
from retention_pipeline.resources import AppDatabase, SourceTables
from retention_pipeline.segments.config import DormancyThresholds, SegmentThresholds

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("config_class", [SnapshotConfig, SegmentThresholds, DormancyThresholds, CampaignConfig, CampaignStep,
                                          OutcomeConfig, PerformanceConfig, AppDatabase, SourceTables, StripeResource, ResendSender,
                                          SmtpSender])
def test_every_config_field_is_documented(config_class):
    missing = [name for name, field in config_class.model_fields.items()
               if f"`{name}`" not in README or not field.description]
    assert not missing, f"{config_class.__name__}: fields missing from the README or without a description: {missing}"


@pytest.mark.parametrize("script", ["roles.sql", "retention-grants.sql"])
def test_the_readmes_role_sql_is_the_file_the_tests_run(script):
    """retention_pipeline_tests/roles.py runs these files through psql; the README shows them verbatim."""
    from retention_pipeline_tests.roles import DEPLOY

    text = (DEPLOY / script).read_text()
    assert f"```sql\n{text}```" in README, f"README.md does not show deploy/{script} as written"
    assert f"-f deploy/{script}" in text
