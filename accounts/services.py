"""Every write of the accounts app: audit events, object access, API keys."""

import contextlib
import contextvars
import secrets
from collections.abc import Iterable
from datetime import datetime

from django.apps import apps as django_apps
from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ImproperlyConfigured, PermissionDenied, ValidationError
from django.db import connection, models, transaction
from django.template.defaultfilters import pluralize
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from accounts.json_values import json_text_problem
from accounts.models import ApiKey, ApprovalPolicy, ApprovalRequest, AuditEvent, User
from accounts.roles import ROLES
from accounts.selectors import (
    access_perm,
    approval_policies_active,
    approver_standing,
    can,
    can_create_api_key_for,
    can_manage_api_keys_of,
    may_cancel_approval_request,
    may_own_api_keys,
    policy_approver_problems,
    visible_to,
)

# While an admin view runs, the (content type id, object id) of every object audited in it, so the
# admin audits only the writes no service audited (see accounts.admin.AdminAuditMixin).
audited_objects: contextvars.ContextVar[set | None] = contextvars.ContextVar("audited_objects", default=None)


def audit(
    *, actor: User | None, action: str, obj: models.Model | None = None, summary: dict | None = None
) -> AuditEvent:
    """Append one audit event. ``summary`` must hold no secret: callers pass labels, not values."""
    event = AuditEvent(
        actor=actor if actor is not None and actor.pk else None,
        actor_label=actor.get_username() if actor is not None and actor.pk else "system",
        action=action,
        summary=summary or {},
    )
    if obj is not None:
        event.object_type = ContentType.objects.get_for_model(obj, for_concrete_model=False)
        event.object_id = str(obj.pk)
        event.object_label = str(obj)[:200]
    event.save()
    seen = audited_objects.get()
    if seen is not None and obj is not None:
        seen.add((event.object_type_id, event.object_id))
    return event


def _ensure_can_manage_access(by: User | None) -> None:
    if by is not None and not by.has_perm("accounts.manage_object_access"):
        raise PermissionDenied("Only an Administrator can grant or revoke object access.")


def access_grant(*, obj: models.Model, to: User | Group, by: User | None) -> None:
    """Give a user or a group access to one object (a segment, a campaign, an App scope...).

    Access to an App reaches everything scoped to it (its campaigns and journeys). What the
    grantee may *do* there still depends on their role. ``by=None`` is the system (e.g. the
    creator's own grant). The permission row records the grantor and the time (granting again
    records the newest grant). Raises PermissionDenied when ``by`` may not manage access.
    """
    _ensure_can_manage_access(by)
    with transaction.atomic():
        grant = assign_perm(access_perm(type(obj)), to, obj)
        if hasattr(grant, "granted_at"):  # the object's own permission table keeps who and when
            type(grant).objects.filter(pk=grant.pk).update(
                granted_by=by if by is not None and by.pk else None, granted_at=timezone.now()
            )
        audit(actor=by, action="access_granted", obj=obj, summary={"to": _principal_label(to)})


def access_revoke(*, obj: models.Model, to: User | Group, by: User | None) -> None:
    """Take back a user's or group's access to one object. Raises PermissionDenied like access_grant.

    Raises ValidationError, revoking nothing, when the revoke would leave an active approval policy
    governing the app's requests (naming it, or no app) with no approver who may decide there
    (``policy_approver_problems``, as the policy's form refuses such a policy): its requests would
    wait forever. It names each such policy.
    """
    _ensure_can_manage_access(by)
    whose = f"the group {to.name}" if isinstance(to, Group) else to.get_username()
    with transaction.atomic():
        approval_policies_lock()
        with approval_policies_kept_decidable(
            doing=f"Revoking {whose}'s access",
            fix="Give another of its approvers access first",
            undone="access not revoked",
            app=obj,
        ):
            remove_perm(access_perm(type(obj)), to, obj)
        audit(actor=by, action="access_revoked", obj=obj, summary={"from": _principal_label(to)})


# The advisory lock class of the changes that can leave an approval policy with no one to decide
# (its object id is 0): a constant of ours, as ``delivery.rules._CAP_LOCK_CLASS`` is.
_DECIDERS_LOCK_CLASS = 0x50C7


