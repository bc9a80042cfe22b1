"""Idempotent API calls: an ``Idempotency-Key`` header makes a call sent again replay its first answer.

The same key and body replay the stored answer (``Idempotent-Replayed: true``); the same key with
another body answers 422 ``idempotency_key_reused``; a call still running with the key answers 409
``idempotency_in_progress``. Keys are per user, the one every API key acts as: the user's keys
share them, so a retry under a rotated key (a new key for the user, the old one revoked) replays
the first answer, and another user's keys never see them. Each endpoint keeps its records in a
table of its own (a subclass of ``accounts.models.IdempotentRequest``), which retention empties after
``PUSHDESK_RETENTION_IDEMPOTENCY_DAYS`` (``operations.services.retention_apply``).

A view claims the key before it runs (``idempotent_call_open``: the claim commits at once, so a
twin sent meanwhile sees it), stores its answer in the transaction that writes what the call did
(``idempotent_request_answer``: both commit, or neither), and frees the key when the call failed
having written nothing (``idempotent_request_free``: the retry runs). A call without the header
pays nothing: reading it is no query.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Callable

from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers, status
from rest_framework.exceptions import APIException
from rest_framework.response import Response

from accounts.models import IdempotentRequest

log = logging.getLogger(__name__)

KEY_MAX_LENGTH = 200
# What an Idempotency-Key may not hold: C0 controls and DEL (a NUL cannot even be stored).
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f]")
# A record still unfinished after this long belonged to a request that died: a retry reclaims it.
CLAIM_ABANDONED_AFTER = dt.timedelta(minutes=5)


class IdempotencyInProgress(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "idempotency_in_progress"
    default_detail = "A request with this Idempotency-Key is still running."


class IdempotencyAnsweredMeanwhile(IdempotencyInProgress):
    """The call's claim was taken for abandoned and a retry with the key answered first: this call
    must write nothing (its transaction is rolled back), the retry's answer being the key's."""

    default_detail = "A request with this Idempotency-Key ran meanwhile and was answered: send it again for its answer."


class IdempotencyKeyReused(APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "idempotency_key_reused"
    default_detail = "This Idempotency-Key was used with another body."


def idempotency_key_read(request) -> str:
    """The request's ``Idempotency-Key``, trimmed ("" without one).

    Raises ValidationError naming the header when it is sent empty (a client's unset variable: the
    call run without a key would run again on its retry), over 200 characters, or holds a control
    character.
    """
    # META's own name for the header: ``request.headers`` builds a map of every header to read one.
    sent = request.META.get("HTTP_IDEMPOTENCY_KEY")
    if sent is None:
        return ""
    idempotency_key = sent.strip()
    if not idempotency_key:
        raise serializers.ValidationError({"Idempotency-Key": "Empty: send printable text, or leave the header out."})
    if len(idempotency_key) > KEY_MAX_LENGTH:
        raise serializers.ValidationError({"Idempotency-Key": f"At most {KEY_MAX_LENGTH} characters."})
    if _CONTROL_CHARACTER.search(idempotency_key):  # PostgreSQL cannot store a NUL; none belongs in a key
        raise serializers.ValidationError(
            {"Idempotency-Key": "No control characters (NUL, tab, line ends, DEL): use printable text."}
        )
    return idempotency_key


def request_body_hash(data) -> str:
    """What tells two bodies apart: a SHA-256 of the parsed body, its keys sorted."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def idempotent_request_start(
    model: type[IdempotentRequest], *, api_key, idempotency_key: str, body_hash: str, **scope
) -> tuple[IdempotentRequest, str]:
    """Claim an Idempotency-Key for this API key's user in ``model``'s table. Returns (record, what to do):

    ``new`` (run it), ``done`` (replay the stored answer), ``in_progress`` (409), ``other_scope``
    (the key was used with other ``scope`` fields: another campaign) or ``different_body`` (422).
    The claim commits at once, so a concurrent twin sees it; one older than
    ``CLAIM_ABANDONED_AFTER`` and unfinished is reclaimed (``new``).
    """
    try:
        with transaction.atomic():
            record = model.objects.create(
                api_key=api_key, user_id=api_key.user_id, idempotency_key=idempotency_key, body_hash=body_hash, **scope
            )
            return record, "new"
    except IntegrityError:
        record = model.objects.get(user_id=api_key.user_id, idempotency_key=idempotency_key)
    if any(getattr(record, name) != value for name, value in scope.items()):
        return record, "other_scope"
    if record.body_hash != body_hash:
        return record, "different_body"
    if record.finished:
        return record, "done"
    stale = timezone.now() - CLAIM_ABANDONED_AFTER
    if model.objects.filter(pk=record.pk, finished=False, created_at__lt=stale).update(created_at=timezone.now()):
        return record, "new"
    return record, "in_progress"


