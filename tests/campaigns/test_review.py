"""What the approver's review says will happen, beyond the content and the audience: how late a
missed occurrence may still go, and in winner mode the sample's size and when the winner is picked."""

import datetime as dt
import html
import re
from zoneinfo import ZoneInfo

from campaigns.services.lifecycle import campaign_submit, campaign_update
from campaigns.services.winner import WinnerInput, campaign_winner_set
from tests.campaigns.helpers import variants_set
from tests.factories import DeviceFactory, ProfileFactory

PARIS = ZoneInfo("Europe/Paris")


def _review_rows(client, request) -> dict[str, str]:
    """The review's rows, as label → text (a first review: every row the approval covers)."""
    page = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    rows = re.findall(r'<th scope="row">(.*?)</th><td>(.*?)</td>', page, flags=re.S)
    return {html.unescape(label): html.unescape(re.sub(r"<[^>]+>", "", text)) for label, text in rows}


def test_the_approver_reviews_how_late_a_missed_occurrence_may_still_go(
    client, make_campaign, manager_alice, approver_bob
):
    campaign = make_campaign(
        schedule_kind="recurring",
        recurrence="daily",
        send_at=dt.datetime(2027, 1, 5, 9, tzinfo=PARIS),
        time_zone="Europe/Paris",
        missed_window_minutes=90,
    )
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    assert _review_rows(client, request)["Missed-send window"] == (
        "an occurrence the scheduler missed (it was down, or this approval comes after its time) is still sent "
        "up to 90 minutes late, and skipped after that"
    )


def test_the_approver_sees_a_changed_missed_send_window_in_the_revision(
    client, make_campaign, manager_alice, approver_bob
):
    from campaigns.services.lifecycle import campaign_approve

    send_at = dt.datetime(2027, 1, 5, 9, tzinfo=PARIS)
    campaign = make_campaign(schedule_kind="recurring", recurrence="daily", send_at=send_at)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=send_at - dt.timedelta(hours=1))
    campaign_update(campaign_id=campaign.pk, by=manager_alice, missed_window_minutes=240)
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    page = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    changed = page[page.index("Missed-send window") :]
    assert "up to 60 minutes late" in changed[:2000] and "up to 240 minutes late" in changed[:2000]


def test_an_api_triggered_campaign_has_no_missed_send_window_to_review(
    client, make_campaign, manager_alice, approver_bob
):
    campaign = make_campaign(kind="api_triggered", segment=None)
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    assert "Missed-send window" not in _review_rows(client, request)


def _winner_campaign(make_campaign, manager_alice, abc, team, **schedule):
    for platform in ["ios"] * 12 + ["android"] * 8:
        DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform=platform)
    campaign = variants_set(make_campaign(content=abc[0], **schedule), manager_alice, abc[:2], [45, 45], 10)
    campaign_winner_set(
        campaign_id=campaign.pk, by=manager_alice, settings=WinnerInput(sample_share=25, wait_minutes=150)
    )
    return campaign


def test_the_approver_reviews_the_winner_samples_size_and_when_the_winner_is_picked(
    client, make_campaign, manager_alice, approver_bob, abc, team
):
    campaign = _winner_campaign(
        make_campaign,
        manager_alice,
        abc,
        team,
        schedule_kind="at",
        send_at=dt.datetime(2027, 1, 5, 9, tzinfo=PARIS),
        time_zone="Europe/Paris",
    )
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    rows = _review_rows(client, request)
    # The audience's figures, a quarter of each: the sample is drawn per profile.
    assert rows["Audience"].startswith("Everyone: 20 profiles → 20 reachable (iOS 12 / Android 8) → 20 opted in")
    assert rows["Winner sample"] == (
        "≈ 5 profiles → ≈ 5 reachable (iOS 3 / Android 2) → ≈ 5 opted in: 25% of the audience, drawn per "
        "profile, split across the variants in their shares (the 10% holdout's part gets nothing)"
    )
    assert rows["Winner picked"] == (
        "2027-01-05 11:30 (Europe/Paris): 2 h 30 min after the sample is sent at 2027-01-05 09:00 (Europe/Paris), "
        "once it has finished sending"
    )


