"""How the approval inbox reaches the objects it approves, without accounts importing them.

Each app whose objects need approval (campaigns, journeys) registers an ``ApprovalSubject``
for its model at start-up: how to render the side-by-side review, and which of its services
approve-and-activate or send back for changes (those services lock the object, check its
state, refuse when the pending request is not ``request_id``, the one the approver read, and
call ``accounts.services.approval_request_decide``).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import models


@dataclass(frozen=True)
class ApprovalSubject:
    review_html: Callable[..., str]  # (subject, *, request, user) -> safe HTML for the review pane
    # (*, subject_id, by, comment, request_id, read_mark, send_confirmed) -> approve and activate;
    # ``read_mark``, when given, is ``read_mark(subject)`` as the review page was drawn: the service
    # refuses when what it would freeze is not what that page showed; ``send_confirmed`` False (the
    # review's first press): it raises SendNotConfirmed, approving nothing, when the approval would
    # start a send at once, and the review asks its approver first (``sends_at_once``)
    approve: Callable[..., object]
    request_changes: Callable[..., object]  # (*, subject_id, by, comment, request_id) -> back to draft
    # (subjects) -> {"app_label.model": {pk, ...}}: what the reviews of these subjects (a list) show,
    # which their deciders may read; in a number of queries that does not grow with the subjects
    references: Callable[..., dict[str, set[int]]] = field(default=lambda subjects: {})
    # The labels ``references`` may answer with (None: any): ``visible_to`` works out the references
    # only for a model among them, so the lists of other models never pay for it.
    referenced_models: frozenset[str] | None = None
    # (subject, time) -> the time as the subject's own dates are shown, its zone named; None: in UTC
    zoned: Callable[..., str] | None = None
    # (subject) -> a mark of what its review shows now (the fingerprint of what an approval would
    # freeze); None: the review page posts none, and its approval is checked against the request alone
    read_mark: Callable[..., str] | None = None
    # (subjects, a queryset) -> those whose work an approver sent back still waits for its author
    # (a journey's draft thrown away leaves nothing to submit again); None: every one still to send
    awaiting_author: Callable[..., models.QuerySet] | None = None
    # (subject, request) -> whether what an approval would freeze differs from what ``request`` was
    # submitted as (its content edited meanwhile, say): the approval would be refused, and the review
    # says so before the approver reads it, offering only to ask for changes; None: never said
    changed_since_submitted: Callable[..., bool] | None = None
    # (subject, *, user) -> what its approval starts at once, in words for ``user`` (who may decide
    # it): the review's confirmation says it before its approver confirms; None: said in general
    sends_at_once: Callable[..., str] | None = None


_SUBJECTS: dict[str, ApprovalSubject] = {}


def register_approval_subject(model: type[models.Model], subject: ApprovalSubject) -> None:
    _SUBJECTS[model._meta.label_lower] = subject


def approval_subject_for(model: type[models.Model]) -> ApprovalSubject | None:
    return _SUBJECTS.get(model._meta.label_lower)


def approvals_asked_at(requests: list, *, field: str = "requested_at", subjects: dict | None = None) -> dict[int, str]:
    """When each request was asked (or its time ``field``: ``decided_at``, when it was decided), by
    request id, as its subject shows its dates (``ApprovalSubject.zoned``: a campaign's in its zone,
    a journey's in UTC, each named); in UTC, named, when the subject is gone. The subjects
    (``approval_subjects``, unless given) are read in one query per kind of subject."""
    from accounts.selectors import approval_subjects  # the selectors import this module
    from config.zones import zoned

    if subjects is None:
        subjects = approval_subjects(requests)
    answer = {}
    for request in requests:
        subject = subjects.get(request.pk)
        handler = approval_subject_for(type(subject)) if subject is not None else None
        when = getattr(request, field)
        if handler is not None and handler.zoned is not None:
            answer[request.pk] = handler.zoned(subject, when)
        else:
            answer[request.pk] = zoned(when, "UTC")
    return answer


def approval_requests_sent_back(queryset: models.QuerySet) -> models.QuerySet:
    """Of ``queryset`` (approval requests), those sent back for changes that still wait for their
    requester: each its subject's latest request (none submitted since, by anyone; the order of
    ``approval_current``), its subject still there and still to send (``STILL_TO_SEND`` of its
    model, when it has one: not archived, stopped or done) with work to submit again
    (``ApprovalSubject.awaiting_author``). One query, whatever the subjects."""
    from django.apps import apps
    from django.contrib.contenttypes.models import ContentType
    from django.db.models.functions import Cast

    from accounts.models import ApprovalRequest

    newer = ApprovalRequest.objects.filter(
        subject_type=models.OuterRef("subject_type"), subject_id=models.OuterRef("subject_id")
    ).filter(
        models.Q(requested_at__gt=models.OuterRef("requested_at"))
        | models.Q(requested_at=models.OuterRef("requested_at"), pk__gt=models.OuterRef("pk"))
    )
    there = models.Q(pk__in=[])
    for label, subject in _SUBJECTS.items():
        model = apps.get_model(label)
        rows = model._default_manager.all()
        if hasattr(model, "STILL_TO_SEND"):
            rows = rows.filter(status__in=list(model.STILL_TO_SEND))
        if subject.awaiting_author is not None:
            rows = subject.awaiting_author(rows)
        keys = rows.annotate(key=Cast("pk", models.CharField())).values("key")
        there |= models.Q(subject_type=ContentType.objects.get_for_model(model), subject_id__in=keys)
    return queryset.filter(status=ApprovalRequest.Status.CHANGES_REQUESTED).filter(there).exclude(models.Exists(newer))


def may_be_referenced(model: type[models.Model]) -> bool:
    """Whether the review of some kind of subject may show objects of ``model``."""
    label = model._meta.label_lower
    return any(
        subject.referenced_models is None or label in subject.referenced_models for subject in _SUBJECTS.values()
    )
