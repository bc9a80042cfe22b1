"""factory-boy factories for every app's models."""

import factory
from django.contrib.auth.models import Group

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