def test_a_winner_sample_of_one_profile_reads_profile():
    """The approver read "≈ 1 profiles" for a sample of one; it reads ≈ 1 profile, as a segment of one does."""
    from audiences.selectors import Reach
    from campaigns.review import winner_sample_text

    one = winner_sample_text({"sample_share": 25}, Reach(4, 4, 0, 4, 4), holdout_share=0)
    assert one.startswith("≈ 1 profile → ≈ 1 reachable (iOS 0 / Android 1) → ≈ 1 opted in: 25% of the audience")
    assert winner_sample_text({"sample_share": 25}, Reach(8, 0, 0, 0, 0), holdout_share=0).startswith("≈ 2 profiles → ")


def test_a_winner_test_sent_when_approved_is_picked_the_wait_after_the_approval(
    client, make_campaign, manager_alice, approver_bob, abc, team
):
    campaign = _winner_campaign(make_campaign, manager_alice, abc, team, schedule_kind="now", time_zone="Europe/Paris")
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    assert _review_rows(client, request)["Winner picked"] == (
        "2 h 30 min after the sample is sent, at this approval, once it has finished sending"
    )


def test_the_review_of_a_cron_says_its_first_send_when_that_is_not_the_start_typed(
    client, make_campaign, manager_alice, approver_bob
):
    """Mondays at 09:00 from a Tuesday: it starts sending the Monday after, not on the Tuesday."""
    campaign = make_campaign(
        schedule_kind="recurring",
        recurrence="cron",
        cron="0 9 * * 1",
        send_at=dt.datetime(2030, 1, 1, 9, tzinfo=PARIS),  # a Tuesday
        time_zone="Europe/Paris",
    )
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    assert _review_rows(client, request)["Schedule"] == (
        "Recurring (0 9 * * 1). Starts 2030-01-01 09:00 (Europe/Paris). Approved now, its first send is "
        "2030-01-07 09:00 (Europe/Paris)."
    )


def test_the_review_of_a_recurring_schedule_begun_before_its_approval_says_its_first_send(
    client, make_campaign, manager_alice, approver_bob
):
    from django.utils import timezone

    def first_send(now):
        today = now.astimezone(PARIS)
        first = today.replace(hour=9, minute=0, second=0, microsecond=0)
        return first if first > today else (today + dt.timedelta(days=1)).replace(hour=9, minute=0, second=0)

    before = timezone.now()
    start = (before.astimezone(PARIS) - dt.timedelta(days=10)).replace(hour=9, minute=0, second=0, microsecond=0)
    campaign = make_campaign(schedule_kind="recurring", recurrence="daily", send_at=start, time_zone="Europe/Paris")
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    said = _review_rows(client, request)["Schedule"]
    # The day depends on the time it is read: the test reads the clock either side of the page.
    firsts = {f"{first_send(at):%Y-%m-%d}" for at in (before, timezone.now())}
    assert any(said.endswith(f"Approved now, its first send is {day} 09:00 (Europe/Paris).") for day in firsts), said


def test_the_approver_reads_the_rate_a_throttle_sends_at_beside_its_apps_limit(
    client, make_campaign, manager_alice, approver_bob, team
):
    """A campaign's throttle comes on top of its app's limit: above it, the send goes at the app's."""
    team.rate_limit_per_second = 1000
    team.save(update_fields=["rate_limit_per_second"])
    client.force_login(approver_bob)
    said = {}
    for name, throttle in (("Slow", 50), ("Fast", 5000), ("Default", None)):
        campaign = make_campaign(name=name, throttle_per_second=throttle)
        said[name] = _review_rows(client, campaign_submit(campaign_id=campaign.pk, by=manager_alice))["Throttle"]
    assert said == {
        "Slow": "at most 50 messages/s (the app's limit, 1,000 messages/s, is shared with its other sends)",
        "Fast": "at most 1,000 messages/s, the app's limit: the campaign's 5,000 messages/s is above it",
        "Default": "the app's limit, 1,000 messages/s (shared with its other sends)",
    }


