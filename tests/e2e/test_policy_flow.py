"""Policies that would strand their requests are refused; a request nobody may decide is shown as stuck."""

import pytest

from accounts.models import ApprovalPolicy
from accounts.services import access_grant
from campaigns.services.lifecycle import campaign_create, campaign_submit
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save

pytestmark = pytest.mark.browser


def _add_approver(page, field, label):
    page.select_option(f"#id_{field}_from", label=label)
    page.click(f"#id_{field}_add")


def test_administrator_cannot_route_requests_to_a_viewer_and_sees_stuck_ones(
    login, page, live_server, admin_erin, approver_bob, viewer_carol, manager_alice, pushsim_app, screenshot
):
    for user in (approver_bob, viewer_carol, manager_alice):
        access_grant(obj=pushsim_app, to=user, by=None)

    # A policy whose only approver is a Viewer is refused, saying why.
    login(admin_erin)
    page.goto(f"{live_server.url}/admin/accounts/approvalpolicy/add/")
    page.fill("#id_name", "Viewers decide")
    _add_approver(page, "approver_users", "viewer_carol")
    page.click("input[name=_save]")
    page.wait_for_selector(".errornote, .errorlist")
    errors = page.locator(".errorlist").first.inner_text()
    assert "None of its approvers (viewer_carol) has a role that may approve campaigns." in errors
    assert not ApprovalPolicy.objects.filter(name="Viewers decide").exists()

    # A policy with a real approver saves, and activating it confirms with a message.
    page.fill("#id_name", "Bob decides")
    page.select_option("#id_approver_users_to", label="viewer_carol")
    page.click("#id_approver_users_remove")
    _add_approver(page, "approver_users", "approver_bob")
    page.click("input[name=_save]")
    page.wait_for_url(f"{live_server.url}/admin/accounts/approvalpolicy/")
    policy = ApprovalPolicy.objects.get(name="Bob decides")
    page.check(f"input[name=_selected_action][value='{policy.pk}']")
    page.select_option("select[name=action]", "activate")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist .success")
    assert "Activated “Bob decides”" in page.locator(".messagelist").inner_text()
    assert ApprovalPolicy.objects.get(pk=policy.pk).is_active

    # Bob loses his role after a campaign was routed to him: nobody may decide it.
    content = pushcontent_save(content=PushContent(app=pushsim_app, name="Hi", title="Hi", body="Hi"), by=manager_alice)
    campaign = campaign_create(
        by=manager_alice, name="Stranded", app=pushsim_app, kind="api_triggered", content=content
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    approver_bob.groups.clear()
    page.goto(f"{live_server.url}/admin/")
    stuck = page.locator("#stuck-approvals").inner_text()
    assert "1 approval request stuck" in stuck and "Stranded" in stuck
    screenshot("admin-home-stuck-approval")
    page.goto(f"{live_server.url}/admin/accounts/approvalrequest/?show=all")
    assert "Stuck: nobody may decide it" in page.locator("#result_list").inner_text()

    # Deactivating confirms too.
    page.goto(f"{live_server.url}/admin/accounts/approvalpolicy/")
    page.check(f"input[name=_selected_action][value='{policy.pk}']")
    page.select_option("select[name=action]", "deactivate")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist .success")
    assert "Deactivated “Bob decides”" in page.locator(".messagelist").inner_text()
