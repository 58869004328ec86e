"""Rendering a personal re-engagement email from a dormant user's row (Jinja2, autoescaped HTML + text)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, UndefinedError, select_autoescape
from markupsafe import Markup

TEMPLATES_DIR = Path(__file__).parent / "templates"
TEMPLATE_VARIANTS = ("recap", "nudge", "last_call")
# Every variable a template may use; campaign files are checked against this set when they load.
TEMPLATE_VARIABLES = frozenset(
    {
        "first_name",
        "greeting_name",
        "declining",
        "days_inactive",
        "last_activity_date",
        "plan",
        "subscription_status",
        "cancel_at_period_end",
        "mrr",
        "product_name",
        "app_url",
        "sender_name",
        "postal_address",
        "unsubscribe_link",
        "subject",
        "last_actions",
        "topic",
    }
)

# Event types as phrases of "Last time, ...". Placeholders are event properties; a phrase whose
# property is missing falls back to the event type's bare phrase, never to an empty quote. A campaign
# may pass its own map (`EmailRenderer(phrases=...)`); event types it does not map are humanized.
ACTION_PHRASES: dict[str, tuple[str, str]] = {
    "create_project": ("you created the project “{{ project_name }}”", "you created a project"),
    "create_task": ("you added the task “{{ task_title }}” to {{ project_name }}", "you added a task"),
    "complete_task": ("you completed “{{ task_title }}”", "you completed a task"),
    "comment": ("you commented in {{ project_name }}", "you left a comment"),
    "invite_member": ("you invited a teammate", "you invited a teammate"),
    "upload_file": ("you uploaded {{ file_name }}", "you uploaded a file"),
    "view_dashboard": ("you checked the {{ dashboard }} dashboard", "you checked a dashboard"),
    "export_report": ("you exported a {{ format | upper }} report", "you exported a report"),
    "login": ("you signed in", "you signed in"),
}

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# snake_case / kebab-case machine names ("team_workload", "activity-feed"): never shown as they are. File
# names ("meeting-notes.docx") and anything with a capital or a space are a person's words and stay.
_IDENTIFIER = re.compile(r"[a-z][a-z0-9]*(?:[_-][a-z0-9]+)+")
# How the copy addresses the reader without a name: "Hi there," reads well; "Still there, there?" does not,
# so subjects are written with and without a name instead of filling a blank.
GREETING_FALLBACK = "there"


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


def clean_text(value: Any, max_length: int = 120) -> str:
    """Printable, single-line, bounded: names and event properties come from users."""
    text = unicodedata.normalize("NFC", str(value))
    text = _CONTROL_CHARACTERS.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= max_length else text[: max_length - 1].rstrip() + "…"


def first_name(name: str | None) -> str | None:
    """The first word of the name, or None: templates phrase a missing name themselves."""
    cleaned = clean_text(name or "", 60)
    return cleaned.split(" ")[0] if cleaned else None


def humanize(value: Any) -> str:
    """`team_workload` -> `team workload`; anything that is not a machine name is returned cleaned, as is."""
    text = clean_text(value, 80)
    return text.replace("_", " ").replace("-", " ") if _IDENTIFIER.fullmatch(text) else text


def pluralize(count: int, singular: str, plural: str | None = None) -> str:
    """`1 day`, `2 days` (a Jinja filter: `{{ days_inactive | pluralize("day") }}`)."""
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


class EmailRenderer:
    """Two environments over the same templates: autoescaped for HTML, plain for text and subjects."""

    def __init__(
        self,
        templates_dir: Path | list[Path] = TEMPLATES_DIR,
        phrases: Mapping[str, tuple[str, str]] | None = None,
        variants: tuple[str, ...] | list[str] = TEMPLATE_VARIANTS,
    ):
        self.variants = tuple(variants)
        loader = FileSystemLoader([str(d) for d in templates_dir] if isinstance(templates_dir, list) else templates_dir)
        self._html = Environment(
            loader=loader,
            autoescape=select_autoescape(["html", "html.j2"], default=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._plain = Environment(
            loader=loader, autoescape=False, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True
        )
        for environment in (self._html, self._plain):
            environment.filters["pluralize"] = pluralize
        self.phrases: Mapping[str, tuple[str, str]] = ACTION_PHRASES if phrases is None else phrases
        # Compiling a phrase costs about a millisecond and an email has up to a dozen of them; the phrase
        # sources are the phrase map (user data only ever travels as variables), so this stays small.
        self._phrases: dict[tuple[bool, str], Template] = {}

    def _phrase_template(self, html: bool, source: str) -> Template:
        key = (html, source)
        if key not in self._phrases:
            self._phrases[key] = (self._html if html else self._plain).from_string(source)
        return self._phrases[key]

    def phrase(self, action: dict, html: bool) -> str:
        """The action as a phrase; in HTML already escaped (Markup), so templates do not escape it twice."""
        event_type = str(action.get("event_type") or "")
        with_properties, bare = self.phrases.get(event_type, ("", f"you used {humanize(event_type)}"))
        properties = {k: humanize(v) for k, v in (action.get("properties") or {}).items() if isinstance(k, str)}
        rendered = self._phrase_template(html, "{{ bare }}").render(bare=bare)
        if with_properties:
            try:
                # As one mapping, not keywords: a property named `self` must not collide with render()'s own argument.
                rendered = self._phrase_template(html, with_properties).render(properties)
            except UndefinedError:
                pass
        return Markup(rendered) if html else rendered

    def render(self, variant: str, user: dict, campaign: dict, unsubscribe_link: str) -> RenderedEmail:
        if variant not in self.variants:
            raise ValueError(f"unknown template variant {variant!r}; known: {self.variants}")
        actions = list(user.get("last_actions") or [])
        days_inactive = int(user.get("days_inactive") or 0)
        name = first_name(user.get("name"))
        context = {
            "first_name": name,
            "greeting_name": name or GREETING_FALLBACK,
            # Declining users were here recently, just less: "0 days since your last visit" is wrong for them.
            "declining": user.get("segment_reason") == "declining" or days_inactive < 1,
            "days_inactive": days_inactive,
            "last_activity_date": _human_date(user.get("last_activity_at")),
            "plan": clean_text(user["plan_name"], 40) if user.get("plan_name") else None,
            "subscription_status": user.get("subscription_status") or "none",
            "cancel_at_period_end": bool(user.get("cancel_at_period_end")),
            "mrr": f"${int(user.get('mrr_cents') or 0) / 100:,.2f}",
            "topic": campaign.get("topic"),
            "product_name": clean_text(campaign["product_name"], 40),
            "app_url": campaign["app_url"],
            "sender_name": clean_text(campaign["sender_name"] or campaign["product_name"], 80),
            "postal_address": clean_text(campaign["postal_address"], 200),
            "unsubscribe_link": unsubscribe_link,
        }
        if not context["postal_address"]:
            raise ValueError("every email's footer needs the sender's postal address (campaign postal_address)")
        subject = clean_text(self._plain.get_template(f"{variant}.subject.j2").render(**context), 150)
        html = self._html.get_template(f"{variant}.html.j2").render(
            subject=subject, last_actions=[self.phrase(a, html=True) for a in actions], **context
        )
        text = self._plain.get_template(f"{variant}.txt.j2").render(
            subject=subject, last_actions=[self.phrase(a, html=False) for a in actions], **context
        )
        return RenderedEmail(subject=subject, html=html, text=text)


def _human_date(value: Any) -> str:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return f"{value.strftime('%B')} {value.day}, {value.year}"
    return "your last visit"