def test_the_approver_reads_the_contents_tap_action_and_platform_options_in_words(
    client, make_campaign, content, manager_alice, approver_bob
):
    """They read as the spec's keys ('deep_link pushdesk://home', 'mutable_content=False, sound=default').
    The options are named as the content form names them ("thread id", "channel id", "color"); the
    review had its own copy of the names, some of them other words ("thread", "channel", "colour")."""
    from delivery.models import PushContent

    PushContent.objects.filter(pk=content.pk).update(
        tap_action="deep_link",
        tap_url="pushdesk://home",
        ios_badge=3,
        ios_interruption_level="time-sensitive",
        ios_thread_id="sales",
        ios_mutable_content=True,
        android_channel_id="offers",
        android_color="#ff0000",
        android_priority="normal",
    )
    campaign = make_campaign(send_at=dt.datetime(2027, 1, 5, 9, tzinfo=PARIS))
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    rows = _review_rows(client, request)
    assert rows["Tap action"] == "open a deep link: pushdesk://home"
    assert rows["iOS options"] == (
        "sound default, badge 3, thread id sales, interruption level time sensitive, "
        "mutable content (the app's extension may change it before it shows)"
    )
    assert rows["Android options"] == "channel id offers, color #ff0000, priority normal"
    assert "=" not in rows["iOS options"] + rows["Android options"]


def test_a_variants_platform_options_keep_the_platforms_names(client, make_campaign, manager_alice, approver_bob, abc):
    """Variant B's rows read "Variant B: ios options" and "android options" beside the content's
    "iOS options" and "Android options": its labels are the content's, the platforms' names as
    they are spelt."""
    campaign = variants_set(make_campaign(content=abc[0]), manager_alice, abc[:2], [45, 45], 10)
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    rows = _review_rows(client, request)
    assert "iOS options" in rows and "Android options" in rows
    assert rows["Variant B: iOS options"] == rows["iOS options"]
    assert rows["Variant B: Android options"] == rows["Android options"]
    assert "Variant B: tap action" in rows and "Variant B: ios options" not in rows


def test_changes_requested_without_a_comment_say_so_beside_the_comment(
    client, make_campaign, manager_alice, approver_bob
):
    """Request changes pressed with no comment drew the review again with nothing said: the error
    was the comment's own, and the page drew only the form's general errors."""
    from campaigns.models import Campaign

    campaign = make_campaign()
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    url = f"/admin/accounts/approvalrequest/{request.pk}/review/"
    answer = client.post(url, {"_request_changes": "1", "comment": " "})
    assert answer.status_code == 200
    assert "Say what needs to change." in answer.content.decode()
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.IN_REVIEW


def test_the_review_of_a_weekly_or_monthly_schedule_says_the_day_it_sends_on(
    client, make_campaign, manager_alice, approver_bob
):
    """The review read "Recurring (weekly). Starts 2030-01-01 09:00": the approver worked out the
    weekday (the first send's, in the campaign's zone) from the date."""
    said = {}
    client.force_login(approver_bob)
    for recurrence, day in (("weekly", 1), ("monthly", 31), ("daily", 1)):
        campaign = make_campaign(
            name=recurrence,
            schedule_kind="recurring",
            recurrence=recurrence,
            send_at=dt.datetime(2030, 1, day, 0, 30, tzinfo=PARIS),  # still 31 December in UTC
            time_zone="Europe/Paris",
        )
        request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        said[recurrence] = _review_rows(client, request)["Schedule"].split(".")[0]
    assert said == {
        "weekly": "Recurring (weekly, on Tuesdays)",
        "monthly": "Recurring (monthly, on day 31, the last day of a shorter month)",
        "daily": "Recurring (daily)",
    }


def test_the_approver_reviews_the_name_a_content_shows_and_a_revision_renaming_it(
    client, make_campaign, manager_alice, approver_bob, team
):
    """Every send gives its content the campaign's name: when the content shows it, the approval
    covers it, the first review names it among what it covers and a revision's says it changed. A
    campaign whose content does not show it has no name to review."""
    from campaigns.services.lifecycle import campaign_approve
    from tests.factories import PushContentFactory

    shown = PushContentFactory(app=team, title="{{ context.campaign.name }}", body="Hello")
    send_at = dt.datetime(2027, 1, 5, 9, tzinfo=PARIS)
    campaign = make_campaign(content=shown, schedule_kind="recurring", recurrence="daily", send_at=send_at)
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    assert _review_rows(client, request)["Name (its content shows it)"] == "Spring sale"

    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=send_at - dt.timedelta(hours=1))
    campaign_update(campaign_id=campaign.pk, by=manager_alice, name="Everything free, today only")
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    page = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    changed = re.findall(r'<tr class="changed"><th scope="row">(.*?)</th><td>(.*?)</td><td>(.*?)</td></tr>', page)
    assert changed == [("Name (its content shows it)", "Spring sale", "Everything free, today only")]

    other = make_campaign(name="Plain")
    request = campaign_submit(campaign_id=other.pk, by=manager_alice)
    assert not any(label.startswith("Name") for label in _review_rows(client, request))


