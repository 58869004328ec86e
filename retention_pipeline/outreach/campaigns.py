"""Campaigns as files: `campaigns/<name>/campaign.yaml` plus its Jinja2 templates, loaded and checked at load time.

A campaign directory holds `campaign.yaml`, the subject, HTML and text template of every variant its steps
name (`<variant>.subject.j2`, `<variant>.html.j2`, `<variant>.txt.j2`) and optionally `phrases.yaml`
(event type -> [phrase with properties, bare phrase]). Templates may extend or include the shared ones in
`campaigns/_shared/` (the layout and the footer). Every problem found is one line naming the file, and all
of them are reported together, so one `campaigns check` shows everything to fix.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from jinja2 import Environment, FileSystemLoader, TemplateError, TemplateNotFound, TemplateSyntaxError, meta
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retention_pipeline.errors import SettingsError
from retention_pipeline.outreach.audience import Audience, audience_problems
from retention_pipeline.outreach.render import ACTION_PHRASES, TEMPLATE_VARIABLES, EmailRenderer
from retention_pipeline.settings import PROJECT_ROOT

SHARED_DIR_NAME = "_shared"
TEMPLATE_KINDS = ("subject", "html", "txt")
NAME_PATTERN = re.compile(r"^[a-z0-9_-]{1,40}$")


class CampaignFilesError(SettingsError):
    """Campaign files that cannot be used: one line per problem (the console script prints each, exit 2)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Strict):
    step: int = Field(ge=1, le=10)
    delay_days: int = Field(ge=0)
    variants: list[str] = Field(min_length=1)


class Success(_Strict):
    """What counts as coming back: these event types only (empty = any event), at least min_events of them."""

    event_types: list[str] = Field(default_factory=list)
    min_events: int = Field(default=1, ge=1)


class Sender(_Strict):
    from_address: str | None = None
    sender_name: str | None = None


class CampaignFile(_Strict):
    """The fields of campaign.yaml (docs/campaigns.md describes each)."""

    description: str = ""
    enabled: bool = True
    paused: bool = False
    priority: int = Field(ge=0, le=1000)
    topic: str = Field(pattern=r"^[a-z0-9_-]{1,40}$")
    transactional: bool = False
    audience: Audience = Field(default_factory=Audience)
    steps: list[Step] = Field(min_length=1)
    holdout_share: float = Field(ge=0.0, le=0.5)
    success: Success = Field(default_factory=Success)
    sender: Sender = Field(default_factory=Sender)
    resume_steps: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _steps_in_order(self) -> CampaignFile:
        numbers = [s.step for s in self.steps]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"steps must be numbered 1..n in order, got {numbers}")
        return self


@dataclass(frozen=True)
class Campaign:
    """A campaign as the planner runs it, from a file or (without campaign files) from the run config."""

    name: str
    priority: int
    topic: str | None
    transactional: bool
    paused: bool
    audience: Audience
    steps: tuple[Step, ...]
    holdout_share: float
    success_event_types: tuple[str, ...]
    success_min_events: int
    from_address: str | None
    sender_name: str | None
    resume_steps: tuple[int, ...]
    renderer: EmailRenderer = field(compare=False, repr=False)
    directory: Path | None = None
    description: str = ""
    enabled: bool = True

    @property
    def variants(self) -> list[str]:
        return sorted({v for s in self.steps for v in s.variants})


def campaigns_dir() -> Path:
    """RETENTION_CAMPAIGNS_DIR, else the repository's campaigns/ (checked by settings.check_environment)."""
    return Path(os.environ.get("RETENTION_CAMPAIGNS_DIR") or PROJECT_ROOT / "campaigns").resolve()


@contextmanager
def without_campaign_files(scratch: Path) -> Iterator[None]:
    """Plan only the run config's single campaign while inside (the simulation models exactly that one campaign):
    RETENTION_CAMPAIGNS_DIR points at an empty directory under `scratch` and is restored afterwards."""
    previous = os.environ.get("RETENTION_CAMPAIGNS_DIR")
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="no-campaigns-") as empty:
        os.environ["RETENTION_CAMPAIGNS_DIR"] = empty
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("RETENTION_CAMPAIGNS_DIR", None)
            else:
                os.environ["RETENTION_CAMPAIGNS_DIR"] = previous


