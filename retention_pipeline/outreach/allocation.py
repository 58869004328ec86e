"""Who is held out and which variant a user gets: stable hashes, so re-runs never flip an assignment."""

from __future__ import annotations

import hashlib


def hash_unit(*parts: object) -> float:
    """A uniform number in [0, 1) determined only by `parts`."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_holdout(campaign: str, user_id: int, share: float) -> bool:
    # Independent of the step: a holdout user stays held out for the whole sequence.
    return hash_unit("holdout", campaign, user_id) < share


def stable_variant(campaign: str, step: int, user_id: int, variants: list[str]) -> str:
    return variants[int(hash_unit("variant", campaign, step, user_id) * len(variants))]