def _diff_rows(page: str) -> list[tuple[str, str, str, str]]:
    """The review's diff, as (class, label, before, after) rows in the order shown."""
    table = page[page.index('<table id="approval-diff"') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r'<tr class="([\w -]+)"><th scope="row">(.*?)</th><td>(.*?)</td><td>(.*?)</td></tr>', table)
    return [tuple(html.unescape(cell) for cell in row) for row in rows]


def test_a_first_submission_sent_back_and_submitted_again_is_reviewed_as_what_changed_since(
    client, make_campaign, manager_alice, approver_bob, content
):
    """The approver who asked for changes on a first submission read the next one whole ("First
    review"), with nothing to tell what was changed since: the review names their request, with
    its comment, and compares with what that request was submitted as, the changed rows first."""
    from campaigns.services.lifecycle import campaign_request_changes
    from delivery.services.contents import pushcontent_save

    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_request_changes(campaign_id=campaign.pk, by=approver_bob, comment="Say the discount in the title")
    content.title = "20% off today"
    pushcontent_save(content=content, by=manager_alice)
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    page = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    caption = html.unescape(re.search(r"<caption>(.*?)</caption>", page).group(1))
    assert caption.startswith(
        "Resubmitted after your request for changes (“Say the discount in the title”, by approver_bob, "
    )
    assert caption.endswith(" — 1 change")
    assert "First review" not in page
    rows = _diff_rows(page)
    assert rows[0] == (
        "changed",
        "Title (en)",
        "Hello {{ profile.attributes.first_name | default: 'there' }}",
        "20% off today",
    )
    assert all(row[0] == "unchanged" for row in rows[1:])
    assert "<th>As sent back for changes</th><th>This submission</th>" in page


def test_a_request_sent_back_before_requests_kept_what_they_were_submitted_as_is_reviewed_whole_saying_so(
    client, make_campaign, manager_alice, approver_bob
):
    from accounts.models import ApprovalRequest
    from campaigns.services.lifecycle import campaign_request_changes

    campaign = make_campaign()
    first = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_request_changes(campaign_id=campaign.pk, by=approver_bob, comment="Shorter")
    ApprovalRequest.objects.filter(pk=first.pk).update(snapshot=None)
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    page = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    caption = html.unescape(re.search(r"<caption>(.*?)</caption>", page).group(1))
    assert caption.startswith("Resubmitted after your request for changes (“Shorter”, by approver_bob, ")
    assert caption.endswith(
        "): what that request was submitted as was not kept, so everything this approval covers is shown"
    )
    assert _review_rows(client, request)["Title (en)"] == "Hello {{ profile.attributes.first_name | default: 'there' }}"


def test_a_revision_sent_back_and_submitted_again_marks_what_changed_since_the_request_for_changes(
    client, make_campaign, manager_alice, approver_bob
):
    """A revision is still compared with the approved version; the rows changed since the approver
    sent it back are marked among them."""
    from campaigns.services.lifecycle import campaign_approve, campaign_request_changes

    send_at = dt.datetime(2027, 1, 5, 9, tzinfo=PARIS)
    campaign = make_campaign(schedule_kind="recurring", recurrence="daily", send_at=send_at)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=send_at - dt.timedelta(hours=1))
    campaign_update(campaign_id=campaign.pk, by=manager_alice, missed_window_minutes=240, throttle_per_second=50)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_request_changes(campaign_id=campaign.pk, by=approver_bob, comment="Not that late")
    campaign_update(campaign_id=campaign.pk, by=manager_alice, missed_window_minutes=120)
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    page = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert "What changed since the approved version — 2 changes" in html.unescape(page)
    rows = {row[1].split("<br>")[0]: row for row in _diff_rows(page)}
    assert rows["Missed-send window"][0] == "changed since-sent-back"
    assert "changed since the request for changes" in rows["Missed-send window"][1]
    assert rows["Throttle"][0] == "changed"
    assert "Resubmitted after your request for changes (“Not that late”, by approver_bob, " in html.unescape(page)
    assert ": 1 row changed since, marked" in html.unescape(page)
