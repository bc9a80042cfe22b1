"""factory-boy factories for every app's models."""

import factory
from django.contrib.auth.models import Group
from django.utils import timezone

from accounts.models import User
from delivery.models import App

TEST_PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.test")
    is_staff = True
    password = factory.PostGenerationMethodCall("set_password", TEST_PASSWORD)

    @factory.post_generation
    def role(self, create, extracted, **kwargs):
        if extracted:
            self.groups.add(Group.objects.get(name=extracted))
        self.save()


class AppFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = App

    name = factory.Sequence(lambda n: f"App {n}")


def app_granted(*users, name: str = "Shop") -> App:
    """An app (``AppFactory``) the ``users`` have access to."""
    from accounts.services import access_grant

    app = AppFactory(name=name)
    for user in users:
        access_grant(obj=app, to=user, by=None)
    return app


# --- audiences ---------------------------------------------------------------------------------


class ProfileFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "audiences.Profile"

    external_id = factory.Sequence(lambda n: f"user-{n}")
    attributes = factory.LazyFunction(dict)


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "audiences.Event"

    profile = factory.SubFactory(ProfileFactory)
    name = "app_open"
    properties = factory.LazyFunction(dict)
    occurred_at = factory.LazyFunction(timezone.now)


class SegmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "audiences.Segment"

    name = factory.Sequence(lambda n: f"Segment {n}")
    kind = "rules"
    rules = factory.LazyFunction(lambda: {"all": [{"field": "locale", "op": "exists"}]})


class SegmentMemberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "audiences.SegmentMember"

    segment = factory.SubFactory(SegmentFactory, kind="static", rules=None)
    profile = factory.SubFactory(ProfileFactory)


# --- delivery: the send pipeline -------------------------------------------------------------------


class DeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "delivery.Device"

    profile = factory.SubFactory(ProfileFactory)
    app = factory.SubFactory(AppFactory)
    platform = "ios"
    token = factory.LazyAttributeSequence(
        lambda o, n: f"{n:064x}" if o.platform == "ios" else f"fcm-token-{n:020d}-android"
    )


class PushContentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "delivery.PushContent"

    app = factory.SubFactory(AppFactory)
    name = factory.Sequence(lambda n: f"Content {n}")
    title = "Hello {{ profile.attributes.first_name | default: 'there' }}"
    body = "Our sale starts today."


def orders_stream(content, *, source_id: int, **fields):
    """A transactional standing dispatch ("Orders", version v1) of ``content``, opened as a trigger opens it."""
    from delivery.models import Dispatch
    from delivery.services.streams import stream_open

    return Dispatch.objects.get(
        pk=stream_open(
            kind=Dispatch.Kind.API_TRIGGER,
            source_id=source_id,
            version="v1",
            app_id=content.app_id,
            spec=content.spec(),
            content_id=content.pk,
            label="Orders",
            purpose="transactional",
            **fields,
        )
    )
