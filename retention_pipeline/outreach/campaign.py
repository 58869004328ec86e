"""The re-engagement campaign: steps, variants, holdout, frequency cap, guards. Every field shows in the launchpad.

Defaults come from the `plan_reengagement_sends` section of the thresholds file (retention.yaml,
`retention_pipeline.thresholds`), so a campaign setting made there lasts; one made in the launchpad lasts a run."""

from __future__ import annotations

from dagster import Config, Failure
from pydantic import Field, field_validator, model_validator

from retention_pipeline.outreach.render import TEMPLATE_VARIANTS
from retention_pipeline.thresholds import check_section, file_default, reject_clearly


class CampaignStep(Config):
    """One email of the sequence."""

    step: int = Field(ge=1, le=10, description="Position in the sequence, 1 = the first email.")
    delay_days: int = Field(
        ge=0, description="Days after the previous step's send (step 1: after the user became dormant) before this step is due."
    )
    variants: list[str] = Field(
        min_length=1, description="Template variants to split users between (A/B). See README: templates."
    )

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, variants: list[str]) -> list[str]:
        unknown = sorted(set(variants) - set(TEMPLATE_VARIANTS))
        if unknown:
            raise ValueError(f"unknown template variant(s) {unknown}; known: {sorted(TEMPLATE_VARIANTS)}")
        return variants


# Only ever in the outbox, dry runs and paused runs: a live send without a real address fails instead.
DEMO_POSTAL_ADDRESS = "[Demo address: configure a real postal address before live sends] 1 Example Street, Springfield"


SECTION = "plan_reengagement_sends"


def _default_steps() -> list[CampaignStep]:
    return [CampaignStep(**step) for step in file_default(SECTION, "steps")]


def _from_file(key: str):
    return file_default(SECTION, key)


class CampaignConfig(Config):
    """A re-engagement email sequence for dormant users. Defaults are safe for production."""

    campaign: str = Field(
        default=_from_file("campaign"),
        pattern=r"^[a-z0-9_-]{1,40}$",
        description="Without campaign files only: the campaign's name (ledger key, Resend tag).",
    )
    from_address: str = Field(
        default=_from_file("from_address"), description="From header; a verified Resend domain in production."
    )
    product_name: str = Field(default=_from_file("product_name"), description="How the emails name the product.")
    app_url: str = Field(default=_from_file("app_url"), description="Where the call-to-action button points.")
    sender_name: str = Field(
        default=_from_file("sender_name"),
        description="Who sends, as the footer names it (e.g. the company's legal name); empty = product_name.",
    )
    postal_address: str = Field(
        default=_from_file("postal_address"),
        description="The sender's physical postal address, shown in every footer (CAN-SPAM). Required for live sends; "
        "empty is allowed only for the outbox, dry runs and paused runs, which show a clearly-marked demo address.",
    )
    unsubscribe_url: str = Field(
        default=_from_file("unsubscribe_url"),
        description="Public URL of the Flask blueprint's unsubscribe endpoint; the signed token is appended.",
    )
    steps: list[CampaignStep] = Field(
        default_factory=_default_steps,
        description="Without campaign files only: the sequence; it stops as soon as the user returns.",
    )
    holdout_share: float = Field(
        default=_from_file("holdout_share"),
        ge=0.0,
        le=0.5,
        description="Without campaign files only: share of assignments held out (not emailed), to measure lift: drawn "
        "afresh for each step of each dormancy episode (stable hash of campaign, step, user and episode start).",
    )
    cooldown_days: int = Field(
        default=_from_file("cooldown_days"),
        ge=0,
        description="The global frequency cap: no person gets more than one email (or holdout assignment) of all "
        "campaigns together per this many days; the campaign planned first (priority) wins.",
    )
    paused: bool = Field(
        default=_from_file("paused"),
        description="Kill switch: when true nothing is planned or sent, not even batches a crashed run left pending "
        "(they stay pending; the next unpaused run sends them if within the provider's 23 h key horizon).",
    )
    dry_run: bool = Field(
        default=_from_file("dry_run"),
        description="Render what the live run would send into retention.email_dry_runs; sends nothing, writes no "
        "ledger or holdout rows, so a live run of the same day sends exactly what it would have.",
    )
    max_send_lag_days: int = Field(
        default=_from_file("max_send_lag_days"),
        ge=0,
        description="A run whose partitions are all older than this (against today's clock) sends "
        "nothing, not even batches left pending by a crashed run: backfills never send.",
    )
    adaptive_allocation: bool = Field(
        default=_from_file("adaptive_allocation"),
        description="Allocate variants by measured returns (Thompson sampling); off = stable hash split.",
    )
    primary_window_days: int = Field(
        default=_from_file("primary_window_days"),
        ge=1,
        description="With adaptive allocation: the attribution window whose returns drive allocation and pausing.",
    )
    min_exploration_share: float = Field(
        default=_from_file("min_exploration_share"),
        ge=0.0,
        le=1.0,
        description="With adaptive allocation: every variant keeps at least this share per step.",
    )
    sequential_alpha: float = Field(
        default=_from_file("sequential_alpha"),
        gt=0.0,
        lt=0.5,
        description="With adaptive allocation: error rate of auto-pause and of declaring a winner over the whole campaign, "
        "however many daily looks (always-valid confidence sequence).",
    )
    sequential_effect_scale: float = Field(
        default=_from_file("sequential_effect_scale"),
        gt=0.0,
        le=1.0,
        description="With adaptive allocation: the lift in return rate (0.05 = 5 points) the always-valid test is tuned to "
        "detect soonest (its normal mixture's standard deviation).",
    )
    min_decision_sample: int = Field(
        default=_from_file("min_decision_sample"),
        ge=1,
        description="With adaptive allocation: users with a closed window each arm (and each variant) needs before any "
        "pause or winner decision.",
    )
    success_event_types: list[str] = Field(
        default_factory=lambda: list(_from_file("success_event_types")),
        description="What counts as coming back: these event types only (e.g. create_task, complete_task); empty = any event.",
    )
    success_min_events: int = Field(
        default=_from_file("success_min_events"),
        ge=1,
        description="Qualifying events within the attribution window a return needs (1 = the first one).",
    )
    resume_steps: list[int] = Field(
        default_factory=lambda: list(_from_file("resume_steps")),
        description="Steps paused for review that a reviewer resumed: they send again and are not auto-paused again.",
    )

    @model_validator(mode="after")
    def _steps_in_order(self) -> CampaignConfig:
        numbers = [s.step for s in self.steps]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"steps must be numbered 1..n in order, got {numbers}")
        return self

    def with_footer_identity(self, live_sender: bool) -> CampaignConfig:
        """This config with a postal address for the footer, or a Failure before anything is rendered or sent."""
        if self.postal_address.strip():
            return self
        if live_sender and not (self.dry_run or self.paused):
            raise Failure(
                description="Campaign config postal_address is empty: commercial email must carry the sender's postal "
                "address (CAN-SPAM). Set postal_address (and sender_name) in the campaign config before a live send.",
                allow_retries=False,
            )
        return self.model_copy(update={"postal_address": DEMO_POSTAL_ADDRESS})

    # Declared last, so it wraps every check above (steps included): invalid config fails the plan op at
    # once with every bad field named, instead of being retried like a database error, before anything is
    # written or sent.
    _clear_errors = model_validator(mode="wrap")(classmethod(reject_clearly))


check_section(CampaignConfig, SECTION)