def approval_policies_lock() -> None:
    """Hold, until commit, the right to change who may decide approval policies' requests: a
    revoke, a user's deletion, deactivation or roles, a team's members, a group's deletion. Two
    such changes each checked what it left with the other's change unseen (a removal from one team
    and one from another, or a team's and a user's role), each passed, and together left a policy
    with no one to decide; the second now waits for the first to commit and checks after it.
    Taken first in the transaction, holding nothing (re-taking it is free); a transaction-level
    advisory lock, no-op on SQLite, whose writers take turns."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", [_DECIDERS_LOCK_CLASS])


@contextlib.contextmanager
def approval_policies_kept_decidable(*, doing: str, fix: str, undone: str, app: models.Model | None = None):
    """Run the block's change (a revoke, a user's deactivation or new roles), then raise
    ValidationError when it left an active approval policy with no approver who may decide its
    requests (``policy_approver_problems``, as the policy's form refuses such a policy): they would
    wait forever. Each message names the policy, why, ``doing`` (what was asked), ``fix`` (what to
    change first) and ``undone`` (what was not done). With ``app``, only the policies governing that
    app's requests are asked (those naming it, and those naming no app, which govern every app's),
    for it alone; an object other than an app leaves every policy as it was.

    Call inside ``transaction.atomic()``: raised out of it, the change is undone. Serialised with
    every other such change (``approval_policies_lock``, which the caller takes first in its
    transaction, before any row lock, and which is taken here again in case it did not).
    """
    if app is not None and app._meta.label != "delivery.App":
        yield
        return
    approval_policies_lock()
    before = _active_policy_problems(app)
    yield
    stranded = {
        policy: problems
        for policy, problems in _active_policy_problems(app).items()
        if set(problems) - set(before.get(policy, []))
    }
    if stranded:
        where = f" for '{app}'" if app is not None else ""
        raise ValidationError(
            [
                f"{doing} would leave the active approval policy '{policy.name}' with no approver who may "
                f"decide{where}: {' '.join(problems)} Requests routed to this policy could not be decided. "
                f"{fix}, or change its approvers (deactivate it to edit it); {undone}."
                for policy, problems in stranded.items()
            ]
        )


# What to change before a user who is some active policy's only decider goes, is deactivated or loses the role.
POLICY_DECIDER_FIX = "Give another of its approvers a role that may approve there and access to its apps first"


def user_delete(*, user_id: int, by: User) -> None:
    """Delete a user's account: their grants and their place among approval policies' approvers go
    with it. Audited as ``user_deleted``.

    Raises PermissionDenied when ``by`` may not delete users, or the account is a superuser's and
    ``by`` is not one (a superuser's account is out of others' reach, as on the user's page), and
    ValidationError, deleting nothing, when the deletion would leave an active approval policy with
    no approver who may decide its requests (``approval_policies_kept_decidable``), naming it and
    what to change first.
    """
    if not by.has_perm("accounts.delete_user"):
        raise PermissionDenied("Only an Administrator deletes users.")
    with transaction.atomic():
        approval_policies_lock()
        user = User.objects.select_for_update().get(pk=user_id)
        if user.is_superuser and not by.is_superuser:
            raise PermissionDenied("Only a superuser deletes a superuser's account.")
        name = user.get_username()
        with approval_policies_kept_decidable(
            doing=f"Deleting {name}", fix=POLICY_DECIDER_FIX, undone="the user was not deleted"
        ):
            audit(actor=by, action="user_deleted", obj=user, summary={"username": name})
            user.delete()


def group_delete(*, group_id: int, by: User) -> None:
    """Delete a group (a team): its members' and its grants' ties to it, and its place among approval
    policies' approvers, go with it. Audited as ``group_deleted``.

    Raises PermissionDenied when ``by`` may not delete groups, and ValidationError, deleting
    nothing, when the deletion would leave an active approval policy naming the group with no
    approver who may decide its requests (``approval_policies_kept_decidable``), naming it and what
    to change first.
    """
    if not by.has_perm("auth.delete_group"):
        raise PermissionDenied("Only an Administrator deletes groups.")
    with transaction.atomic():
        approval_policies_lock()
        group = Group.objects.select_for_update().get(pk=group_id)
        name = group.name
        with approval_policies_kept_decidable(
            doing=f"Deleting the group {name}", fix=POLICY_DECIDER_FIX, undone="the group was not deleted"
        ):
            audit(actor=by, action="group_deleted", obj=group, summary={"name": name})
            group.delete()


def team_members_set(*, group_id: int, members: Iterable[User], by: User) -> tuple[list[str], list[str]]:
    """Make ``members`` the members of a team (a group that is no role): ``team_members_change``
    with those not in it added and those left out taken out, as it holds them once its row is
    locked. A page's save, which showed the members it was drawn with, calls
    ``team_members_change`` with what it changed instead: a whole list would undo what another
    save changed since. Returns and raises as ``team_members_change``.
    """
    members = list(members)
    with transaction.atomic():
        approval_policies_lock()
        held = set(_team_locked(group_id=group_id, by=by).user_set.all())
        return team_members_change(group_id=group_id, add=set(members) - held, remove=held - set(members), by=by)


def team_members_change(
    *, group_id: int, add: Iterable[User] = (), remove: Iterable[User] = (), by: User
) -> tuple[list[str], list[str]]:
    """Put ``add`` in a team (a group that is no role) and take ``remove`` out of it: those added
    gain what the team was granted (its object access, its place among approval policies'
    approvers), those taken out lose it. One already in (or already out) is left as is, so two
    saves made at once both take effect, neither undoing the other's. Audited as
    ``team_members_changed`` (the usernames added and taken out), nothing when no one is. Returns
    the usernames added and taken out.

    Takes ``approval_policies_lock``, then locks the team's row, then the rows of the users it
    changes (in id order), so that changes of one team, and of one user's groups
    (``user_roles_change``), wait for each other.

    Raises PermissionDenied when ``by`` may not change groups, or would put a superuser in or take
    one out and is not one (``team_members_change_refused``); ValidationError when the group is a
    role (a role's members are set on users' pages), and, changing nothing, when taking members out
    would leave an active approval policy with no approver who may decide its requests
    (``approval_policies_kept_decidable``), naming it and what to change first. The additions are
    made first, so a policy's only approver replaced by another in one call is no refusal.
    """
    with transaction.atomic():
        approval_policies_lock()
        group = _team_locked(group_id=group_id, by=by)
        asked = {user.pk for user in add} | {user.pk for user in remove}
        users = {user.pk: user for user in User.objects.select_for_update().filter(pk__in=asked).order_by("pk")}
        held = set(group.user_set.filter(pk__in=asked).values_list("pk", flat=True))
        added = sorted((users[u.pk] for u in add if u.pk in users and u.pk not in held), key=User.get_username)
        removed = sorted((users[u.pk] for u in remove if u.pk in held), key=User.get_username)
        if problem := team_members_change_refused(by=by, changed=[*added, *removed]):
            raise PermissionDenied(problem)
        if not added and not removed:
            return [], []
        group.user_set.add(*added)
        if removed:
            names = ", ".join(user.get_username() for user in removed)
            with approval_policies_kept_decidable(
                doing=f"Taking {names} out of the team {group.name}",
                fix=POLICY_DECIDER_FIX,
                undone="the members were not changed",
            ):
                group.user_set.remove(*removed)
        summary = {"added": [u.get_username() for u in added], "removed": [u.get_username() for u in removed]}
        audit(actor=by, action="team_members_changed", obj=group, summary=summary)
    return summary["added"], summary["removed"]


def team_members_change_refused(*, by: User, changed: Iterable[User]) -> str:
    """Why ``by`` may not put the users ``changed`` in a team or take them out of one, or "": a
    superuser's teams are changed by a superuser alone (they name the approval policies the
    superuser decides for), as their account is (``user_delete``, the user's page)."""
    superusers = sorted(user.get_username() for user in changed if user.is_superuser)
    if superusers and not by.is_superuser:
        return f"Only a superuser puts a superuser in a team or takes them out of one: {', '.join(superusers)}."
    return ""


def _team_locked(*, group_id: int, by: User) -> Group:
    """The team's row, locked, once ``by`` may change its members (``team_members_change``)."""
    if not by.has_perm("auth.change_group"):
        raise PermissionDenied("Only an Administrator changes a team's members.")
    group = Group.objects.select_for_update().get(pk=group_id)
    if group.name in ROLES:
        raise ValidationError(f"{group.name} is a role: its members are given it on their own pages.")
    return group


def user_roles_change(*, user_id: int, add: Iterable[Group] = (), remove: Iterable[Group] = (), by: User) -> bool:
    """Give a user the roles ``add`` and take ``remove`` from them, as their page's save changed
    the roles it showed: a role given or taken since by another save stays so, and the user's teams
    are left as they are (``team_members_change`` sets them). Locks the user's row first. Returns
    whether a role was given or taken. The caller audits and checks approval policies
    (the user page's save, ``approval_policies_kept_decidable``).

    Raises PermissionDenied when ``by`` may not change users, or the user is a superuser and ``by``
    is not one; ValidationError when a group given or taken is no role.
    """
    if not by.has_perm("accounts.change_user"):
        raise PermissionDenied("Only an Administrator gives or takes roles.")
    add, remove = list(add), list(remove)
    if any(group.name not in ROLES for group in [*add, *remove]):
        raise ValidationError("Only roles are given or taken on a user's page: a team's members are set on its page.")
    with transaction.atomic():
        approval_policies_lock()
        user = User.objects.select_for_update().get(pk=user_id)
        if user.is_superuser and not by.is_superuser:
            raise PermissionDenied("Only a superuser changes a superuser's roles.")
        held = set(user.groups.filter(pk__in=[g.pk for g in [*add, *remove]]).values_list("pk", flat=True))
        given = [group for group in add if group.pk not in held]
        taken = [group for group in remove if group.pk in held]
        user.groups.add(*given)
        user.groups.remove(*taken)
    return bool(given or taken)


def _active_policy_problems(app: models.Model | None = None) -> dict[ApprovalPolicy, list[str]]:
    """Each active approval policy whose approvers cannot decide its requests, with why
    (``policy_approver_problems``); with ``app``, only the policies governing its requests (naming
    it or no app: an approver decides a request of an app they have access to), for that app alone.
    Without, each policy for each app it governs: a policy naming no app, for every app."""
    found = {}
    every_app: list[int] | None = None  # read once, for the first policy naming no app
    # The policies are few: their app lists are read here rather than asked of the JSON column,
    # which the embedded mode's database cannot search.
    for policy in ApprovalPolicy.objects.filter(is_active=True).prefetch_related("approver_users", "approver_groups"):
        if app is not None and policy.app_ids and app.pk not in policy.app_ids:
            continue
        if app is not None:
            app_ids = [app.pk]
        elif policy.app_ids:
            app_ids = policy.app_ids
        else:
            if every_app is None:
                every_app = list(django_apps.get_model("delivery", "App").objects.values_list("pk", flat=True))
            app_ids = every_app
        problems = policy_approver_problems(
            users=policy.approver_users.all(),
            groups=policy.approver_groups.all(),
            app_ids=app_ids,
            campaigns=policy.applies_to_campaigns,
            journeys=policy.applies_to_journeys,
        )
        if problems:
            found[policy] = problems
    return found


def user_roles_given(*, user: User, by: User | None) -> User:
    """A role lets one sign in: a user who holds a role becomes staff (the admin's door).

    Taking every role away leaves the flag alone: such a user signs in to a page saying what to
    ask an Administrator for.
    """
    if user.role_names() and not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
        audit(actor=by, action="user_may_sign_in", obj=user, summary={"roles": user.role_names()})
    return user


def lock_for(model: type[models.Model], pk: int, *, by: User, perm: str, label: str = "") -> models.Model:
    """Lock one row (``select_for_update``) for a state change by ``by``, who needs ``perm`` on it.

    Call inside ``transaction.atomic()``. Raises Http404 when the row does not exist or is outside
    the user's object access (as if it did not exist), PermissionDenied when their role lacks ``perm``
    or their access to it is only to read it (through a review, or the App of its
    ``access_read_scope_id``), saying which.
    """
    from django.http import Http404

    obj = model._default_manager.select_for_update().filter(pk=pk).first()
    name = label or model._meta.verbose_name
    if obj is None or not visible_to(by, model._default_manager.filter(pk=pk)).exists():
        raise Http404(f"No {name} {pk}.")
    if not by.has_perm(perm):
        raise PermissionDenied(f"Your role may not do this to a {name}.")
    if not can(by, perm, obj):
        raise PermissionDenied(f"You may not do this to this {name}.")
    return obj


def status_transition(
    obj: models.Model,
    to: str,
    *,
    by: User | None,
    action: str,
    also_saved: tuple[str, ...] = (),
    summary: dict | None = None,
) -> None:
    """Move an object with a lifecycle (a campaign, a journey) to status ``to``, and audit it as ``<model>_<action>``.

    Call inside ``transaction.atomic()`` on a row locked with ``lock_for`` (or ``select_for_update``),
    once its source state was checked. Stamps ``status_changed_at`` and ``updated_at`` and saves them
    with the status and ``also_saved``, the fields the caller changed with it. The audit summary says
    which status it left and which it reached, with ``summary`` added.
    """
    before = obj.status
    obj.status = to
    obj.status_changed_at = timezone.now()
    obj.updated_at = obj.status_changed_at
    obj.save(update_fields=["status", "status_changed_at", "updated_at", *also_saved])
    summary = {"from": before, "to": to, **(summary or {})}
    audit(actor=by, action=f"{obj._meta.model_name}_{action}", obj=obj, summary=summary)


class TransitionError(Exception):
    """An object with a lifecycle (a campaign, a journey) is not in a state that allows this step."""

    def __init__(self, obj: models.Model, action: str, hint: str = ""):
        self.obj = obj
        message = f"'{obj}' is {obj.get_status_display().lower()}: it cannot be {action}."
        super().__init__(f"{message} {hint}".strip())


def _principal_label(principal: User | Group) -> str:
    if isinstance(principal, Group):
        return f"group:{principal.name}"
    return f"user:{principal.get_username()}"


def api_key_create(
    *, user: User, name: str, scopes: list[str], by: User, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key for ``user`` and return it with the raw key, which is never stored or shown again.

    Raises PermissionDenied when ``by`` may not create keys for ``user`` (someone else's, unless
    an Administrator; a superuser's, unless a superuser), ValidationError when ``user``'s role may
    not own keys (Viewers, users without a role), on an unknown scope, no scope, or an expiry in
    the past.
    """
    if not can_manage_api_keys_of(by, user):
        raise PermissionDenied("You may only create API keys for yourself.")
    if not can_create_api_key_for(by, user):
        raise PermissionDenied("Only a superuser creates API keys for a superuser.")
    if not by.has_perm("accounts.add_apikey"):
        raise PermissionDenied("Your role may not create API keys.")
    if not may_own_api_keys(user):
        raise ValidationError(
            {"user": "This user's role may not own API keys (Administrators, Approvers and Managers may)."}
        )
    valid = set(ApiKey.Scope.values)
    unknown = sorted(set(scopes) - valid)
    if unknown:
        raise ValidationError(
            {"scopes": f"Unknown scope{pluralize(len(unknown))}: {', '.join(unknown)}; use {', '.join(sorted(valid))}."}
        )
    if not scopes:
        raise ValidationError({"scopes": "Choose at least one scope."})
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    prefix = secrets.token_hex(4)
    raw_key = f"{settings.PUSHDESK_API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        key = ApiKey.objects.create(
            user=user,
            name=name,
            prefix=prefix,
            key_hash=ApiKey.hash_key(raw_key),
            scopes=sorted(set(scopes)),
            expires_at=expires_at,
            created_by=by,
        )
        audit(actor=by, action="api_key_created", obj=key, summary={"user": user.get_username(), "scopes": key.scopes})
    return key, raw_key


def api_key_revoke(*, key_id: int, by: User) -> ApiKey:
    """Revoke a key at once; later requests with it answer 401. Revoking twice is a no-op."""
    with transaction.atomic():
        key = ApiKey.objects.select_for_update().select_related("user").get(pk=key_id)
        if not can_manage_api_keys_of(by, key.user) or not by.has_perm("accounts.change_apikey"):
            raise PermissionDenied("You may only revoke your own API keys.")
        if key.revoked_at is None:
            key.revoked_at = timezone.now()
            key.save(update_fields=["revoked_at"])
            audit(actor=by, action="api_key_revoked", obj=key)
    return key


# Writing last_used_at on every request would make each API call a write; once a minute is enough.
LAST_USED_RESOLUTION_SECONDS = 60


def api_key_touch(*, key: ApiKey) -> None:
    """Record that the key was used, at most once a minute."""
    now = timezone.now()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() >= LAST_USED_RESOLUTION_SECONDS:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


# --- approvals ----------------------------------------------------------------------------------


class ApprovalError(Exception):
    """An approval step that the request's state or the user's standing does not allow."""


class SendNotConfirmed(Exception):
    """An approval that would start a send at once (a campaign sent when approved, a journey whose
    segment enters now), asked without its approver's confirmation: nothing was approved. The review
    asks first, and approves once its approver confirms."""


def approval_policy_activate(*, policy_id: int, by: User) -> ApprovalPolicy:
    """Activate a policy: from now on it governs new requests it matches (the newest activated wins).

    Raises ValidationError when none of its approvers could decide its requests (role or access).
    Serialised with the changes of who may decide (``approval_policies_lock``): one made meanwhile,
    which checks only the policies active, is checked after the activation, or before its check.
    """
    if not by.has_perm("accounts.change_approvalpolicy"):
        raise PermissionDenied("Only an Administrator manages approval policies.")
    with transaction.atomic():
        approval_policies_lock()
        policy = ApprovalPolicy.objects.select_for_update().get(pk=policy_id)
        if not (policy.approver_users.exists() or policy.approver_groups.exists()):
            raise ValidationError("A policy needs at least one approver (a user or a group) before it is activated.")
        problems = policy_approver_problems(
            users=policy.approver_users.all(),
            groups=policy.approver_groups.all(),
            app_ids=policy.app_ids,
            campaigns=policy.applies_to_campaigns,
            journeys=policy.applies_to_journeys,
        )
        if problems:
            raise ValidationError(" ".join(problems) + " Requests routed to it could not be decided.")
        policy.is_active = True
        policy.activated_at = timezone.now()
        policy.save(update_fields=["is_active", "activated_at", "updated_at"])
        audit(actor=by, action="approval_policy_activated", obj=policy)
    return policy


def approval_policy_deactivate(*, policy_id: int, by: User) -> ApprovalPolicy:
    """Deactivate a policy (an active policy cannot be edited; deactivate it first)."""
    if not by.has_perm("accounts.change_approvalpolicy"):
        raise PermissionDenied("Only an Administrator manages approval policies.")
    with transaction.atomic():
        policy = ApprovalPolicy.objects.select_for_update().get(pk=policy_id)
        policy.is_active = False
        policy.save(update_fields=["is_active", "updated_at"])
        audit(actor=by, action="approval_policy_deactivated", obj=policy)
    return policy


# The longest note a requester sends the approvers with a request.
APPROVAL_MESSAGE_MAX = 2_000


def approval_request_open(
    *,
    subject: models.Model,
    context: dict,
    fingerprint: str,
    approve_perm: str,
    by: User,
    message: str = "",
    source_context: dict | None = None,
    snapshot: dict | None = None,
) -> ApprovalRequest:
    """Open a pending request for ``subject``, routed by the newest active policy that matches ``context``.

    Call it inside the subject's own locked transition (e.g. submit for review). ``context`` holds
    ``type`` ("campaign"/"journey"), ``app_id``, ``kind`` and ``purpose``. ``source_context``: for
    a revision moving the subject to another app, the same of the app it moves out of. The newest
    policy matching each governs the request together: an approver must be named by both, and
    self-approval is blocked when either blocks it (or when no policy matches one of them, the safe
    default); when the same policy, or only one, matches, it alone governs. ``snapshot``: what the
    subject is submitted as, kept for the review of a request that follows this one, should it be
    sent back (``approval_sent_back_before``). Raises ApprovalError when the subject already has a
    pending request.
    """
    message = message.strip()
    if len(message) > APPROVAL_MESSAGE_MAX:
        raise ValidationError({"message": f"A note is at most {APPROVAL_MESSAGE_MAX:,} characters."})
    if (problem := json_text_problem(message)) is not None:
        raise ValidationError({"message": f"The note: {problem}"})
    active = approval_policies_active()
    policy = next((p for p in active if p.matches(context)), None)
    source_policy = None
    block_self_approval = policy.block_self_approval if policy else True
    if source_context is not None:
        source_policy = next((p for p in active if p.matches(source_context)), None)
        block_self_approval = block_self_approval or (source_policy.block_self_approval if source_policy else True)
        if policy is None or source_policy == policy:
            # Any approver satisfies a side without a policy: the other side's names who decides.
            policy, source_policy = policy or source_policy, None
    subject_type = ContentType.objects.get_for_model(subject)
    if ApprovalRequest.objects.filter(
        subject_type=subject_type, subject_id=str(subject.pk), status=ApprovalRequest.Status.PENDING
    ).exists():
        raise ApprovalError(f"{subject} is already waiting for approval.")
    request = ApprovalRequest.objects.create(
        subject_type=subject_type,
        subject_id=str(subject.pk),
        subject_label=str(subject)[:200],
        fingerprint=fingerprint,
        snapshot=snapshot,
        message=message,
        requested_by=by,
        policy=policy,
        approve_perm=approve_perm,
        source_policy=source_policy,
        block_self_approval=block_self_approval,
    )
    if policy is not None:
        request.approver_users.set(policy.approver_users.all())
        request.approver_groups.set(policy.approver_groups.all())
    if source_policy is not None:
        request.source_approver_users.set(source_policy.approver_users.all())
        request.source_approver_groups.set(source_policy.approver_groups.all())
    summary = {"request": request.pk, "policy": policy.name if policy else None}
    if source_policy is not None:
        summary["source_policy"] = source_policy.name
    audit(actor=by, action="approval_requested", obj=subject, summary=summary)
    return request


def approval_request_as_read(current: ApprovalRequest, *, read_id: int | None) -> ApprovalRequest:
    """Return ``current``, the subject's pending request, when it is the request the approver read
    (``read_id``; None when the caller read none, e.g. a demo that approves what it submitted).

    Call it inside the subject's own locked transition, before anything changes. Raises
    ApprovalError when another request waits now: the one read was closed (cancelled, sent back)
    and the subject submitted again, maybe changed, since; a decision on it would be unseen.
    """
    if read_id is None or current.pk == read_id:
        return current
    # Only a request of the same subject is named: any other id posted says nothing of its request.
    read = ApprovalRequest.objects.filter(
        pk=read_id, subject_type_id=current.subject_type_id, subject_id=current.subject_id
    ).first()
    status = f" ({read.get_status_display().lower()})" if read is not None else ""
    raise ApprovalError(
        f"The request you read was closed since you read it{status}, and '{current.subject_label}' "
        "submitted again: nothing was decided. Review the request waiting now."
    )


def approval_request_lock_for_decision(*, request_id: int, by: User) -> ApprovalRequest:
    """Lock a pending request for ``by``'s decision and check they may decide it (``approver_standing``).

    Call it inside the subject's own locked transition when the refusal must come before the
    subject's own checks (what was submitted against what would be sent), then record the decision
    with ``approval_request_record``. Raises ApprovalError when it is no longer pending,
    PermissionDenied when ``by`` is not an approver of this request (including their own request
    when self-approval is blocked).
    """
    request = ApprovalRequest.objects.select_for_update().get(pk=request_id)
    if request.status != ApprovalRequest.Status.PENDING:
        raise ApprovalError(f"This request is {request.get_status_display().lower()}, not waiting for approval.")
    allowed, reason = approver_standing(by, request)
    if not allowed:
        raise PermissionDenied(reason)
    return request


def approval_request_decide(*, request_id: int, by: User, approve: bool, comment: str = "") -> ApprovalRequest:
    """Record an approver's decision on a pending request: ``approval_request_lock_for_decision``,
    then ``approval_request_record``.

    Call it inside the subject's own locked transition (approve and activate / request changes).
    Raises PermissionDenied when ``by`` is not an approver of this request (including their own
    request when self-approval is blocked), ApprovalError when it is no longer pending,
    ValidationError when changes are requested without a comment.
    """
    request = approval_request_lock_for_decision(request_id=request_id, by=by)
    return approval_request_record(request=request, by=by, approve=approve, comment=comment)


def approval_request_record(*, request: ApprovalRequest, by: User, approve: bool, comment: str = "") -> ApprovalRequest:
    """Record ``by``'s decision on ``request``, as ``approval_request_lock_for_decision`` returned it
    to them in this transaction. Raises ValidationError when changes are requested without a comment."""
    if not approve and not comment.strip():
        raise ValidationError({"comment": "Say what needs to change."})
    request.status = ApprovalRequest.Status.APPROVED if approve else ApprovalRequest.Status.CHANGES_REQUESTED
    request.decided_by = by
    request.decided_at = timezone.now()
    request.comment = comment.strip()
    request.save(update_fields=["status", "decided_by", "decided_at", "comment"])
    audit(
        actor=by,
        action="approval_granted" if approve else "approval_changes_requested",
        obj=request,
        summary={"subject": request.subject_label, "comment": request.comment},
    )
    return request


def approval_request_cancel(*, request_id: int, by: User) -> ApprovalRequest:
    """The requester (or an Administrator) withdraws a pending request. Raises ApprovalError when not pending."""
    request = ApprovalRequest.objects.select_for_update().get(pk=request_id)
    if not may_cancel_approval_request(by, request):
        raise PermissionDenied("Only the requester or an Administrator can cancel a request.")
    if request.status != ApprovalRequest.Status.PENDING:
        raise ApprovalError(f"This request is {request.get_status_display().lower()}, not waiting for approval.")
    request.status = ApprovalRequest.Status.CANCELLED
    request.decided_by = by
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "decided_by", "decided_at"])
    audit(actor=by, action="approval_cancelled", obj=request, summary={"subject": request.subject_label})
    return request


def approval_request_close(*, request_id: int, by: User | None, reason: str) -> ApprovalRequest | None:
    """Close a pending request whose subject no longer needs it (e.g. the campaign was stopped).

    Call it inside the subject's own locked transition. Returns None when it was not pending.
    """
    request = ApprovalRequest.objects.select_for_update().get(pk=request_id)
    if request.status != ApprovalRequest.Status.PENDING:
        return None
    request.status = ApprovalRequest.Status.CANCELLED
    request.decided_by = by
    request.decided_at = timezone.now()
    request.comment = reason
    request.save(update_fields=["status", "decided_by", "decided_at", "comment"])
    audit(actor=by, action="approval_closed", obj=request, summary={"subject": request.subject_label, "reason": reason})
    return request


def approval_void(*, subject: models.Model, by: User | None, reason: str) -> int:
    """Void the subject's approved request(s) after an edit: the edited object needs a new approval."""
    voided = 0
    for request in ApprovalRequest.objects.select_for_update().filter(
        subject_type=ContentType.objects.get_for_model(subject),
        subject_id=str(subject.pk),
        status=ApprovalRequest.Status.APPROVED,
    ):
        request.status = ApprovalRequest.Status.VOIDED
        request.save(update_fields=["status"])
        audit(actor=by, action="approval_voided", obj=request, summary={"reason": reason})
        voided += 1
    return voided


def _stored_tokens(model: type[models.Model], field: models.Field, *, batch_size: int, lock: bool = False):
    """(pk, stored token) of each row whose ``field`` holds a secret: the token, not the decrypted value."""
    from django.db.models.functions import Cast

    rows = model._default_manager.select_for_update() if lock else model._default_manager.all()
    return (
        rows.exclude(**{field.name: ""})
        .exclude(**{f"{field.name}__isnull": True})
        .annotate(_token=Cast(field.name, output_field=models.TextField()))
        .values_list("pk", "_token")
        .order_by("pk")
        .iterator(chunk_size=batch_size)
    )


def encryption_key_rotate(*, batch_size: int = 500) -> dict[str, int]:
    """Re-encrypt every secret stored in an ``EncryptedTextField`` under the first key of PUSHDESK_ENCRYPTION_KEY.

    Run after putting a new key first (the old ones after it, so the current secrets still
    decrypt); once it has run, the old keys may be removed. Each table is done in one
    transaction with its rows locked; running it again only re-encrypts under the same key.
    Returns the number of secrets re-encrypted per ``app_label.Model.field``. Raises
    ImproperlyConfigured, having changed nothing, when a secret cannot be decrypted with any of the keys.
    """
    from django.apps import apps

    from accounts.encryption import UNREADABLE_IN_ROTATION, EncryptedTextField, reencrypt, secret_decrypts

    fields = [
        (model, field)
        for model in apps.get_models()
        for field in model._meta.concrete_fields
        if isinstance(field, EncryptedTextField)
    ]
    # Every secret first: one no key opens would stop the rotation with the fields before it done.
    unreadable = []
    for model, field in fields:
        ids = [pk for pk, token in _stored_tokens(model, field, batch_size=batch_size) if not secret_decrypts(token)]
        if ids:
            shown = ", ".join(f"#{pk}" for pk in ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            unreadable.append(f"{model._meta.label}.{field.name} of {shown}")
    if unreadable:  # which ones, so the operator knows what the missing key opened
        said, _, advice = UNREADABLE_IN_ROTATION.partition(": ")
        raise ImproperlyConfigured(f"{said} ({'; '.join(unreadable)}): {advice}")
    done: dict[str, int] = {}
    for model, field in fields:
        label = f"{model._meta.label}.{field.name}"
        done[label] = 0
        with transaction.atomic():
            for pk, token in _stored_tokens(model, field, batch_size=batch_size, lock=True):
                model._default_manager.filter(pk=pk).update(
                    **{field.name: models.Value(reencrypt(token), output_field=models.TextField())}
                )
                done[label] += 1
        audit(actor=None, action="encryption_key_rotated", summary={"field": label, "secrets": done[label]})
    return done