def idempotent_request_answer(*, record: IdempotentRequest, status_code: int, body, **fields) -> None:
    """Store the answer to replay (and ``fields`` of the record: the trigger's dispatch), finishing it.

    Call it in the transaction that writes what the call did, so that the answer commits with it.
    A record finished already keeps its first answer, and raises IdempotencyAnsweredMeanwhile: a
    call slower than ``CLAIM_ABANDONED_AFTER`` is not dead, and the retry that reclaimed its key
    has done what it does; the caller's writes roll back with the exception, never done twice.
    """
    unfinished = type(record).objects.filter(pk=record.pk, finished=False)
    if not unfinished.update(finished=True, response_status=status_code, response_body=body, **fields):
        raise IdempotencyAnsweredMeanwhile()


def idempotent_request_free(*, record: IdempotentRequest) -> None:
    """The call failed and wrote nothing: delete its claim, so that a retry with the key runs.
    A record holding an answer is never deleted. When the database fails this too (the call's own
    failure, a lost connection), the caller's error is what is answered, and the claim is retried
    as abandoned after ``CLAIM_ABANDONED_AFTER`` (409 until then)."""
    try:
        type(record).objects.filter(pk=record.pk, finished=False).delete()
    except DatabaseError:
        log.warning("Idempotency-Key %r: its claim could not be freed", record.idempotency_key, exc_info=True)


def idempotent_call_open(
    request,
    model: type[IdempotentRequest],
    *,
    idempotency_key: str,
    other_use: Callable[[IdempotentRequest], str] | None = None,
    **scope,
) -> tuple[IdempotentRequest | None, Response | None]:
    """Claim the call's Idempotency-Key (``idempotency_key_read``) for its API key's user.

    Returns (the record, None) when the call is to run, its answer then stored on the record;
    (None, the stored answer, marked ``Idempotent-Replayed: true``) when it ran already. Raises
    IdempotencyKeyReused (422) for another body, or other ``scope`` (worded by ``other_use``),
    IdempotencyInProgress (409) while a call with the key runs.
    """
    record, outcome = idempotent_request_start(
        model,
        api_key=request.auth,
        idempotency_key=idempotency_key,
        body_hash=request_body_hash(request.data),
        **scope,
    )
    if outcome == "other_scope":
        raise IdempotencyKeyReused(other_use(record) if other_use else None)
    if outcome == "different_body":
        raise IdempotencyKeyReused()
    if outcome == "in_progress":
        raise IdempotencyInProgress()
    if outcome == "done":
        response = Response(record.response_body, status=record.response_status)
        response["Idempotent-Replayed"] = "true"
        return None, response
    return record, None


# The OpenAPI description of the header and of its answers, for each view that takes it.
IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1},
    OpenApiParameter.HEADER,
    required=False,
    description="Printable text, at most 200 characters, per user: the API keys of one user share their "
    "Idempotency-Keys, so a call sent again with the same key and body, under the same API key or another of the "
    "user's (a rotated one), replays the first answer (marked `Idempotent-Replayed: true`); with another body it "
    "answers 422, and 409 while the first still runs. Another user's keys have Idempotency-Keys of their own. "
    "A key is remembered 30 days by default (the server's "
    "PUSHDESK_RETENTION_IDEMPOTENCY_DAYS); after that it makes a new call.",
)
IN_PROGRESS_ANSWER = "`idempotency_in_progress`: a request with this Idempotency-Key is still running."
KEY_REUSED_ANSWER = "`idempotency_key_reused`: this Idempotency-Key was used with another body."


def idempotent_replayed_header(*statuses: int) -> OpenApiParameter:
    return OpenApiParameter(
        "Idempotent-Replayed",
        str,
        OpenApiParameter.HEADER,
        response=list(statuses),
        description="`true` when this is the stored answer of the first call with this Idempotency-Key.",
    )


def idempotency_conflicts() -> dict[int, OpenApiResponse]:
    """The 409 and 422 answers of a view that takes an Idempotency-Key and has no other."""
    return {409: OpenApiResponse(description=IN_PROGRESS_ANSWER), 422: OpenApiResponse(description=KEY_REUSED_ANSWER)}
