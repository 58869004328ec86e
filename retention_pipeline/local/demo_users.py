"""The demo population's people: personas, names, sign-up times and billing, drawn from one seeded stream."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

PERSONAS = ("power", "steady", "casual", "declining", "dormant", "churned", "new", "resurrected")

DEFAULT_PERSONA_MIX: dict[str, float] = {
    "power": 0.08,
    "steady": 0.22,
    "casual": 0.22,
    "declining": 0.12,
    "dormant": 0.12,
    "churned": 0.10,
    "new": 0.08,
    "resurrected": 0.06,
}

# The oldest persona history needs about eight weeks: a resurrected user is silent for up to six
# weeks after at least one active week, and churned users must have gone quiet 30+ days ago.
MIN_DAYS = 56

# "new" users sign up within the last NEW_USER_DAYS days, counting as_of itself.
NEW_USER_DAYS = 10


@dataclass(frozen=True)
class DemoUser:
    """One app user plus the ground truth the generator used (persona, billing) for tests and seeding."""

    id: int
    email: str
    name: str | None
    created_at: datetime
    persona: str
    plan: str | None
    billing_interval: str | None
    quantity: int
    subscription_status: str | None


@dataclass(frozen=True)
class DemoPopulation:
    """The users plus the row counts their (not materialised) events and sessions will have."""

    as_of: date
    seed: int
    users: list[DemoUser]
    event_count: int
    session_count: int


FIRST_NAMES = (
    "Ada",
    "Alex",
    "Amara",
    "Ana",
    "Ben",
    "Carla",
    "Chen",
    "Chloe",
    "Daniel",
    "Diego",
    "Elena",
    "Emma",
    "Fatima",
    "Felix",
    "Grace",
    "Hana",
    "Hugo",
    "Ines",
    "Isaac",
    "Jonas",
    "Julia",
    "Kai",
    "Laura",
    "Leo",
    "Lina",
    "Lucas",
    "Maya",
    "Mateo",
    "Mia",
    "Nina",
    "Noah",
    "Omar",
    "Priya",
    "Rafael",
    "Sara",
    "Sofia",
    "Tom",
    "Valentina",
    "Wei",
    "Yusuf",
    "Zoe",
    "Olivia",
)
LAST_NAMES = (
    "Adams",
    "Alvarez",
    "Berg",
    "Brown",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Gupta",
    "Hansen",
    "Ito",
    "Jensen",
    "Kim",
    "Kowalski",
    "Larsen",
    "Lopez",
    "Martin",
    "Meyer",
    "Moreau",
    "Nakamura",
    "Novak",
    "Okafor",
    "Olsen",
    "Patel",
    "Petrov",
    "Quinn",
    "Rossi",
    "Schmidt",
    "Silva",
    "Singh",
    "Smith",
    "Tanaka",
    "Torres",
    "Nguyen",
    "Wagner",
    "Walsh",
    "Weber",
    "Yilmaz",
    "Zhang",
)

# --------------------------------------------------------------------------------------------
# Personas: when they signed up and how likely they are to pay.
# --------------------------------------------------------------------------------------------

# Sign-up age range in days before as_of (inclusive). Lower bounds leave each persona room to show
# its pattern: e.g. a dormant user needs a week of activity before 8+ silent days.
_CREATED_AGO_MIN = {
    "power": 10,
    "steady": 10,
    "casual": 10,
    "declining": 28,
    "dormant": 21,
    "churned": 38,
    "new": 0,
    "resurrected": 35,
}

_PAYING_SHARE = {
    "power": 0.70,
    "steady": 0.50,
    "casual": 0.20,
    "declining": 0.35,
    "dormant": 0.25,
    "churned": 0.30,
    "new": 0.15,
    "resurrected": 0.30,
}

# Subscription status weights (active, past_due, canceled, unpaid) of paying users per persona.
_STATUSES = ("active", "past_due", "canceled", "unpaid")
_STATUS_WEIGHTS = {
    "churned": (0.03, 0.05, 0.82, 0.10),
    "dormant": (0.68, 0.15, 0.12, 0.05),
    "declining": (0.80, 0.12, 0.06, 0.02),
    "resurrected": (0.85, 0.08, 0.05, 0.02),
    "new": (0.97, 0.03, 0.0, 0.0),
}
_STATUS_WEIGHTS_DEFAULT = (0.93, 0.05, 0.01, 0.01)

_PLANS = ("starter", "team", "business")
_SEATS = {"starter": (1, 2), "team": (2, 5), "business": (3, 5)}

# Sign-ups happen between 07:00 and 22:00 UTC.
_SIGNUP_EARLIEST = 7 * 3600
_SIGNUP_LATEST = 22 * 3600


def _persona_sequence(rng: random.Random, n_users: int) -> list[str]:
    """Exactly the default mix (largest remainder), shuffled: small populations still get every persona."""
    quotas = {p: DEFAULT_PERSONA_MIX[p] * n_users for p in PERSONAS}
    counts = {p: int(quotas[p]) for p in PERSONAS}
    by_remainder = sorted(PERSONAS, key=lambda p: (-(quotas[p] - counts[p]), PERSONAS.index(p)))
    for persona in by_remainder[: n_users - sum(counts.values())]:
        counts[persona] += 1
    sequence = [p for p in PERSONAS for _ in range(counts[p])]
    rng.shuffle(sequence)
    return sequence


def draw_users(seed: int, as_of: date, n_users: int, days: int) -> list[DemoUser]:
    """Draw every user's attributes, then number them in sign-up order, as a serial key would."""
    rng = random.Random(f"{seed}:population")
    midnight = datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC)
    drafts = []
    for index, persona in enumerate(_persona_sequence(rng, n_users)):
        created_ago = rng.randint(_CREATED_AGO_MIN[persona], NEW_USER_DAYS - 1 if persona == "new" else days - 1)
        micros = rng.randrange(_SIGNUP_EARLIEST * 1_000_000, _SIGNUP_LATEST * 1_000_000)
        created_at = midnight - timedelta(days=created_ago) + timedelta(microseconds=micros)
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        has_name = rng.random() >= 0.05
        drafts.append((created_at, index, persona, first, last, has_name, _draw_billing(rng, persona)))
    drafts.sort(key=lambda draft: (draft[0], draft[1]))
    return [
        DemoUser(
            id=user_id,
            email=f"{first}.{last}{user_id}@example.com".lower(),
            name=f"{first} {last}" if has_name else None,
            created_at=created_at,
            persona=persona,
            plan=plan,
            billing_interval=interval,
            quantity=quantity,
            subscription_status=status,
        )
        for user_id, (created_at, _, persona, first, last, has_name, (plan, interval, quantity, status)) in enumerate(
            drafts, start=1
        )
    ]


def _draw_billing(rng: random.Random, persona: str) -> tuple[str | None, str | None, int, str | None]:
    """(plan, interval, seats, status): ~35% pay, engaged personas more often; churned payers mostly cancelled."""
    if rng.random() >= _PAYING_SHARE[persona]:
        return None, None, 1, None
    plan_weights = (0.35, 0.40, 0.25) if persona == "power" else (0.55, 0.33, 0.12)
    plan = rng.choices(_PLANS, weights=plan_weights)[0]
    interval = rng.choices(("month", "year", "week"), weights=(0.80, 0.17, 0.03))[0]
    quantity = rng.randint(*_SEATS[plan])
    status = rng.choices(_STATUSES, weights=_STATUS_WEIGHTS.get(persona, _STATUS_WEIGHTS_DEFAULT))[0]
    return plan, interval, quantity, status


def stripe_customer_id(seed: int, user: DemoUser) -> str | None:
    """A stable fake Stripe customer id for paying users; free users never reached checkout."""
    if user.plan is None:
        return None
    return "cus_" + hashlib.sha256(f"{seed}:{user.id}:stripe".encode()).hexdigest()[:14]
