"""Permission-filtered reads. Every list an admin page or API view shows goes through ``visible_to``.

The access model: a user's *role* (group permissions) says what they may do; *object access*
says where. Object access is a guardian object permission ``<app>.view_<model>`` held by
the user or one of their groups, on the object itself or on the App it is scoped to
(``Model.access_scope_field``). Superusers and Administrators have every object in scope:
they are the ones who hand out access.

Whoever may decide a pending approval request also reads the app, segments and push contents its
review shows (``visible_to``), read-only and only those pages. Anything more (a write, naming an
object in one's own work, reading other objects through it) asks ``in_scope``, the grants alone.
"""

import datetime as dt

from django.apps import apps
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.fields.json import KT
from guardian.utils import get_group_obj_perms_model, get_user_obj_perms_model

from accounts.approvals import may_be_referenced
from accounts.models import ApiKey, ApprovalPolicy, ApprovalRequest, AuditEvent, User
from accounts.roles import ADMINISTRATOR, ROLES
from config.labels import numbered


def access_perm(model: type[models.Model]) -> str:
    """The object permission that stands for "has access to this object"."""
    opts = model._meta
    return f"{opts.app_label}.view_{opts.model_name}"


def has_every_scope(user: User) -> bool:
    """Superusers and Administrators see every object."""
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    cached = getattr(user, "_pushdesk_is_admin", None)
    if cached is None:
        cached = user.groups.filter(name=ADMINISTRATOR).exists()
        user._pushdesk_is_admin = cached
    return cached


def granted_q(user: User, model: type[models.Model], *, field: str = "pk") -> Q:
    """A condition on ``field`` (a key of ``model``) that holds for the objects granted to the user,
    directly or through one of their groups. Two indexed subqueries on guardian's direct tables."""
    codename = f"view_{model._meta.model_name}"
    user_ids = get_user_obj_perms_model(model).objects.filter(user=user, permission__codename=codename)
    group_ids = get_group_obj_perms_model(model).objects.filter(
        group__in=user.groups.all(), permission__codename=codename
    )
    return Q(**{f"{field}__in": user_ids.values("content_object_id")}) | Q(
        **{f"{field}__in": group_ids.values("content_object_id")}
    )


def is_view_perm(perm: str | None) -> bool:
    """A view permission (or none named): ``visible_to`` also reaches what the user's pending
    requests reference, read-only."""
    return perm is None or perm.partition(".")[2].startswith("view_")


def _scope_q(user: User, model: type[models.Model], *, scope_id: str | None = None, read_scope: bool = False) -> Q:
    """A condition on ``model``'s rows: granted to the user or one of their groups, on the row or on
    the App its ``access_scope_field`` (if it has one) names, or the App whose id the column or
    annotation ``scope_id`` holds in its place. ``read_scope``: or the App the model's
    ``access_read_scope_id`` names (``counts_read_scope``), aliased on the query as
    ``access_read_scope_id`` (``_with_read_scope``)."""
    condition = granted_q(user, model)
    scope_field = getattr(model, "access_scope_field", None)
    if scope_field:
        scope_model = model._meta.get_field(scope_field).related_model
        condition |= granted_q(user, scope_model, field=scope_id or f"{scope_field}_id")
        if read_scope:
            condition |= granted_q(user, scope_model, field="access_read_scope_id")
    return condition


def counts_read_scope(model: type[models.Model], perm: str | None) -> bool:
    """Whether access to ``model``'s rows for ``perm`` counts the App its ``access_read_scope_id``
    names beside the row's (a live campaign's approved version's): for a view permission, and the
    permissions the model names in ``access_read_scope_perms`` (stopping a campaign)."""
    if getattr(model, "access_read_scope_id", None) is None:
        return False
    return is_view_perm(perm) or perm in getattr(model, "access_read_scope_perms", ())


def _with_read_scope(queryset: QuerySet) -> QuerySet:
    return queryset.alias(access_read_scope_id=queryset.model.access_read_scope_id())


def _role_allows(user: User | None, model: type[models.Model], perm: str | None) -> bool:
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    return user.has_perm(perm or access_perm(model))


def in_scope(user: User, queryset: QuerySet, *, perm: str | None = None, scope_id: str | None = None) -> QuerySet:
    """Narrow ``queryset`` to the objects in the user's scope: granted to them or one of their
    groups, on the object or on the App it is scoped to (every object for Superusers and
    Administrators), when their role grants ``perm`` (default: the model's view permission).
    ``scope_id``: a column or annotation of ``queryset`` holding the id of the App to judge in
    place of the one the row names (a live campaign's approved version's app, for what it sends).

    Ask this, not ``visible_to``, whenever access authorizes more than reading the object's own
    page: a write, naming the object in one's own work (a campaign's app, segment or content, a
    journey's, a segment's rules, a device's app), or reading other objects through it (an app's
    devices, a segment's imports). What a decider reads through a pending review is not in scope.
    """
    if not _role_allows(user, queryset.model, perm):
        return queryset.none()
    if has_every_scope(user):
        return queryset
    return queryset.filter(_scope_q(user, queryset.model, scope_id=scope_id))


def granted_to(user: User, queryset: QuerySet) -> QuerySet:
    """Narrow ``queryset`` to the objects granted to the user or one of their groups on themselves,
    not through the App they are scoped to, when their role grants the model's view permission:
    what a grant on the object alone reaches (a campaign's or a journey's sends' rows)."""
    if not _role_allows(user, queryset.model, None):
        return queryset.none()
    return queryset.filter(granted_q(user, queryset.model))


def visible_to(user: User, queryset: QuerySet, *, perm: str | None = None) -> QuerySet:
    """Narrow ``queryset`` to the objects the user may see.

    ``perm`` is the role permission needed (default: the model's view permission). The objects in
    the user's scope (``in_scope``) and, for a view permission, those referenced by the pending
    requests the user may decide (the app, segments and push contents a review shows), and those
    scoped to another App of the row that the model names (``access_read_scope_id``: an expression
    of its id, a campaign's approved version's app): read-only, for their pages, and for the
    permissions the model names in ``access_read_scope_perms`` (stopping a campaign). A check that
    authorizes anything else asks ``in_scope``.
    """
    model = queryset.model
    if not _role_allows(user, model, perm):
        return queryset.none()
    if has_every_scope(user):
        return queryset
    # Another App whose grantees read the row (a live campaign's approved version's, while a
    # revision moving it to another app waits: it sends there), and may stop it.
    read_scope = counts_read_scope(model, perm)
    condition = _scope_q(user, model, read_scope=read_scope)
    if read_scope:
        queryset = _with_read_scope(queryset)
    if is_view_perm(perm) and may_be_referenced(model):
        # Whoever may decide a request reads what its review shows, read-only.
        referenced = decidable_references(user).get(model._meta.label_lower)
        if referenced:
            condition |= Q(pk__in=sorted(referenced))
    return queryset.filter(condition)