def campaign_directories(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def file_campaigns(root: Path | None = None) -> list[Campaign]:
    """The enabled campaigns of the directory, checked; [] when it holds no campaign directory (the run config's
    single campaign then runs, as before campaign files)."""
    root = root or campaigns_dir()
    if root.is_dir() and not campaign_directories(root):
        return []
    return load_campaigns(root)


def load_campaigns(root: Path | None = None, include_disabled: bool = False) -> list[Campaign]:
    """Every campaign of the directory in priority order (then by name), or CampaignFilesError with every problem."""
    root = root or campaigns_dir()
    if not root.is_dir():
        raise CampaignFilesError(
            [
                f"RETENTION_CAMPAIGNS_DIR={str(root)!r} is not a directory; point it at the folder of "
                "campaign directories, or unset it for the repository's campaigns/."
            ]
        )
    problems: list[str] = []
    loaded: list[Campaign] = []
    for directory in campaign_directories(root):
        campaign, found = _load_campaign(directory, root / SHARED_DIR_NAME)
        problems += found
        if campaign is not None and (include_disabled or campaign.enabled):
            loaded.append(campaign)
    priorities: dict[int, list[str]] = {}
    for campaign in loaded:
        priorities.setdefault(campaign.priority, []).append(campaign.name)
    problems += [
        f"{root}: campaigns {names} share priority {priority}; give each its own (lower goes first)"
        for priority, names in sorted(priorities.items())
        if len(names) > 1
    ]
    if problems:
        raise CampaignFilesError(problems)
    return sorted(loaded, key=lambda c: (c.priority, c.name))


def _load_campaign(directory: Path, shared: Path) -> tuple[Campaign | None, list[str]]:
    name = directory.name
    path = directory / "campaign.yaml"
    if not NAME_PATTERN.fullmatch(name):
        return None, [
            f"{directory}: campaign directory names are the ledger's campaign name: lowercase letters, digits, "
            "_ or -, at most 40 characters"
        ]
    if not path.is_file():
        return None, [f"{path}: missing (every campaign directory needs a campaign.yaml)"]
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return None, [f"{path}: not valid YAML ({' '.join(str(exc).split())})"]
    if not isinstance(data, dict):
        return None, [f"{path}: expected a mapping of campaign fields"]
    try:
        spec = CampaignFile(**data)
    except ValidationError as exc:
        return None, [f"{path}: {_field_problem(error)}" for error in exc.errors()]
    problems: list[str] = []
    phrases = _load_phrases(directory / "phrases.yaml", problems)
    variants = sorted({v for s in spec.steps for v in s.variants})
    problems += [f"{path}: audience: {problem}" for problem in audience_problems(spec.audience)]
    problems += check_templates(directory, shared, variants)
    problems += [
        f"{path}: resume_steps names step {n}, which the campaign does not have"
        for n in spec.resume_steps
        if n not in {s.step for s in spec.steps}
    ]
    if problems:
        return None, problems
    renderer = EmailRenderer(templates_dir=[directory, shared], phrases=phrases, variants=variants)
    return Campaign(
        name=name,
        priority=spec.priority,
        topic=spec.topic,
        transactional=spec.transactional,
        paused=spec.paused,
        audience=spec.audience,
        steps=tuple(spec.steps),
        holdout_share=spec.holdout_share,
        success_event_types=tuple(sorted(set(spec.success.event_types))),
        success_min_events=spec.success.min_events,
        from_address=spec.sender.from_address,
        sender_name=spec.sender.sender_name,
        resume_steps=tuple(spec.resume_steps),
        renderer=renderer,
        directory=directory,
        description=spec.description,
        enabled=spec.enabled,
    ), []


def _field_problem(error: dict) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    if error["type"] == "missing":
        return f"missing field {where!r}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message} (got {error['input']!r})" if where else message


def _load_phrases(path: Path, problems: list[str]) -> dict[str, tuple[str, str]]:
    """The campaign's phrase map over the built-in one: event type -> [phrase with properties, bare phrase]."""
    if not path.is_file():
        return dict(ACTION_PHRASES)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        problems.append(f"{path}: not valid YAML ({' '.join(str(exc).split())})")
        return {}
    phrases = dict(ACTION_PHRASES)
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a mapping event_type: [phrase with properties, bare phrase]")
        return phrases
    for event_type, value in data.items():
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) and v for v in value)):
            problems.append(f"{path}: {event_type}: expected two phrases [with properties, bare], got {value!r}")
            continue
        try:
            Environment().parse(value[0])
            Environment().parse(value[1])
        except TemplateSyntaxError as exc:
            problems.append(f"{path}: {event_type}: {exc.message}")
            continue
        phrases[str(event_type)] = (value[0], value[1])
    return phrases


def check_templates(directory: Path, shared: Path, variants: list[str]) -> list[str]:
    """Every variant has its three templates; each parses, and uses only the variables an email provides."""
    environment = Environment(loader=FileSystemLoader([str(directory), str(shared)]))
    environment.filters["pluralize"] = lambda *a: ""
    problems: list[str] = []
    seen: set[str] = set()
    pending = [f"{variant}.{kind}.j2" for variant in variants for kind in TEMPLATE_KINDS]
    while pending:
        name = pending.pop(0)
        if name in seen:
            continue
        seen.add(name)
        try:
            source, filename, _ = environment.loader.get_source(environment, name)
        except TemplateNotFound:
            problems.append(f"{directory}: missing template {name} (looked in {directory.name}/ and {shared.name}/)")
            continue
        try:
            tree = environment.parse(source, name, filename)
            environment.compile(source, name, filename)  # unknown filters are found here
        except TemplateError as exc:
            problems.append(f"{filename}:{getattr(exc, 'lineno', '?')}: {exc.message}")
            continue
        unknown = sorted(meta.find_undeclared_variables(tree) - TEMPLATE_VARIABLES)
        problems += [
            f"{filename}: unknown template variable {variable!r}; known: {', '.join(sorted(TEMPLATE_VARIABLES))}"
            for variable in unknown
        ]
        pending += [ref for ref in meta.find_referenced_templates(tree) if ref]
    return problems
