"""The systemd units the operator's guide installs: valid for systemd, enabled at boot, run as the
service user with the documented environment file, and stopping workers through their main process."""

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "docs" / "deploy"
UNITS = sorted(p.name for p in DEPLOY.iterdir() if p.suffix in {".service", ".timer"})


def _read(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((DEPLOY / name).read_text())
    return parser


@pytest.mark.parametrize("name", ["pushdesk-web.service", "pushdesk-worker.service", "pushdesk-sender.service"])
def test_long_running_units_start_at_boot_as_the_service_user(name):
    unit = _read(name)
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    service = unit["Service"]
    assert service["User"] == "pushdesk"
    assert service["KillMode"] == "mixed"
    assert service["Restart"] == "always"
    guide = (ROOT / "docs" / "operations.md").read_text()
    assert f"# {service['EnvironmentFile']}" in guide  # the environment file the guide writes


def test_the_worker_unit_gives_the_worker_time_to_stop_on_its_own():
    service = _read("pushdesk-worker.service")["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 45  # PUSHDESK_STOP_SECONDS' default, then systemd kills


STOP_MARGIN = 10  # after PUSHDESK_STOP_SECONDS the worker kills its processes and exits within a few seconds


def test_the_guide_says_how_far_pushdesk_stop_seconds_may_go_under_the_worker_unit():
    """systemd kills the whole unit after TimeoutStopSec whatever PUSHDESK_STOP_SECONDS says: the
    unit, the guide and the README's table give the same bound, and how to raise it."""
    timeout = int(_read("pushdesk-worker.service")["Service"]["TimeoutStopSec"])
    bound = timeout - STOP_MARGIN
    assert bound >= 45  # the default fits
    unit = (DEPLOY / "pushdesk-worker.service").read_text()
    assert f"PUSHDESK_STOP_SECONDS above {bound}" in unit
    guide = (ROOT / "docs" / "operations.md").read_text()
    workers = guide[guide.index("* **Workers**: `manage.py qcluster`. On SIGTERM") :].split("\n* ")[0]
    assert f"`TimeoutStopSec={timeout}`" in workers and f"above {bound} s" in workers
    assert f"`PUSHDESK_STOP_SECONDS` + {STOP_MARGIN}" in workers
    assert "systemctl edit pushdesk-worker" in workers
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `PUSHDESK_STOP_SECONDS`"))
    assert f"above {bound}" in row and "TimeoutStopSec" in row


def test_the_sender_unit_runs_the_first_slot_and_stops_on_sigterm():
    service = _read("pushdesk-sender.service")["Service"]
    assert service["ExecStart"].endswith("manage.py send_stream --slot 0")
    assert service["KillSignal"] == "SIGTERM"


def test_no_unit_value_carries_an_inline_comment():
    for name in UNITS:
        for line in (DEPLOY / name).read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                assert not re.search(r"\s#", line.split("=", 1)[1]), f"{name}: {line}"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
@pytest.mark.parametrize("name", UNITS)
def test_systemd_accepts_the_unit(tmp_path, name):
    """`systemd-analyze verify`, with this machine's interpreter and an existing user in place of the
    installation's (it checks that executables exist)."""
    text = (DEPLOY / name).read_text()
    text = text.replace("/srv/pushdesk/app/.venv/bin/python", sys.executable)
    text = text.replace("User=pushdesk", "User=root").replace("Group=pushdesk", "Group=root")
    (tmp_path / name).write_text(text)
    if name.endswith(".timer"):
        (tmp_path / name.replace(".timer", ".service")).write_text(
            (DEPLOY / name.replace(".timer", ".service"))
            .read_text()
            .replace("/srv/pushdesk/app/.venv/bin/python", sys.executable)
            .replace("User=pushdesk", "User=root")
            .replace("Group=pushdesk", "Group=root")
        )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if name.split(".")[0] in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_the_guide_counts_and_names_every_schedule_of_the_beat():
    """The beat's schedules are those every migrate makes (operations.beats.BEATS), each named."""
    from operations.beats import BEATS

    guide = (ROOT / "docs" / "operations.md").read_text()
    beat = guide[guide.index("* **The beat**") :].split("\n\n")[0]
    named = set(re.findall(r"`([a-z]+ (?:tick|watchdog|replay))`", beat))
    numbers = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}
    counted = re.findall(
        r"(two|three|four|five|six|seven) (?:django-q2 )?schedules|beat's (two|three|four|five|six|seven) schedules",
        guide,
    )
    assert named == set(BEATS) and counted, sorted(named)
    assert {numbers[a or b] for a, b in counted} == {len(BEATS)}, counted


def test_the_guide_makes_keys_with_the_python_that_has_cryptography():
    """cryptography is installed in the application's .venv, not in the machine's Python."""
    guide = (ROOT / "docs" / "operations.md").read_text()
    settings_source = (ROOT / "config" / "settings.py").read_text()
    for text in (guide, settings_source):
        commands = re.findall(r"([\w./-]*python3?(?:\.\d+)?) -c \"from cryptography", text)
        assert commands and all(c.endswith(".venv/bin/python") for c in commands), commands


@pytest.mark.parametrize(
    ("cited_by", "heading"),
    [
        ("# Fernet key(s), comma-separated, the first encrypts", "Rotating keys and credentials"),
        ("8. **Check**", "What to watch, and where"),
        ("the command in section", "Rotating keys and credentials"),
        ("**The units**", "Processes and their units"),
        ("back up PostgreSQL", "Backups and restore drills"),
    ],
)
def test_the_guide_s_section_numbers_lead_where_they_say(cited_by, heading):
    guide = (ROOT / "docs" / "operations.md").read_text()
    line = next(line for line in guide.splitlines() if cited_by in line)
    number = re.search(r"section (\d+)", line)[1]
    assert f"\n## {number}. {heading}\n" in guide, line


def test_the_upgrade_section_names_every_table_whose_index_is_built_concurrently():
    """A failed concurrent build leaves an invalid index: the guide says where to find its name."""
    guide = (ROOT / "docs" / "operations.md").read_text()
    upgrading = guide[guide.index("## 11. Upgrading") :]
    tables = set()
    for migration in ROOT.glob("*/migrations/0*.py"):
        source = migration.read_text()
        for model in re.findall(
            r"Add(?:Index|UniqueConstraint)ConcurrentlyOnPostgres\(\s*model_name=\"(\w+)\"", source
        ):
            tables.add(f"{migration.parent.parent.name}_{model}")
    assert tables
    assert sorted(t for t in tables if f"\\d {t}" not in upgrading) == []