def visible_named(user: User | None, model, ids) -> dict[int, str]:
    """The names of the objects of ``model`` among ``ids`` that ``user`` may see, by id (one query;
    none without ids or a reader): a page names those, and the others by number (``config.labels.numbered``)."""
    ids = set(ids) - {None}
    if not ids or user is None:
        return {}
    return dict(visible_to(user, model.objects.filter(pk__in=ids)).values_list("pk", "name"))


def uses_described(objects, *, by: User, describe, most: int = 5, owner_field: str = "") -> list[str]:
    """What keeps an object from being deleted (a ProtectedError's ``objects``), as ``by`` may be
    told, at most ``most`` different ones: ``describe(obj)`` gives (what, owner, what unseen) for
    an object that names its owner ("variant B of", campaign, "a variant of"), or (text, None, "")
    for words of its own; an owner ``by`` may see is named ("variant B of campaign 'X'"), any other
    not ("a variant of a campaign you cannot see").

    The owners' visibility is read once per kind of owner, however many objects name them (many
    variants of one campaign, many campaigns). ``owner_field``: the foreign key by which objects
    name their owner, read for all the objects of a kind that has it at once, before ``describe``.
    """
    objects = list(objects)
    if owner_field:
        by_kind: dict[type[models.Model], list] = {}
        for obj in objects:
            by_kind.setdefault(type(obj), []).append(obj)
        for model, group in by_kind.items():
            if any(f.name == owner_field and f.many_to_one for f in model._meta.get_fields()):
                models.prefetch_related_objects(group, owner_field)
    described = [describe(obj) for obj in objects]
    owners: dict[type[models.Model], set] = {}
    for _, owner, _ in described:
        if owner is not None:
            owners.setdefault(type(owner), set()).add(owner.pk)
    seen = {
        (model, pk)
        for model, pks in owners.items()
        for pk in visible_to(by, model._default_manager.filter(pk__in=sorted(pks))).values_list("pk", flat=True)
    }
    uses: list[str] = []
    for what, owner, unseen in described:
        if owner is not None:
            kind = owner._meta.verbose_name
            named = (type(owner), owner.pk) in seen
            what = f"{what} {kind} '{owner}'" if named else f"{unseen} a {kind} you cannot see"
        if what not in uses:
            uses.append(what)
        if len(uses) == most:  # enough to start with
            break
    return uses


def decidable_references(user: User) -> dict[str, set[int]]:
    """The objects referenced by the pending requests ``user`` may decide (segments, contents, apps),
    by model label. Kept on the user object until the pending requests change."""
    if not user.has_perm("accounts.decide_approvalrequest"):
        return {}
    pending = ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING)
    stamp = tuple(pending.aggregate(n=models.Count("pk"), last=models.Max("pk")).values())
    cached = getattr(user, "_decidable_references", None)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    references: dict[str, set[int]] = {}
    user._decidable_references = (stamp, references)  # first: the checks below read visibility too
    from accounts.approvals import approval_subject_for

    waiting = approvals_waiting_for(user)
    for model, subjects in _by_model(set(approval_subjects(waiting).values())).items():  # deleted ones gone
        handler = approval_subject_for(model)
        if handler is None:
            continue
        for label, pks in handler.references(subjects).items():
            references.setdefault(label, set()).update(pks)
    if references.get("audiences.segment"):
        # A segment's review shows its rules: the segments they use, at any depth, and the apps
        # their reachability conditions name are part of what the approver decides.
        from audiences.models import segments_named_by

        segments, named_apps = segments_named_by(references["audiences.segment"])
        references["audiences.segment"] |= segments
        if named_apps:
            references.setdefault("delivery.app", set()).update(named_apps)
    return references


def access_key(obj: models.Model, perm: str | None) -> tuple:
    """Under what ``can`` keeps its answer for ``perm`` on ``obj`` in a page's ``answers``: the
    access that answers it, a view permission's (``visible_to``), one counting the read scope's
    (``counts_read_scope``; the view permission's where no review shows the model's objects), or
    the scope alone."""
    model = type(obj)
    if is_view_perm(perm):
        kind = "view"
    elif counts_read_scope(model, perm):
        kind = "read_scope" if may_be_referenced(model) else "view"
    else:
        kind = "scope"
    return (obj._meta.label_lower, obj.pk, kind)


def can(user: User, perm: str, obj: models.Model, *, answers: dict | None = None) -> bool:
    """True when the user's role grants ``perm`` and the object is within their access: in their
    scope, or for a view permission also read through a review (``visible_to``), and for one the
    model names in ``access_read_scope_perms`` through the App its ``access_read_scope_id`` names.
    A check that authorizes using the object names the action's own permission, or asks ``in_scope``.

    ``answers`` (one page's that only reads) keeps what was found: ``visible_to`` tells two
    permissions apart only by the role's grant and by the access that answers them (``access_key``),
    so the object's access is read at most three times however many permissions the page asks about.
    """
    if answers is None:
        return visible_to(user, type(obj)._default_manager.filter(pk=obj.pk), perm=perm).exists()
    if not user.has_perm(perm):
        return False
    key = access_key(obj, perm)
    if key not in answers:
        answers[key] = can(user, perm, obj)
    return answers[key]


