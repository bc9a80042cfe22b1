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
    approve: Callable[..., object]  # (*, subject_id, by, comment, request_id) -> approve and activate
    request_changes: Callable[..., object]  # (*, subject_id, by, comment, request_id) -> back to draft
    # (subjects) -> {"app_label.model": {pk, ...}}: what the reviews of these subjects (a list) show,
    # which their deciders may read; in a number of queries that does not grow with the subjects
    references: Callable[..., dict[str, set[int]]] = field(default=lambda subjects: {})
    # The labels ``references`` may answer with (None: any): ``visible_to`` works out the references
    # only for a model among them, so the lists of other models never pay for it.
    referenced_models: frozenset[str] | None = None
    # (subject, time) -> the time as the subject's own dates are shown, its zone named; None: in UTC
    zoned: Callable[..., str] | None = None


_SUBJECTS: dict[str, ApprovalSubject] = {}


def register_approval_subject(model: type[models.Model], subject: ApprovalSubject) -> None:
    _SUBJECTS[model._meta.label_lower] = subject


def approval_subject_for(model: type[models.Model]) -> ApprovalSubject | None:
    return _SUBJECTS.get(model._meta.label_lower)


def approvals_asked_at(requests: list) -> dict[int, str]:
    """When each request was asked, by request id, as its subject shows its dates
    (``ApprovalSubject.zoned``: a campaign's in its zone, a journey's in UTC, each named); in UTC,
    named, when the subject is gone. The subjects are read in one query per kind of subject."""
    from accounts.selectors import approval_subjects  # the selectors import this module
    from config.zones import zoned

    subjects = approval_subjects(requests)
    answer = {}
    for request in requests:
        subject = subjects.get(request.pk)
        handler = approval_subject_for(type(subject)) if subject is not None else None
        if handler is not None and handler.zoned is not None:
            answer[request.pk] = handler.zoned(subject, request.requested_at)
        else:
            answer[request.pk] = zoned(request.requested_at, "UTC")
    return answer


def may_be_referenced(model: type[models.Model]) -> bool:
    """Whether the review of some kind of subject may show objects of ``model``."""
    label = model._meta.label_lower
    return any(
        subject.referenced_models is None or label in subject.referenced_models for subject in _SUBJECTS.values()
    )
