"""Demo data of delivery: an app that sends to the push simulator, with credentials made on the spot.

The keys are generated here, at run time, and work only against this installation's
simulator: their public halves go to the simulator's trust file, their private halves only
to the (encrypted) app. Nothing that would work anywhere real is in the repository.
"""

import json
import secrets

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings

from delivery.models import App
from delivery.pushsim.trust import trust_add, trust_file_path
from delivery.services.apps import (
    SECRET_FIELDS,
    apns_key_parse,
    app_create,
    app_secret_problems,
    service_account_parse,
)

DEMO_APP = "Pushdesk Demo"
DEMO_TEAM_ID = "DEMOTEAM01"
DEMO_KEY_ID = "DEMOKEY001"
DEMO_BUNDLE_ID = "com.pushdesk.demo"
DEMO_PROJECT_ID = "pushdesk-demo"
# The Flash sale's image: a file of the repository, served by the web itself, so the demo's
# previews show it on a machine without internet (demo_image_url).
DEMO_IMAGE = "delivery/demo/flash-sale.jpg"


def demo_image_url() -> str:
    """The demo image's address: under the static files' URL, on `make run`'s web address when that
    URL is a path (over http on this machine: for the demo app, which sends to the push simulator,
    whose phones and the admin's previews are on this machine too)."""
    from accounts.management.commands.run_embedded import DEFAULT_ADDR

    static_url = settings.STATIC_URL
    if "://" not in static_url:
        static_url = f"http://{DEFAULT_ADDR}/{static_url.lstrip('/')}"
    return static_url.rstrip("/") + "/" + DEMO_IMAGE


def _public_pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def populate(*, stdout) -> None:
    existing = App.objects.filter(name=DEMO_APP).values_list("pk", flat=True).first()
    if existing is not None:
        stdout.write(f"Demo app {DEMO_APP!r} already exists.")
        for problem in app_secret_problems(app_id=existing).get(existing, []):
            stdout.write(f"  {problem}")
        populate_devices_and_content(stdout=stdout)
        return
    apns_key = ec.generate_private_key(ec.SECP256R1())
    p8 = apns_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fcm_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_key_id = secrets.token_hex(20)
    client_email = f"pushdesk-demo@{DEMO_PROJECT_ID}.iam.gserviceaccount.com"
    service_account = {
        "type": "service_account",
        "project_id": DEMO_PROJECT_ID,
        "private_key_id": private_key_id,
        "private_key": fcm_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "client_email": client_email,
        "client_id": "100000000000000000001",
        "token_uri": settings.PUSHDESK_PUSHSIM_FCM_URL.rstrip("/") + "/token",
    }
    path = trust_file_path()
    trust_add(
        path=path,
        apns_key={
            "key_id": DEMO_KEY_ID,
            "team_id": DEMO_TEAM_ID,
            "public_key_pem": _public_pem(apns_key),
            "topics": [DEMO_BUNDLE_ID],
        },
        service_account={
            "client_email": client_email,
            "private_key_id": private_key_id,
            "project_id": DEMO_PROJECT_ID,
            "public_key_pem": _public_pem(fcm_key),
        },
    )
    app_create(
        name=DEMO_APP,
        by=None,
        rate_limit_per_second=200,
        uses_simulator=True,
        apns_team_id=DEMO_TEAM_ID,
        apns_key_id=DEMO_KEY_ID,
        apns_bundle_id=DEMO_BUNDLE_ID,
        apns_environment=App.ApnsEnvironment.SANDBOX,
        apns_private_key=apns_key_parse(raw=p8),
        fcm_service_account=service_account_parse(raw=json.dumps(service_account).encode()),
    )
    stdout.write(
        f"Demo app {DEMO_APP!r}: sends to the push simulator "
        f"({settings.PUSHDESK_PUSHSIM_FCM_URL}/ shows what the phones received)."
    )
    populate_devices_and_content(stdout=stdout)


# --- devices and push content of the demo app ------------------------------------------------------

DEMO_DEVICES = 40


def demo_contents(app) -> list:
    """The demo's push contents of ``app``, as the demo writes them (unsaved)."""
    from delivery.models import PushContent

    return [
        PushContent(
            app=app,
            name="Welcome back",
            title="Welcome back, {{ profile.attributes.first_name | default: 'friend' }}",
            body="Your picks for {{ 'now' | date: '%A' }} are waiting.",
            tap_action=PushContent.TapAction.DEEP_LINK,
            tap_url="pushdesk://home",
            variants={
                "fr": {
                    "title": "Bon retour, {{ profile.attributes.first_name | default: 'à vous' }}",
                    "body": "Votre sélection vous attend.",
                },
                "de": {"title": "Willkommen zurück", "body": "Deine Auswahl wartet."},
            },
        ),
        PushContent(
            app=app,
            name="Flash sale",
            title="Flash sale: 30% off",
            subtitle="Today only",
            body="Everything in {{ context.category | default: 'the shop' }} until midnight.",
            image_url=demo_image_url(),
            tap_action=PushContent.TapAction.URL,
            tap_url="https://example.com/sale",
            collapse_key="flash-sale",
            android_channel_id="promotions",
            android_color="#e8710a",
            ios_interruption_level=PushContent.InterruptionLevel.TIME_SENSITIVE,
        ),
    ]


def demo_content_as_written(content) -> bool:
    """Is ``content`` one of the demo's, as the demo wrote it? The demo approves its own campaign and
    journey by itself, as its approver: only over contents nobody has rewritten since (``make run``
    sets the demo up again on every start, when others may have edited them)."""
    written = {made.name: made.spec() for made in demo_contents(content.app)}
    return written.get(content.name) == content.spec()


def populate_devices_and_content(*, stdout) -> None:
    """Devices for the first demo profiles (half iOS, half Android, two test phones) and two contents.

    Adds only what is missing. The simulator accepts any well-formed token, so these phones
    "receive" what the demo sends, and its page shows them.
    """
    from django.db import transaction

    from audiences.models import Profile
    from delivery.models import Device, Platform, PushContent
    from delivery.payloads import spec_authoring_check, spec_validate

    app = App.objects.defer(*SECRET_FIELDS).get(name=DEMO_APP)  # no credential is needed here
    profiles = list(Profile.objects.filter(external_id__startswith="demo-").order_by("id")[:DEMO_DEVICES])
    with transaction.atomic():
        created = 0
        for n, profile in enumerate(profiles):
            platform = Platform.IOS if n % 2 == 0 else Platform.ANDROID
            token = f"{n + 1:064x}" if platform == Platform.IOS else f"demo-fcm-token-{n + 1:08d}:android"
            _, made = Device.objects.get_or_create(
                app=app,
                token=token,
                defaults={"profile": profile, "platform": platform, "is_test": n < 2, "push_enabled": n % 10 != 9},
            )
            created += made
        contents = demo_contents(app)
        added = 0
        for content in contents:
            if PushContent.objects.filter(app=app, name=content.name).exists():
                continue
            spec_validate(content.spec())
            spec_authoring_check(content.spec(), uses_simulator=app.uses_simulator)
            content.save()
            added += 1
    if created or added:
        stdout.write(f"Demo devices: {created} added; push contents: {added} added (test phones: the first two).")