def object_access_of(user: User) -> list[tuple[models.Model, str]]:
    """What the user was granted, object by object: (object, "direct" or "group:<name>")."""
    found: list[tuple[models.Model, str]] = []
    for model in apps.get_models():
        if not getattr(model, "has_object_access", False):
            continue
        codename = f"view_{model._meta.model_name}"
        for row in (
            get_user_obj_perms_model(model)
            .objects.filter(user=user, permission__codename=codename)
            .select_related("content_object")
        ):
            found.append((row.content_object, "direct"))
        for row in (
            get_group_obj_perms_model(model)
            .objects.filter(group__in=user.groups.all(), permission__codename=codename)
            .select_related("content_object", "group")
        ):
            found.append((row.content_object, f"group:{row.group.name}"))
    return found


def grants_on(obj: models.Model) -> list[User | Group]:
    """The users and groups granted access to one object."""
    codename = f"view_{obj._meta.model_name}"
    users = [
        row.user
        for row in get_user_obj_perms_model(type(obj))
        .objects.filter(content_object=obj, permission__codename=codename)
        .select_related("user")
    ]
    groups = [
        row.group
        for row in get_group_obj_perms_model(type(obj))
        .objects.filter(content_object=obj, permission__codename=codename)
        .select_related("group")
    ]
    return [*users, *groups]


def can_manage_api_keys_of(by: User, owner: User) -> bool:
    """Whether ``by`` may read and revoke ``owner``'s keys: their own, or anyone's for an Administrator."""
    return by.is_active and (by.pk == owner.pk or by.has_perm("accounts.manage_others_apikey"))


def can_create_api_key_for(by: User, owner: User) -> bool:
    """Whether ``by`` may create a key for ``owner``: one whose keys they manage, and a superuser
    only for a superuser. A key acts as its owner, so an Administrator's key for a superuser would
    let them do through the API what only a superuser may."""
    return can_manage_api_keys_of(by, owner) and (by.is_superuser or not owner.is_superuser)


