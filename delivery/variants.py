"""Variant assignment: which content of an A/B/n campaign a profile gets, or the holdout.

A profile's *bucket* (0–9999) is the first 32 bits of MD5("<profile id>:<salt>") modulo 10,000,
where the salt is the campaign's id. The holdout takes the lowest buckets, then each variant its
share in order. The same profile gets the same answer on every retry and every occurrence of the
campaign, and the buckets of different campaigns are independent.

The send path computes it in SQL while it resolves the audience (``bucket_sql``, ``variant_sql``); the trigger
path, which already holds its recipients, in Python (``variant_for``). Both give the same answer.
PostgreSQL computes MD5 itself; SQLite (the embedded mode) gets ``pushdesk_bucket`` as a function
on each connection.
"""

from __future__ import annotations

import hashlib

from django.db.backends.signals import connection_created

BUCKETS = 10_000
HOLDOUT = 0


def bucket(profile_id: int, salt: int) -> int:
    """The profile's bucket for this salt (a campaign id), 0–9999."""
    digest = hashlib.md5(f"{profile_id}:{salt}".encode(), usedforsecurity=False).hexdigest()
    return int(digest[:8], 16) % BUCKETS


def sample_bucket(profile_id: int, salt: int) -> int:
    """The profile's sample bucket for this salt, 0–9999: a second draw, independent of ``bucket``.

    A winner-mode campaign's sample is the profiles whose sample bucket is below its share, so the
    sample splits across the variants (and the holdout) in their shares.
    """
    digest = hashlib.md5(f"{profile_id}:{salt}:sample".encode(), usedforsecurity=False).hexdigest()
    return int(digest[:8], 16) % BUCKETS


def _pg_bucket(column: str, salted: str) -> str:
    """PostgreSQL's ``bucket``: ``salted`` is the SQL text appended to the profile id before hashing."""
    return f"mod(('x' || substr(md5({column}::text || {salted}), 1, 8))::bit(32)::bigint, {BUCKETS})"


def in_sample_sql(column: str, *, vendor: str, salt: int, share: int, rest: bool = False) -> str:
    """A SQL condition on ``column`` (a profile id): in the sample of ``share`` percent (or, with
    ``rest``, outside it), as ``sample_bucket`` computes it. Integers only are formatted here."""
    salt, upper = int(salt), int(share) * BUCKETS // 100
    if vendor == "postgresql":
        expression = _pg_bucket(column, f"':{salt}:sample'")
    else:
        expression = f"pushdesk_sample_bucket({column}, {salt})"
    return f"{expression} {'>=' if rest else '<'} {upper}"


def _bounds(variants: list[dict], holdout_share: int) -> list[tuple[int, int]]:
    """(upper bucket bound, variant number) in order: the holdout first, then each variant."""
    bounds, upper = [], 0
    if holdout_share:
        upper = holdout_share * BUCKETS // 100
        bounds.append((upper, HOLDOUT))
    for variant in variants:
        upper += variant["share"] * BUCKETS // 100
        bounds.append((upper, variant["number"]))
    return bounds


def variant_for(profile_id: int, *, salt: int, variants: list[dict], holdout_share: int) -> int | None:
    """The variant number (0 for the holdout) of a profile; None when there are no variants."""
    if not variants:
        return None
    b = bucket(profile_id, salt)
    bounds = _bounds(variants, holdout_share)
    for upper, number in bounds:
        if b < upper:
            return number
    return bounds[-1][1]  # shares summing to 100 leave nothing here; rounding never loses a profile


def bucket_sql(column: str, *, vendor: str, salt: int) -> str:
    """A SQL expression of ``column`` (a profile id): its bucket for this salt, as ``bucket`` computes it."""
    salt = int(salt)
    if vendor == "postgresql":
        # mod() rather than %: the statement this joins has bound parameters.
        return _pg_bucket(column, f"':{salt}'")
    return f"pushdesk_bucket({column}, {salt})"


def variant_sql(bucket_column: str, *, variants: list[dict], holdout_share: int) -> str:
    """A SQL expression of ``bucket_column`` (a bucket) giving the variant number, NULL without variants.

    Every value in it is an integer formatted here: nothing comes from a user.
    """
    if not variants:
        return "NULL"
    bounds = _bounds(variants, holdout_share)
    cases = " ".join(f"WHEN {bucket_column} < {int(upper)} THEN {int(number)}" for upper, number in bounds[:-1])
    last = int(bounds[-1][1])
    return f"(CASE {cases} ELSE {last} END)" if cases else str(last)


def variant_bounds(variants: list[dict], holdout_share: int) -> list[dict]:
    """The bounds that ``VARIANT_OF_PROFILE_SQL`` reads (a statement's parameter, as JSON): each
    variant number (0 the holdout) in order with the bucket it starts above, the last one's
    bound the end of the buckets (``variant_for`` gives the last variant what rounding leaves)."""
    bounds = _bounds(variants, holdout_share)
    return [
        {"i": i, "upper": BUCKETS if i == len(bounds) - 1 else int(upper), "number": int(number)}
        for i, (upper, number) in enumerate(bounds)
    ]


# ``variant_for`` in PostgreSQL with the campaign as parameters, so that one statement serves
# every campaign: the profile id ``p.id``, then ``variant_bounds`` as JSON (``[]``: NULL, no
# variants) and the salt as text.
VARIANT_OF_PROFILE_SQL = (
    "(SELECT b.number FROM jsonb_to_recordset(%s::jsonb) AS b(i int, upper int, number int) "  # noqa: S608 (a constant; values are bound)
    "WHERE " + _pg_bucket("p.id", "':' || %s::text") + " < b.upper ORDER BY b.i LIMIT 1)"
)


def _sqlite_functions(sender, connection, **kwargs) -> None:
    if connection.vendor == "sqlite":
        connection.connection.create_function("pushdesk_bucket", 2, bucket, deterministic=True)
        connection.connection.create_function("pushdesk_sample_bucket", 2, sample_bucket, deterministic=True)


connection_created.connect(_sqlite_functions, dispatch_uid="pushdesk_bucket")
