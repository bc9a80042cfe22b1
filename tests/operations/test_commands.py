"""The operator's commands say in their --help what they do, and take no option they would ignore."""

import pytest
from django.core.management import CommandError

from operations.management.commands.qcluster import Command as Qcluster


def test_qcluster_takes_no_cluster_name_which_it_ignored():
    """`qcluster --name` was listed as choosing another cluster and did nothing: django-q2 had read
    its settings before the option was seen. Every Pushdesk process shares the queue that
    PUSHDESK_QUEUE_NAME names."""
    parser = Qcluster().create_parser("manage.py", "qcluster")
    assert "--name" not in parser.format_help() and "CLUSTER_NAME" not in parser.format_help()
    assert "PUSHDESK_QUEUE_NAME" in parser.format_help()
    with pytest.raises(CommandError, match="--name"):
        parser.parse_args(["--name", "workers-b"])
    assert parser.parse_args(["--run-once"]).run_once is True


@pytest.mark.parametrize("label", ["nosuchapp", "Accounts", "accounts٣", "../accounts"])
def test_check_refuses_an_unknown_app_in_a_line(label):
    """`check nosuchapp` (Django's) ended with LookupError's traceback, where `migrate nosuchapp`
    says it in a line."""
    import subprocess
    import sys

    from tests.processes import ROOT

    result = subprocess.run(
        [sys.executable, "manage.py", "check", "accounts", label], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"CommandError: No installed app with label {label!r}; the apps are ")
    assert "accounts, " in line and "journeys" in line


def test_check_of_known_apps_still_checks():
    from django.core.management import call_command

    call_command("check", "accounts", "delivery")


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("qinfo", ["task queue", "PUSHDESK_QUEUE_NAME", "masked", "manage.py status"]),
        ("qmonitor", ["task queue", "PUSHDESK_QUEUE_NAME", "terminal", "manage.py status"]),
    ],
)
def test_the_queue_s_commands_say_what_they_show_and_of_which_queue(name, says):
    """Their --help was django-q2's ("General information over all clusters.", "Monitors Q Cluster
    activity"): no word of which queue, that --config hides the secrets, or where the health check is."""
    from django.core.management import load_command_class

    text = " ".join(load_command_class("operations", name).create_parser("manage.py", name).format_help().split())
    for word in says:
        assert word in text, (word, text)