def superuser_keys_made_by_others(*, now=None) -> QuerySet[ApiKey]:
    """Unrevoked, unexpired API keys owned by a superuser and made by someone who is not one
    (``can_create_api_key_for`` refuses these now; earlier an Administrator could make them, and
    act as the superuser through the API), or by a user since deleted. A key a superuser made for
    themself is not one."""
    from django.utils import timezone

    now = now or timezone.now()
    return (
        ApiKey.objects.filter(user__is_superuser=True, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .exclude(created_by__is_superuser=True)
        .select_related("user", "created_by")
        .order_by("pk")
    )


def may_own_api_keys(user: User) -> bool:
    """Whether the user's role may own API keys (the roles table: not Viewers, not users without a role)."""
    return user.is_active and user.has_perm("accounts.add_apikey")


def api_key_owner_choices(by: User) -> QuerySet[User]:
    """The users ``by`` may create an API key for: themself, or (Administrators) anyone whose role
    may own one, superusers only for a superuser (``can_create_api_key_for``)."""
    from django.contrib.auth.models import Permission

    if by.has_perm("accounts.manage_others_apikey"):
        users = User.objects.filter(is_active=True)
        if not by.is_superuser:
            users = users.filter(is_superuser=False)
    else:
        users = User.objects.filter(pk=by.pk, is_active=True)
    perm = Permission.objects.filter(content_type__app_label="accounts", codename="add_apikey")
    # A role's permissions, never a team's (``accounts.backends``): one join, both conditions on it.
    return users.filter(
        Q(is_superuser=True) | Q(groups__name__in=ROLES, groups__permissions__in=perm) | Q(user_permissions__in=perm)
    ).distinct()


def teams_visible_to(user: User) -> QuerySet[Group]:
    """The teams (groups that are no roles) for those who may read groups (Administrators), each
    with its members (``user_set``, by username) read in one more query; none for anyone else."""
    if not user.has_perm("auth.view_group"):
        return Group.objects.none()
    members = User.objects.order_by("username")
    return Group.objects.exclude(name__in=ROLES).prefetch_related(models.Prefetch("user_set", queryset=members))


def api_keys_visible_to(user: User) -> QuerySet[ApiKey]:
    qs = ApiKey.objects.select_related("user")
    if user.has_perm("accounts.manage_others_apikey"):
        return qs
    if user.has_perm("accounts.view_apikey"):
        return qs.filter(user=user)
    return qs.none()


# The people a colleague may look up (their card): the owner or creator of an object they may see.
_PEOPLE_OF = (
    ("campaigns", "Campaign", "owner"),
    ("journeys", "Journey", "owner"),
    ("audiences", "Segment", "created_by"),
    ("delivery", "PushContent", "created_by"),
)


def user_known_to(viewer: User, person: User) -> bool:
    """Whether ``viewer`` may read ``person``'s card: themself, anyone for an Administrator, or the
    owner, creator, requester or decider of something ``viewer`` may see. Anyone else answers as a
    missing user would, so ids cannot be enumerated."""
    from django.apps import apps as django_apps

    if viewer.pk == person.pk or has_every_scope(viewer):
        return True
    if approval_requests_visible_to(viewer).filter(Q(requested_by=person) | Q(decided_by=person)).exists():
        return True
    for app_label, model_name, field in _PEOPLE_OF:
        model = django_apps.get_model(app_label, model_name)
        if visible_to(viewer, model._default_manager.filter(**{field: person})).exists():
            return True
    return False


def audit_events_visible_to(user: User) -> QuerySet[AuditEvent]:
    """Administrators read the whole log; everyone else reads the events of their own actions."""
    if not user.has_perm("accounts.view_auditevent"):
        return AuditEvent.objects.none()
    if has_every_scope(user):
        return AuditEvent.objects.all()
    return AuditEvent.objects.filter(actor=user)


# --- approvals ----------------------------------------------------------------------------------


def approval_policies_active() -> list[ApprovalPolicy]:
    """Active policies, the most recently activated first (it wins when several match)."""
    return list(
        ApprovalPolicy.objects.filter(is_active=True)
        .order_by("-activated_at", "-pk")
        .prefetch_related("approver_users", "approver_groups")
    )


def approver_standing(user: User, request: ApprovalRequest) -> tuple[bool, str]:
    """May ``user`` decide ``request``? Returns (allowed, the reason when not)."""
    return approver_standings(user, [request])[request.pk]


def approver_standings(
    user: User, requests: list[ApprovalRequest], *, policy_approver_of: set[int] | None = None
) -> dict[int, tuple[bool, str]]:
    """``approver_standing`` of each request, by request id, in a number of queries that does not
    grow with the requests: each check runs once for all the requests still standing, in this
    order (the first refusal is the reason given).

    ``policy_approver_of``: the ids of the requests whose policy names the user (directly or
    through a group), when the caller read them already (the inbox's own query does).
    """
    return {
        pk: (allowed, reason) for pk, (allowed, reason, _why) in _standings(user, requests, policy_approver_of).items()
    }


def _standings(
    user: User, requests: list[ApprovalRequest], policy_approver_of: set[int] | None
) -> dict[int, tuple[bool, str, str]]:
    """``approver_standings``, each refusal with what the user lacks in a word too (``active``,
    ``role``, ``self``, ``changed``, ``policy``, ``move``, ``access``): what a request nobody may
    decide tells its submitter (``approval_stuck_text``)."""
    answers: dict[int, tuple[bool, str, str]] = {}
    standing = list(requests)

    def refuse(refused: set[int], reason: str, why: str) -> None:
        nonlocal standing
        for request in standing:
            if request.pk in refused:
                answers[request.pk] = (False, reason, why)
        standing = [request for request in standing if request.pk not in refused]

    if not user.is_active:
        refuse({r.pk for r in standing}, "This account is disabled.", "active")
    decides = user.has_perm("accounts.decide_approvalrequest") if standing else False
    refuse(
        {r.pk for r in standing if not (decides and user.has_perm(r.approve_perm))},
        "Your role may not approve.",
        "role",
    )
    refuse(
        {r.pk for r in standing if r.block_self_approval and r.requested_by_id == user.pk},
        "You cannot approve your own request.",
        "self",
    )
    subjects = approval_subjects(standing)  # for the two checks that read them
    refuse(
        _changed_since_approval(user, [r for r in standing if r.block_self_approval], subjects),
        "You changed what this request asks to approve: another approver decides it.",
        "changed",
    )
    with_policy = [r for r in standing if r.policy_id is not None]
    if with_policy and policy_approver_of is None:
        policy_approver_of = set(
            ApprovalRequest.objects.filter(pk__in=[r.pk for r in with_policy])
            .filter(policy_approver_q(user))
            .values_list("pk", flat=True)
        )
    for request in with_policy:
        if request.pk not in policy_approver_of:
            refuse({request.pk}, f"You are not an approver of the policy '{request.policy}'.", "policy")
    with_source_policy = [r for r in standing if r.source_policy_id is not None]
    if with_source_policy:  # a move: the policy of the app it moves out of must name them too
        source_approver_of = set(
            ApprovalRequest.objects.filter(pk__in=[r.pk for r in with_source_policy])
            .filter(policy_approver_q(user, source=True))
            .values_list("pk", flat=True)
        )
        for request in with_source_policy:
            if request.pk not in source_approver_of:
                refuse({request.pk}, f"You are not an approver of the policy '{request.source_policy}'.", "policy")
    for reason, refused in _moves_out_of_reach(user, standing, subjects).items():
        refuse(refused, reason, "move")
    refuse(_subjects_out_of_reach(user, standing, subjects), "You have no access to this object.", "access")
    for request in standing:
        answers[request.pk] = (True, "", "")
    return answers


def policy_approver_q(user: User, *, source: bool = False) -> Q:
    """A condition on approval requests: their policy names ``user``, directly or through a group
    (``source``: the policy of the app a move takes their subject out of)."""
    users, groups = (
        (ApprovalRequest.source_approver_users, ApprovalRequest.source_approver_groups)
        if source
        else (ApprovalRequest.approver_users, ApprovalRequest.approver_groups)
    )
    named = users.through.objects.filter(approvalrequest=OuterRef("pk"), user=user)
    in_group = groups.through.objects.filter(approvalrequest=OuterRef("pk"), group__in=user.groups.values("pk"))
    return Q(Exists(named)) | Q(Exists(in_group))


def approval_subjects(requests: list[ApprovalRequest]) -> dict[int, models.Model]:
    """Each request's subject, by request id (none for a subject deleted since): one query per kind
    of subject, whatever the requests."""
    wanted: dict[int, set[str]] = {}
    for request in requests:
        wanted.setdefault(request.subject_type_id, set()).add(request.subject_id)
    rows: dict[tuple[int, str], models.Model] = {}
    for type_id, ids in wanted.items():
        model = ContentType.objects.get_for_id(type_id).model_class()
        if model is None:  # a model no longer installed
            continue
        rows.update({(type_id, str(pk)): row for pk, row in model._default_manager.in_bulk(ids).items()})
    answer = {}
    for request in requests:
        row = rows.get((request.subject_type_id, str(request.subject_id)))
        if row is not None:
            answer[request.pk] = row
    return answer


def approval_subjects_hidden(user: User, requests: list[ApprovalRequest]) -> set[int]:
    """The requests whose subject is still there but ``user`` may not see it now (``visible_to``):
    their requester or decider who lost access to its app since, say. One query per kind of
    subject, and one more per kind that has such subjects; none for an Administrator."""
    if not requests or has_every_scope(user):
        return set()
    wanted: dict[int, set[str]] = {}
    for request in requests:
        wanted.setdefault(request.subject_type_id, set()).add(request.subject_id)
    hidden: set[tuple[int, str]] = set()
    for type_id, ids in wanted.items():
        model = ContentType.objects.get_for_id(type_id).model_class()
        if model is None:  # a model no longer installed
            continue
        rows = model._default_manager.filter(pk__in=ids)
        unseen = ids - {str(pk) for pk in visible_to(user, rows).values_list("pk", flat=True)}
        if unseen:
            hidden |= {(type_id, str(pk)) for pk in rows.filter(pk__in=unseen).values_list("pk", flat=True)}
    return {request.pk for request in requests if (request.subject_type_id, request.subject_id) in hidden}


def approval_subjects_named(
    user: User, requests: list[ApprovalRequest], *, hidden: set[int] | None = None
) -> dict[int, str]:
    """How ``user`` may name each request's subject, by request id: by the name it was submitted
    with (``subject_label``) when they may see the subject now, or it was deleted since (its record
    says so); by kind and number otherwise ("campaign #12", ``config.labels.numbered``), as a page
    names what its reader may not see. The queries of ``approval_subjects_hidden``, unless the
    caller found ``hidden`` already."""
    if hidden is None:
        hidden = approval_subjects_hidden(user, requests)
    named = {}
    for request in requests:
        if request.pk in hidden:
            named[request.pk] = numbered(request.subject_type.model_class()._meta.verbose_name, request.subject_id)
        else:
            named[request.pk] = request.subject_label
    return named


def approvals_reading(obj: models.Model) -> list[ApprovalRequest]:
    """The pending approval requests whose subject's approval covers ``obj`` (a push content or a
    segment its review shows, ``ApprovalSubject.references``; for a segment, also one the rules of
    those use, at any depth) and which still hold as submitted (``changed_since_submitted``). Read
    before a save of ``obj``, for ``approvals_outdated_said`` after it. A query per kind of subject,
    then a few per request waiting."""
    from accounts.approvals import approval_subject_for

    label = obj._meta.label_lower
    pending = list(ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING).select_related("subject_type"))
    subjects = approval_subjects(pending)
    reading = []
    for request in pending:
        subject = subjects.get(request.pk)
        handler = approval_subject_for(type(subject)) if subject is not None else None
        if handler is None or handler.changed_since_submitted is None:
            continue
        if handler.referenced_models is not None and label not in handler.referenced_models:
            continue
        referenced = set(handler.references([subject]).get(label, ()))
        if label == "audiences.segment" and referenced and obj.pk not in referenced:
            from audiences.models import segments_named_by

            referenced |= segments_named_by(referenced)[0]
        if obj.pk in referenced and not handler.changed_since_submitted(subject, request):
            reading.append(request)
    return reading


