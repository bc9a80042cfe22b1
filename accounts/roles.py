"""The four roles and what each may do: the one table the admin, the API and the data migration read.

A role says *what* one may do; object access (``accounts.selectors``) says *where*.
Permissions of models that do not exist yet are skipped, and applied by the post-migrate
sync once their app's migrations have run.
"""

import logging

from django.contrib.auth.models import Group, Permission
from django.db import transaction

log = logging.getLogger(__name__)

ADMINISTRATOR = "Administrator"
APPROVER = "Approver"
MANAGER = "Manager"
VIEWER = "Viewer"
ROLES = (ADMINISTRATOR, APPROVER, MANAGER, VIEWER)


def _crud(*models: str, actions=("add", "change", "delete")) -> list[str]:
    perms = []
    for dotted in models:
        app_label, model = dotted.split(".")
        perms += [f"{app_label}.{action}_{model}" for action in actions]
    return perms


# Each capability is one row of the roles table in the README.
CAPABILITIES: dict[str, dict] = {
    "view": {
        "label": "view campaigns, journeys, segments, profiles, reports",
        "roles": ROLES,
        "perms": _crud(
            "audiences.profile",
            "audiences.event",
            "audiences.segment",
            "audiences.import",
            "delivery.app",
            "delivery.device",
            "delivery.pushcontent",
            "delivery.dispatch",
            "delivery.delivery",
            "delivery.deliveryrules",
            "campaigns.campaign",
            "campaigns.occurrence",
            "journeys.journey",
            "journeys.enrollment",
            "accounts.approvalrequest",
            "accounts.auditevent",
            actions=("view",),
        ),
    },
    "author": {
        "label": "create / edit / delete drafts",
        "roles": (ADMINISTRATOR, APPROVER, MANAGER),
        "perms": _crud("audiences.segment", "delivery.pushcontent", "campaigns.campaign", "journeys.journey")
        + ["delivery.test_send_pushcontent", "campaigns.duplicate_campaign"],
    },
    "write_profiles": {
        "label": "write profiles, events and devices, import CSV files, report opens",
        "roles": (ADMINISTRATOR, MANAGER),
        # An import writes profiles: it needs the same role as the profiles API.
        "perms": _crud("audiences.profile", "audiences.event", "delivery.device") + ["audiences.add_import"],
    },
    "submit": {
        "label": "submit for review",
        "roles": (ADMINISTRATOR, APPROVER, MANAGER),
        "perms": ["campaigns.submit_campaign", "journeys.submit_journey", "accounts.add_approvalrequest"],
    },
    "approve": {
        "label": "approve & activate, request changes",
        "roles": (ADMINISTRATOR, APPROVER),
        "perms": ["campaigns.approve_campaign", "journeys.approve_journey", "accounts.decide_approvalrequest"],
    },
    "operate": {
        "label": "stop, archive; pause and resume a journey",
        "roles": (ADMINISTRATOR, APPROVER, MANAGER),
        "perms": [
            "campaigns.stop_campaign",
            "campaigns.archive_campaign",
            "journeys.stop_journey",
            "journeys.pause_journey",
            "journeys.archive_journey",
            "delivery.stop_dispatch",
        ],
    },
    "trigger": {
        "label": "trigger API-triggered campaigns",
        "roles": (ADMINISTRATOR, APPROVER, MANAGER),
        "perms": ["campaigns.trigger_campaign"],
    },
    "own_api_keys": {
        "label": "own API keys",
        "roles": (ADMINISTRATOR, APPROVER, MANAGER),
        "perms": ["accounts.view_apikey", "accounts.add_apikey", "accounts.change_apikey"],
    },
    "test_devices": {
        "label": "mark, unmark and register test devices (they get test sends of content not yet approved)",
        "roles": (ADMINISTRATOR,),
        "perms": ["delivery.mark_test_device"],
    },
    "watch_queue": {
        "label": "the task queue: queued and failed tasks, schedules (read)",
        "roles": (ADMINISTRATOR,),
        "perms": _crud("django_q.ormq", "django_q.success", "django_q.failure", "django_q.schedule", actions=("view",)),
    },
    "replay_events": {
        "label": "events whose journey entries failed: read them, replay them now or discard them",
        "roles": (ADMINISTRATOR,),
        "perms": _crud("audiences.eventreplay", actions=("view", "change", "delete")),
    },
    "read_idempotency": {
        "label": "the trigger and events calls' Idempotency-Key records: key, status, answer code (read)",
        "roles": (ADMINISTRATOR, VIEWER),
        "perms": ["campaigns.view_triggerrequest", "audiences.view_eventbulkrequest"],
    },
    "administer": {
        "label": "apps and channel credentials, users, roles, approval policies, API keys of others",
        "roles": (ADMINISTRATOR,),
        "perms": _crud(
            "delivery.app", "delivery.deliveryrules", "accounts.user", "auth.group", "accounts.approvalpolicy"
        )
        + _crud("accounts.user", "auth.group", "accounts.approvalpolicy", actions=("view",))
        + ["accounts.manage_others_apikey", "accounts.manage_object_access", "delivery.test_connection_app"],
    },
}


def role_permissions(role: str) -> list[str]:
    """Every permission ("app_label.codename") the role holds, in table order, without repeats."""
    seen: dict[str, None] = {}
    for capability in CAPABILITIES.values():
        if role in capability["roles"]:
            for perm in capability["perms"]:
                seen.setdefault(perm, None)
    return list(seen)


def role_capabilities(role: str) -> list[str]:
    """The human labels of what the role may do, as the roles table says them."""
    return [c["label"] for c in CAPABILITIES.values() if role in c["roles"]]


def roles_sync() -> None:
    """Create the four role groups and set each one's permissions to exactly the table's.

    Permissions whose model is not migrated yet are skipped; the next migrate adds them.
    """
    wanted = {role: role_permissions(role) for role in ROLES}
    all_perms = {
        f"{p.content_type.app_label}.{p.codename}": p for p in Permission.objects.select_related("content_type")
    }
    with transaction.atomic():
        for role, perms in wanted.items():
            group, _ = Group.objects.get_or_create(name=role)
            present = [all_perms[p] for p in perms if p in all_perms]
            group.permissions.set(present)


def roles_sync_after_migrate(sender, app_config=None, using="default", **kwargs) -> None:
    # Django sends post_migrate once per app with models, in the registry's order (a migrate, and
    # a flush between transactional tests): the roles are set once, after the last app's, when
    # every earlier app's permissions exist; the last app's own are made here first, as this
    # receiver may run before Django's.
    from django.apps import apps
    from django.contrib.auth.management import create_permissions

    if app_config is not None:
        with_models = [config for config in apps.get_app_configs() if config.models_module is not None]
        if with_models and app_config.label != with_models[-1].label:
            return
        create_permissions(app_config, verbosity=0, using=using)
    roles_sync()
