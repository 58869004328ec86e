"""The re-engagement campaign: steps, variants, holdout, frequency cap, guards. All in the launchpad."""

from __future__ import annotations

from dagster import Config
from pydantic import Field, field_validator, model_validator

from retention_pipeline.outreach.render import TEMPLATE_VARIANTS
from retention_pipeline.segments.config import _reject_clearly


class CampaignStep(Config):
    """One email of the sequence."""

    step: int = Field(ge=1, le=10, description="Position in the sequence, 1 = the first email.")
    delay_days: int = Field(
        ge=0, description="Days after the previous step's send (step 1: after the user became dormant) before this step is due."
    )
    variants: list[str] = Field(min_length=1, description="Template variants to split users between (A/B). See README: templates.")

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, variants: list[str]) -> list[str]:
        unknown = sorted(set(variants) - set(TEMPLATE_VARIANTS))
        if unknown:
            raise ValueError(f"unknown template variant(s) {unknown}; known: {sorted(TEMPLATE_VARIANTS)}")
        return variants


def _default_steps() -> list[CampaignStep]:
    return [
        CampaignStep(step=1, delay_days=0, variants=["recap", "nudge"]),
        # 14 days: the default frequency cap would hold back anything sooner.
        CampaignStep(step=2, delay_days=14, variants=["last_call"]),
    ]


class CampaignConfig(Config):
    """A re-engagement email sequence for dormant users. Defaults are safe for production."""

    campaign: str = Field(default="winback", pattern=r"^[a-z0-9_-]{1,40}$", description="Campaign name (ledger key, Resend tag).")
    from_address: str = Field(default="Acme <hello@example.com>", description="From header; a verified Resend domain in production.")
    product_name: str = Field(default="Acme", description="How the emails name the product.")
    app_url: str = Field(default="https://app.example.com", description="Where the call-to-action button points.")
    unsubscribe_url: str = Field(
        default="http://127.0.0.1:5000/retention/unsubscribe",
        description="Public URL of the Flask blueprint's unsubscribe endpoint; the signed token is appended.",
    )
    steps: list[CampaignStep] = Field(default_factory=_default_steps, description="The sequence; it stops as soon as the user returns.")
    holdout_share: float = Field(
        default=0.1, ge=0.0, le=0.5, description="Share of users never emailed, to measure lift (stable hash of user and campaign)."
    )
    cooldown_days: int = Field(default=14, ge=0, description="No user gets more than one re-engagement email per this many days.")
    paused: bool = Field(
        default=False,
        description="Kill switch: when true nothing is planned or sent, not even batches a crashed run left pending "
        "(they stay pending; the next unpaused run sends them if within the provider's 23 h key horizon).",
    )
    dry_run: bool = Field(
        default=False,
        description="Render what the live run would send into retention.email_dry_runs; sends nothing, writes no "
        "ledger or holdout rows, so a live run of the same day sends exactly what it would have.",
    )
    max_send_lag_days: int = Field(
        default=1, ge=0, description="A run whose partitions are all older than this (against today's clock) sends "
        "nothing, not even batches left pending by a crashed run: backfills never send."
    )
    adaptive_allocation: bool = Field(
        default=False, description="Allocate variants by measured returns (Thompson sampling); off = stable hash split."
    )
    primary_window_days: int = Field(
        default=7, ge=1, description="With adaptive allocation: the attribution window whose returns drive allocation and pausing."
    )
    min_exploration_share: float = Field(
        default=0.1, ge=0.0, le=1.0, description="With adaptive allocation: every variant keeps at least this share per step."
    )

    @model_validator(mode="after")
    def _steps_in_order(self) -> "CampaignConfig":
        numbers = [s.step for s in self.steps]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"steps must be numbered 1..n in order, got {numbers}")
        return self

    # Declared last, so it wraps every check above (steps included): invalid config fails the plan op at
    # once with every bad field named, instead of being retried like a database error, before anything is
    # written or sent.
    _clear_errors = model_validator(mode="wrap")(classmethod(_reject_clearly))