def approvals_outdated_said(user: User, reading: list[ApprovalRequest], *, what: str) -> str:
    """Of ``reading`` (``approvals_reading`` before a save of ``what``, "this content"), those whose
    subject no longer holds as submitted now: what ``user`` is told of them (those they may see
    named, the others counted), that each must be submitted again to be approved; "" when none."""
    from accounts.approvals import approval_subject_for

    subjects = approval_subjects(reading)  # read again: what the save changed
    outdated = []
    for request in reading:
        subject = subjects.get(request.pk)
        handler = approval_subject_for(type(subject)) if subject is not None else None
        if handler is not None and handler.changed_since_submitted(subject, request):
            outdated.append(request)
    if not outdated:
        return ""
    hidden = approval_subjects_hidden(user, outdated)
    names = [
        f"{request.subject_type.model_class()._meta.verbose_name} “{request.subject_label}”"
        for request in outdated
        if request.pk not in hidden
    ]
    unseen: dict[str, int] = {}
    for request in outdated:
        if request.pk in hidden:
            kind = request.subject_type.model_class()._meta
            unseen[kind.verbose_name] = unseen.get(kind.verbose_name, 0) + 1
    for kind, count in unseen.items():
        names.append(f"a {kind} you cannot see" if count == 1 else f"{count} {kind}s you cannot see")
    who = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    one = len(outdated) == 1
    return (
        f"{who[0].upper()}{who[1:]} {'waits' if one else 'wait'} for approval with {what} as it was before this "
        f"change: {'its' if one else 'their'} approval would be refused. {'It' if one else 'Each'} must be "
        "submitted again (its request cancelled or sent back for changes, then submitted) to be approved with it."
    )


def _by_model(subjects) -> dict[type[models.Model], list[models.Model]]:
    grouped: dict[type[models.Model], list[models.Model]] = {}
    for subject in subjects:
        grouped.setdefault(type(subject), []).append(subject)
    return grouped


def _subjects_out_of_reach(user: User, requests: list[ApprovalRequest], subjects: dict[int, models.Model]) -> set[int]:
    """The requests whose subject (``approval_subjects``) ``user`` has no access to, or which was
    deleted: one query per kind of subject."""
    reached: set[tuple[type[models.Model], object]] = set()
    for model, rows in _by_model({subjects[r.pk] for r in requests if r.pk in subjects}).items():
        visible = in_scope(user, model._default_manager.filter(pk__in=[row.pk for row in rows]))
        reached |= {(model, pk) for pk in visible.values_list("pk", flat=True)}
    return {r.pk for r in requests if r.pk not in subjects or (type(subjects[r.pk]), subjects[r.pk].pk) not in reached}


def approval_app_moves(
    requests: list[ApprovalRequest], subjects: dict[int, models.Model]
) -> dict[int, tuple[int, int]]:
    """The requests that move their subject from one app to another (the model's
    ``approval_app_moves_of``: a live campaign's revision moving it to another app), by request id:
    (the app it moves out of, the app it moves into). ``subjects`` are ``approval_subjects``'s; no
    query."""
    moves: dict[int, tuple[int, int]] = {}
    for model, rows in _by_model({subjects[r.pk] for r in requests if r.pk in subjects}).items():
        moves_of = getattr(model, "approval_app_moves_of", None)
        if moves_of is None:
            continue
        moved = moves_of(rows)
        for request in requests:
            row = subjects.get(request.pk)
            if type(row) is model and row.pk in moved:
                moves[request.pk] = moved[row.pk]
    return moves


def _moves_out_of_reach(user: User, requests: list[ApprovalRequest], subjects: dict[int, models.Model]) -> dict:
    """The requests that move their subject from one app to another (the model's
    ``approval_app_moves_of``: a live campaign's revision moving it to another app) when ``user`` has
    no access to one of the two apps, by the reason: such a decision takes sends out of one app and
    into the other, so its approver needs both. The app not reached is told by its part in the move,
    not by its name. One query for all the requests, none without a move."""
    if has_every_scope(user):
        return {}
    moves = approval_app_moves(requests, subjects)
    if not moves:
        return {}
    app_model = apps.get_model("delivery", "App")
    named = sorted({app_id for move in moves.values() for app_id in move})
    reached = set(in_scope(user, app_model.objects.filter(pk__in=named)).values_list("pk", flat=True))
    both = "an approver with access to both apps decides it."
    out = f"This revision moves the campaign out of the app its approved version sends to, which you have no access to: {both}"
    into = f"This revision moves the campaign into an app you have no access to: {both}"
    refused: dict[str, set[int]] = {}
    for request_id, (from_id, to_id) in moves.items():
        if from_id not in reached:
            refused.setdefault(out, set()).add(request_id)
        elif to_id not in reached:
            refused.setdefault(into, set()).add(request_id)
    return refused


