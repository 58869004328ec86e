"""`retention-pipeline campaigns check`, `preview` and `send-test`: the campaign files, as a person checks them."""

from __future__ import annotations

import contextlib
import uuid

import click

from retention_pipeline.cli import _say, environment, main
from retention_pipeline.settings import STATE_DIR


class _OneLine(click.ClickException):
    """An argument that names nothing to preview or send: one line, exit code 2 like every usage error."""

    exit_code = 2


@main.group()
def campaigns() -> None:
    """The campaign files (RETENTION_CAMPAIGNS_DIR, default campaigns/ of the repository)."""


@campaigns.command("check")
def campaigns_check() -> None:
    """Validate every campaign (fields, audience, templates and their variables) and print one line each.

    A problem is one line naming the file, every problem is listed, and the exit code is 2.
    """
    from retention_pipeline.outreach.audience import describe_audience
    from retention_pipeline.outreach.campaigns import campaign_directories, campaigns_dir, load_campaigns

    root = campaigns_dir()
    if root.is_dir() and not campaign_directories(root):
        click.echo(
            f"{root}: no campaign files; runs use the single campaign of retention.yaml's plan_reengagement_sends "
            "with the built-in templates."
        )
        return
    for c in load_campaigns(root, include_disabled=True):
        state = "disabled" if not c.enabled else "paused" if c.paused else "enabled"
        steps = "; ".join(f"step {s.step} after {s.delay_days} d: {'/'.join(s.variants)}" for s in c.steps)
        click.echo(
            f"{c.name}: ok, {state}, priority {c.priority}, topic {c.topic}"
            f"{' (transactional)' if c.transactional else ''}, holdout {c.holdout_share:.0%}, {steps}; "
            f"audience: {describe_audience(c.audience)}"
        )


def _rendered(campaign_name: str, step_number: int, as_of, user_id: int | None, resources):
    """The preview of one email as the configured sender would get it."""
    from retention_pipeline import clock
    from retention_pipeline.outreach.campaign import CampaignConfig
    from retention_pipeline.outreach.preview import PreviewError, campaign_named, identity, preview, step_of

    try:
        config = identity(CampaignConfig(), resources.email_sender.live)
        campaign = campaign_named(campaign_name, config)
        day = as_of.date() if as_of else clock.latest_complete_day()
        return preview(
            resources.app_db, config, campaign, step_of(campaign, step_number), day, resources.unsubscribe_links, user_id
        )
    except PreviewError as exc:
        raise _OneLine(str(exc)) from None


@contextlib.contextmanager
def _email_resources():
    """The code location's own database, sender and unsubscribe links, initialized as a run would."""
    from dagster import build_resources

    from retention_pipeline.definitions import defs

    with build_resources({key: defs.resources[key] for key in ("app_db", "email_sender", "unsubscribe_links")}) as built:
        yield built


_EMAIL_OPTIONS = [
    click.option("--campaign", "campaign_name", required=True, help="Campaign name (its directory under campaigns/)."),
    click.option("--user-id", type=int, default=None, help="Render for this user; default: the first user the step would email."),
    click.option("--step", "step_number", default=1, show_default=True, type=click.IntRange(min=1), help="Step of the sequence."),
    click.option(
        "--date",
        "as_of",
        type=click.DateTime(formats=["%Y-%m-%d"]),
        default=None,
        help="As-of day YYYY-MM-DD (default: yesterday, the day the morning run plans).",
    ),
]


def _email_options(command):
    for option in reversed(_EMAIL_OPTIONS):
        command = option(command)
    return command


@main.command()
@_email_options
def preview(campaign_name: str, user_id: int | None, step_number: int, as_of) -> None:
    """Render exactly what a campaign step would send one user: headers, subject and text here, the HTML to a file.

    Reads the day's dormant users and writes nothing to the ledger: the preview's unsubscribe link names no send.
    """
    with environment() as env:
        for note in env.notes:
            _say(note)
        with _email_resources() as resources:
            shown = _rendered(campaign_name, step_number, as_of, user_id, resources)
    payload = shown.payload
    folder = STATE_DIR / "previews"
    folder.mkdir(parents=True, exist_ok=True)
    html_path = folder / f"{shown.campaign}-step{shown.step}-user{shown.user_id}-{shown.as_of}.html"
    html_path.write_text(payload["html"])
    held = " HOLDOUT: this user is held out and gets nothing; shown as the variant would read." if shown.holdout else ""
    click.echo(
        f"Campaign {shown.campaign}, step {shown.step}, variant {shown.variant}, user {shown.user_id}, as of {shown.as_of}.{held}"
    )
    click.echo(f"From: {payload['from_address']}\nTo: {payload['to']}\nSubject: {payload['subject']}")
    click.echo("".join(f"{name}: {value}\n" for name, value in payload["headers"].items()), nl=False)
    click.echo("Tags: " + ", ".join(f"{k}={v}" for k, v in payload["tags"].items()))
    click.echo("\n" + payload["text"])
    click.echo(f"HTML written to {html_path}")


@main.command("send-test")
@_email_options
@click.option("--to", "to_address", required=True, help="Where the test email goes (instead of the user's address).")
def send_test(campaign_name: str, user_id: int | None, step_number: int, as_of, to_address: str) -> None:
    """Send one rendered email of a campaign step to ADDRESS through the configured sender (Resend, SMTP or the
    outbox), outside the ledger and the outcomes: no ledger row, no holdout, no frequency cap."""

    from retention_pipeline.outreach.preview import ADDRESS
    from retention_pipeline.outreach.senders import OutgoingEmail, SenderConfigurationError

    if not ADDRESS.fullmatch(to_address):
        raise click.BadParameter(f"{to_address!r} is not an email address.", param_hint="'--to'")
    with environment() as env:
        for note in env.notes:
            _say(note)
        with _email_resources() as resources:
            shown = _rendered(campaign_name, step_number, as_of, user_id, resources)
            payload = shown.payload | {"to": to_address, "tags": shown.payload["tags"] | {"test": "1"}}
            try:
                outcome = resources.email_sender.send_batch(
                    [OutgoingEmail(**payload)], idempotency_key=f"send-test-{uuid.uuid4().hex}"
                )
            except SenderConfigurationError as exc:
                raise _OneLine(str(exc)) from None
            sender = resources.email_sender.name
    if outcome.error or not outcome.provider_ids:
        raise _OneLine(f"{sender} did not accept the test email: {outcome.error or 'no message id returned'}")
    click.echo(
        f"Sent {shown.campaign} step {shown.step} (variant {shown.variant}, rendered for user {shown.user_id}) to "
        f"{to_address} through {sender}: message id {outcome.provider_ids[0]}."
    )
