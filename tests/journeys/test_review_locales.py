"""A journey's review shows its approver each push in every language its audience may get: a pair of
phones per locale of the push's content, not only the default texts."""

import pytest

from journeys.services.lifecycle import journey_submit

pytestmark = pytest.mark.django_db


def test_the_review_shows_each_push_in_each_locale(login, manager_alice, approver_bob, make_journey, welcome):
    welcome.default_locale = "en"
    welcome.variants = {"fr": {"title": "Bonjour", "body": "Bienvenue à bord"}}
    welcome.save()
    request = journey_submit(journey_id=make_journey().pk, by=manager_alice)
    page = login(approver_bob).get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    push = page[page.index('class="journey-review-push"') : page.index('id="approval-decision"')]
    assert "Hello" in push and "Welcome aboard" in push
    assert "Bonjour" in push and "Bienvenue à bord" in push
    assert 'data-locale="fr"' in push and "French (fr)" in push


def test_a_push_without_locales_shows_one_pair_of_phones(login, manager_alice, approver_bob, make_journey):
    request = journey_submit(journey_id=make_journey().pk, by=manager_alice)
    page = login(approver_bob).get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert "Welcome aboard" in page and "data-locale" not in page