CONTENT_AUTHORING_ACTIONS = ("pushcontent_created", "pushcontent_duplicated", "pushcontent_changed")
# What changes who a segment holds: an approval covers its subject's audience as it covers its content.
SEGMENT_AUTHORING_ACTIONS = ("segment_created", "segment_changed", "segment_members_changed")
# An import into a kept list changes its members as an edit of them does: its events name the
# import, and the segment it feeds in their summary (``audiences.services.imports``).
IMPORT_AUTHORING_ACTIONS = ("import_created", "import_restarted")


def _changed_since_approval(user: User, requests: list[ApprovalRequest], subjects: dict[int, models.Model]) -> set[int]:
    """The requests whose subject, a push content it sends, or a segment it sends to (or one those
    segments' rules use), ``user`` changed since the subject was last approved (ever, when it
    never was): their own work, which the four eyes are for.

    A fixed number of queries whatever the requests: per kind of subject (``subjects``, read by
    ``approval_subjects``), their contents (``approval_content_ids_of``, one query, or
    ``approval_content_ids`` each); then for all of them the last approval of each subject, and
    the user's last authoring of each subject and content.
    """
    from delivery.models import PushContent

    contents_of: dict[ApprovalRequest, list[int]] = {}  # each request's contents, its subject still there
    segments_of: dict[ApprovalRequest, set[int]] = {}  # each request's segments, and those they use
    approved = Q(pk__in=[])  # the subjects' approvals
    authored = Q(pk__in=[])  # the authoring of the subjects and of their contents
    undoing = Q(pk__in=[])  # by anyone: what throws authoring away (``APPROVAL_AUTHORING_UNDONE_BY``)
    undone_by: dict[str, str] = {}
    content_ids: set[str] = set()
    there = [r for r in requests if r.pk in subjects]  # deleted subjects have nothing left to approve
    for model, rows in _by_model({subjects[r.pk] for r in there}).items():
        actions = getattr(model, "APPROVAL_AUTHORING_ACTIONS", ())
        if not actions:
            continue
        if hasattr(model, "approval_content_ids_of"):
            contents = model.approval_content_ids_of(rows)
        else:
            contents = {row.pk: row.approval_content_ids() for row in rows}
        segments = model.approval_segment_ids_of(rows) if hasattr(model, "approval_segment_ids_of") else {}
        for request in there:
            row = subjects[request.pk]
            if type(row) is model:
                contents_of[request] = contents[row.pk]
                content_ids |= {str(pk) for pk in contents[row.pk]}
                segments_of[request] = set(segments.get(row.pk, ()))
        type_id = ContentType.objects.get_for_model(model, for_concrete_model=False).pk  # cached: no query
        ids = sorted(str(row.pk) for row in rows)
        approved |= Q(subject_type=type_id, subject_id__in=ids)
        # A row may count more actions as its own than its kind does (``approval_authoring_actions``).
        ids_by_actions: dict[tuple[str, ...], list[str]] = {}
        for row in rows:
            own = row.approval_authoring_actions() if hasattr(row, "approval_authoring_actions") else actions
            ids_by_actions.setdefault(tuple(own), []).append(str(row.pk))
        for own, own_ids in ids_by_actions.items():
            authored |= Q(object_type=type_id, object_id__in=sorted(own_ids), action__in=own)
        undone = getattr(model, "APPROVAL_AUTHORING_UNDONE_BY", {})
        if undone:
            undone_by.update(undone)
            undoing |= Q(object_type=type_id, object_id__in=ids, action__in=sorted(set(undone.values())))
    if not contents_of:
        return set()

    def subject_key(request: ApprovalRequest) -> tuple[int, str]:
        return request.subject_type_id, str(request.subject_id)

    content_type = ContentType.objects.get_for_model(PushContent)
    if content_ids:
        authored |= Q(object_type=content_type, object_id__in=sorted(content_ids), action__in=CONTENT_AUTHORING_ACTIONS)
    segment_type = ContentType.objects.get_by_natural_key("audiences", "segment")  # cached: no query
    segment_ids = sorted({str(pk) for segments in segments_of.values() for pk in segments})
    import_type_id = None
    if segment_ids:
        import_type_id = ContentType.objects.get_by_natural_key("audiences", "import").pk  # cached: no query
        authored |= Q(object_type=segment_type, object_id__in=segment_ids, action__in=SEGMENT_AUTHORING_ACTIONS)
        authored |= Q(
            object_type=import_type_id,
            action__in=IMPORT_AUTHORING_ACTIONS,
            summary__segment__in=[int(pk) for pk in segment_ids],
        )
    last_approved = {
        (row["subject_type"], row["subject_id"]): row["last"]
        for row in ApprovalRequest.objects.filter(approved, status=ApprovalRequest.Status.APPROVED)
        .order_by()
        .values("subject_type", "subject_id")
        .annotate(last=models.Max("decided_at"))
    }
    last_done: dict[tuple[int, str, str], dt.datetime] = {}  # (type, id, action): its last time
    for row in (
        AuditEvent.objects.filter((authored & Q(actor=user)) | undoing)
        .order_by()
        .values("object_type", "object_id", "action", fed=KT("summary__segment"))
        .annotate(last=models.Max("created_at"))
    ):
        if row["object_type"] == import_type_id:  # an import: the authoring of the segment it feeds
            key = (segment_type.pk, str(row["fed"]), row["action"])
            last_done[key] = max(row["last"], last_done.get(key, row["last"]))
            continue
        last_done[row["object_type"], row["object_id"], row["action"]] = row["last"]
    last_authored: dict[tuple[int, str], dt.datetime] = {}  # what the user authored, and still stands
    for (type_id, object_id, action), when in last_done.items():
        undoer = undone_by.get(action)
        undone_at = last_done.get((type_id, object_id, undoer)) if undoer else None
        if action in undone_by.values() or (undone_at is not None and undone_at > when):
            continue
        key = (type_id, object_id)
        last_authored[key] = max(when, last_authored.get(key, when))
    changed: set[int] = set()
    for request, contents in contents_of.items():
        since = last_approved.get(subject_key(request))
        touched = [last_authored.get(subject_key(request))]
        touched += [last_authored.get((content_type.pk, str(pk))) for pk in contents]
        touched += [last_authored.get((segment_type.pk, str(pk))) for pk in segments_of.get(request, ())]
        if any(when is not None and (since is None or when > since) for when in touched):
            changed.add(request.pk)
    return changed


def approvals_waiting_for(user: User) -> list[ApprovalRequest]:
    """The approver's inbox: pending requests this user may decide, oldest first.

    A fixed number of queries whatever the number of requests (``approver_standings``).
    """
    if not user.has_perm("accounts.decide_approvalrequest"):
        return []
    pending = list(
        ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING)
        .filter(Q(policy__isnull=True) | policy_approver_q(user))
        .exclude(block_self_approval=True, requested_by=user)
        .select_related("requested_by", "subject_type", "policy", "source_policy")
        .order_by("requested_at")
    )
    standings = approver_standings(user, pending, policy_approver_of={r.pk for r in pending if r.policy_id is not None})
    return [request for request in pending if standings[request.pk][0]]


def approval_requests_visible_to(user: User) -> QuerySet[ApprovalRequest]:
    """Requests one made, was asked to decide, or (Administrators) all of them."""
    qs = ApprovalRequest.objects.select_related("requested_by", "decided_by", "subject_type", "policy", "source_policy")
    if not user.has_perm("accounts.view_approvalrequest"):
        return qs.none()
    if has_every_scope(user):
        return qs
    return qs.filter(
        Q(requested_by=user)
        | Q(decided_by=user)
        | Q(status=ApprovalRequest.Status.PENDING, pk__in=[r.pk for r in approvals_waiting_for(user)])
    )


def may_cancel_approval_request(user: User, request: ApprovalRequest) -> bool:
    """Whether ``user`` may withdraw ``request`` (``approval_request_cancel``): its requester or an
    Administrator. An approver who did not ask decides it instead (Request changes sends it back)."""
    return request.requested_by_id == user.pk or user.has_perm("accounts.manage_object_access")


def approval_current(subject: models.Model) -> ApprovalRequest | None:
    """The subject's latest request (pending, approved, or the last decision)."""
    from django.contrib.contenttypes.models import ContentType

    return (
        ApprovalRequest.objects.filter(
            subject_type=ContentType.objects.get_for_model(subject), subject_id=str(subject.pk)
        )
        .select_related("requested_by", "decided_by")
        .order_by("-requested_at", "-pk")
        .first()
    )


def approval_sent_back_before(request: ApprovalRequest) -> ApprovalRequest | None:
    """The request its subject had just before ``request`` (the order of ``approval_current``), when
    an approver sent that one back for changes: ``request`` is its author's answer to it. None
    otherwise (a first request, or one after an approval, a cancel or an edit that voided it)."""
    before = (
        ApprovalRequest.objects.filter(subject_type_id=request.subject_type_id, subject_id=request.subject_id)
        .filter(Q(requested_at__lt=request.requested_at) | Q(requested_at=request.requested_at, pk__lt=request.pk))
        .select_related("decided_by")
        .order_by("-requested_at", "-pk")
        .first()
    )
    return before if before is not None and before.status == ApprovalRequest.Status.CHANGES_REQUESTED else None


def _approvers(users, groups) -> list[User]:
    """The active people a policy names, directly or through its groups."""
    named = User.objects.filter(Q(pk__in=[u.pk for u in users]) | Q(groups__in=[g.pk for g in groups]))
    return list(named.filter(is_active=True).distinct())


def policy_approver_problems(*, users, groups, app_ids, campaigns: bool, journeys: bool) -> list[str]:
    """Why a policy with these approvers would strand its requests: for each kind of object it
    applies to, some approver must hold the role that approves it, and have access to each of its
    apps. Returns the problems, empty when someone can decide.

    Reads the apps once, and each approver's access among them once (a policy naming no app is
    asked for every app)."""
    app_model = apps.get_model("delivery", "App")
    people = _approvers(users, groups)
    problems = []
    named_apps = list(app_model.objects.filter(pk__in=app_ids)) if app_ids else []
    scopes: dict[int, set[int]] = {}  # user id -> the ids of named_apps in their scope

    def scope_of(person: User) -> set[int]:
        if person.pk not in scopes:
            scopes[person.pk] = set(
                in_scope(person, app_model.objects.filter(pk__in=[app.pk for app in named_apps])).values_list(
                    "pk", flat=True
                )
            )
        return scopes[person.pk]

    for applies, perm, noun in (
        (campaigns, "campaigns.approve_campaign", "campaigns"),
        (journeys, "journeys.approve_journey", "journeys"),
    ):
        if not applies:
            continue
        deciders = [p for p in people if p.has_perm("accounts.decide_approvalrequest") and p.has_perm(perm)]
        if not deciders:
            names = ", ".join(p.get_username() for p in people) or "nobody"
            problems.append(f"None of its approvers ({names}) has a role that may approve {noun}.")
            continue
        for app in named_apps:
            if not any(app.pk in scope_of(p) for p in deciders):
                problems.append(f"None of the approvers who may approve {noun} has access to the app '{app}'.")
    return problems


def approval_request_stuck(request: ApprovalRequest) -> bool:
    """A pending request that nobody may decide (its approvers lost their role or access)."""
    return request.pk in approval_requests_stuck_among([request])


def approval_requests_stuck_among(requests: list[ApprovalRequest]) -> set[int]:
    """The ids of the pending ``requests`` that nobody may decide: ``approval_request_stuck`` of each,
    in a number of queries that grows with the approvers asked, not with the requests (each one's
    ``approver_standings`` over all the requests they are asked to decide)."""
    return set(approval_requests_undecidable(requests))


def approval_requests_undecidable(requests: list[ApprovalRequest]) -> dict[int, dict[int, str]]:
    """The pending ``requests`` that nobody may decide (``approval_requests_stuck_among``), by id,
    each with what stops each user asked to decide it, in a word (``_standings``), by user id:
    empty when its policy names no active user (or, without a policy, no one holds the role)."""
    pending = [request for request in requests if request.status == ApprovalRequest.Status.PENDING]
    candidates: dict[int, list[ApprovalRequest]] = {}  # user id -> the requests they are asked about
    with_policy = [request for request in pending if request.policy_id is not None]
    if with_policy:
        ids = [request.pk for request in with_policy]
        asked = {request.pk: set() for request in with_policy}
        for request_id, user_id in ApprovalRequest.approver_users.through.objects.filter(
            approvalrequest__in=ids
        ).values_list("approvalrequest_id", "user_id"):
            asked[request_id].add(user_id)
        groups: dict[int, set[int]] = {}
        for request_id, group_id in ApprovalRequest.approver_groups.through.objects.filter(
            approvalrequest__in=ids
        ).values_list("approvalrequest_id", "group_id"):
            groups.setdefault(group_id, set()).add(request_id)
        for group_id, user_id in User.groups.through.objects.filter(group__in=list(groups)).values_list(
            "group_id", "user_id"
        ):
            for request_id in groups[group_id]:
                asked[request_id].add(user_id)
        for request in with_policy:
            for user_id in asked[request.pk]:
                candidates.setdefault(user_id, []).append(request)
    without_policy = [request for request in pending if request.policy_id is None]
    if without_policy:
        # Whoever's role (or own permission) may decide, as has_perm reads it: a team's permissions give nothing.
        deciders = User.objects.with_perm(
            "accounts.decide_approvalrequest", is_active=None, backend="accounts.backends.RoleBackend"
        ).values_list("pk", flat=True)
        for user_id in deciders:
            candidates.setdefault(user_id, []).extend(without_policy)
    users = User.objects.filter(pk__in=list(candidates), is_active=True).order_by("pk")
    stuck: dict[int, dict[int, str]] = {request.pk: {} for request in pending}
    for user in users:
        asked = [request for request in candidates[user.pk] if request.pk in stuck]
        if asked:
            for pk, (allowed, _reason, why) in _standings(user, asked, None).items():
                if allowed:
                    del stuck[pk]
                else:
                    stuck[pk][user.pk] = why
    return stuck


def approval_stuck_text(request: ApprovalRequest, *, reader: User) -> str:
    """What stops everyone from deciding ``request``, said to ``reader`` (its submitter, or an
    Administrator), with what to ask for; empty while someone may decide it. Read from the same
    standings as the stuck flag (``approval_requests_undecidable``). It names the policies, which
    the request's own page names, but neither the approvers nor the apps."""
    why = approval_requests_undecidable([request]).get(request.pk)
    if why is None:
        return ""
    lacks = set(why.values())
    noun = request.subject_type.model if request.subject_type_id else "object"
    mine = request.requested_by_id == reader.pk
    submitter, their = ("you", "your") if mine else ("its submitter", "their")
    policies = request.policies
    if len(policies) == 2:
        named = f"the policies '{policies[0]}' and '{policies[1]}'"
    elif policies:
        named = f"the policy '{policies[0]}'"
    else:
        named = ""
    if not why:
        if policies:
            said = f"the policy '{policies[0]}' names no active user"
            fix = _add_an_approver(policies).removesuffix(".")
        else:
            said = f"no one holds a role that may approve {noun}s"
            fix = f"give someone the role that approves {noun}s"
        return f"No one may approve this yet: {said}. Ask an Administrator to {fix}."
    if lacks == {"self"}:  # the submitter is the only one asked
        names = "name" if len(policies) == 2 else "names"
        said = f"{named} {names} only {submitter}" if named else f"the only Approver is {submitter}"
        may_not = "you may not" if mine else "who may not"
        joint = ", and " if mine else ", "
        return (
            f"No one may approve this yet: {said}{joint}{may_not} approve {their} own work. "
            f"Ask an Administrator to {_add_an_approver(policies)}"
        )
    others = [lack for lack in why.values() if lack != "self"]  # what stops everyone else asked
    other_policy = request.source_policy or request.policy
    # What stops them, said of none of them / the others (all but the submitter) / some of them.
    said_of = {
        "changed": ("each changed", "the others changed", "some changed"),
        "role": ("none holds a role", "the others hold no role", "some hold no role"),
        "policy": ("none is also named", "the others are not also named", "some are not also named"),
        "move": ("none has access", "the others have no access", "some have no access"),
        "access": ("none has access", "the others have no access", "some have no access"),
    }
    ends = {
        "changed": " what it asks to approve, so may not decide it",
        "role": f" that may approve {noun}s",
        "policy": f" by the policy '{other_policy}'",
        "move": " to both apps the revision moves it between",
        "access": f" to this {noun}",
    }
    clauses = [f"{submitter} may not approve {their} own work"] if "self" in lacks else []
    for lack, (of_none, of_the_others, of_some) in said_of.items():
        if lack in lacks:
            if others.count(lack) < len(others):
                clauses.append(of_some + ends[lack])
            else:
                clauses.append((of_the_others if "self" in lacks else of_none) + ends[lack])
    fixes = []
    add = bool(lacks & {"self", "changed", "policy"})
    if "role" in lacks:
        fixes.append(f"give an approver the role that approves {noun}s")
    if "move" in lacks:
        fixes.append("give an approver access to both apps")
    elif "access" in lacks:
        fixes.append(f"give an approver access to this {noun}")
    lead = f"of the approvers {named} names, " if named else "of the Approvers, "
    asked = " or ".join(fixes)
    if add:
        asked = f"{asked}, or {_add_an_approver(policies)}" if asked else _add_an_approver(policies)
    else:
        asked += "."
    return f"No one may approve this yet: {lead}{'; '.join(clauses)}. Ask an Administrator to {asked}"


def _add_an_approver(policies: list[ApprovalPolicy]) -> str:
    """The fix of a request no one else is asked to decide, as a sentence's end: a request keeps
    the approvers its policies named when it was submitted, so it is submitted again."""
    if not policies:
        return "make someone else an Approver."
    named = "both policies" if len(policies) == 2 else "the policy"
    return f"add an approver to {named}; then cancel this request and submit it again."


def approval_requests_stuck() -> list[ApprovalRequest]:
    """Every pending request nobody may decide, oldest first: what an Administrator must unblock."""
    pending = ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING).select_related(
        "requested_by", "policy", "source_policy", "subject_type"
    )
    pending = list(pending.order_by("requested_at"))
    stuck = approval_requests_stuck_among(pending)
    return [request for request in pending if request.pk in stuck]
