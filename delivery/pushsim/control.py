"""The simulator's control endpoints (JSON) and its page of phone mock-ups.

GET  /control/state                  faults, counters
POST /control/faults                 {"rate_503": 0.1, "retry_after": 2, "latency_ms": 50, ...}
POST /control/tokens                 {"token": "...", "platform": "ios", "state": "unregistered", ...}
POST /control/fail-token             {"token": "...", "failures": [503, [404, "UNREGISTERED"]]}: the next answers
POST /control/apns-keys              {"key_id", "team_id", "public_key_pem", "topics": [...]}
POST /control/service-accounts       {"client_email", "private_key_id", "project_id", "public_key_pem"}
POST /control/reset                  back to the start-up faults and devices; forget deliveries
GET  /control/counts                 {"<device token>": <notifications received>, ...}
GET  /control/received?token=&limit= the notifications received, newest first
GET  /                               the phone mock-ups, newest first

A request the simulator cannot take answers 400 {"error": "<what is wrong>", "field": "<its field>"}
and changes nothing.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import asdict
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from delivery.pushsim.state import ENVIRONMENTS, Answer, Exchange, InvalidField, SimState, parse_json, shown

_LIMIT = re.compile(r"[0-9]{1,9}")


def _json(status: int, value) -> Answer:
    # Strict JSON out (allow_nan=False): every number the simulator keeps came in finite.
    return Answer(status, [("content-type", "application/json")], json.dumps(value, allow_nan=False).encode())


def _text(data: dict, name: str, default: str | None = None) -> str:
    """A string field of a control request (null is absent); required when it has no default."""
    value = default if data.get(name) is None else data[name]
    if value is None:
        raise InvalidField(name, f"{name} is required")
    if not isinstance(value, str):
        raise InvalidField(name, f"{name} is a string, not {shown(value)}")
    return value


def _texts(data: dict, name: str, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A list-of-strings field (a bare string is refused: it is not a list of its characters)."""
    value = default if data.get(name) is None else data[name]
    if value is None:
        raise InvalidField(name, f"{name} is required")
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise InvalidField(name, f"{name} is a list of strings, not {shown(value)}")
    return tuple(value)


def handle_control(state: SimState, ex: Exchange) -> Answer:
    url = urlsplit(ex.path)
    query = parse_qs(url.query)
    route = (ex.method, url.path.rstrip("/"))
    try:
        data = parse_json(ex.body) if ex.body else {}
    except ValueError as exc:
        return _json(400, {"error": f"the body is not JSON: {exc}", "field": ""})
    if ex.method == "POST" and not isinstance(data, dict):
        return _json(400, {"error": f"the body is a JSON object, not {shown(data)}", "field": ""})
    try:
        if route == ("GET", "/control/state"):
            with state.lock:
                return _json(
                    200,
                    {
                        "faults": asdict(state.faults),
                        "clock_offset": state.clock_offset,
                        "devices": len(state.devices),
                        "received": sum(state.counts.values()),
                        "token_grants": state.token_grants,
                        "apns_keys": sorted(state.apns_keys),
                        "service_accounts": sorted(state.accounts),
                    },
                )
        if route == ("POST", "/control/faults"):
            with state.lock:
                state.faults.update(data)
                return _json(200, {"faults": asdict(state.faults)})
        if route == ("POST", "/control/tokens"):
            platform = _text(data, "platform", "ios")
            if platform not in ("ios", "android"):
                raise InvalidField("platform", f"platform is ios or android, not {shown(platform)}")
            environment = _text(data, "environment", "")
            if environment not in ("", *ENVIRONMENTS):
                raise InvalidField("environment", f"environment is production or sandbox, not {shown(environment)}")
            state.add_device(
                token=_text(data, "token"),
                platform=platform,
                state=_text(data, "state", "active"),
                environment=environment,
                topic=_text(data, "topic", ""),
                project_id=_text(data, "project_id", ""),
            )
            return _json(200, {"ok": True})
        if route == ("POST", "/control/fail-token"):
            failures = data.get("failures")
            if not isinstance(failures, list):
                raise InvalidField(
                    "failures", f"failures is a list of statuses and [status, reason], not {shown(failures)}"
                )
            state.fail_token(token=_text(data, "token"), failures=failures)
            return _json(200, {"ok": True})
        if route == ("POST", "/control/apns-keys"):
            environments = _texts(data, "environments", ENVIRONMENTS) or ENVIRONMENTS
            if not set(environments) <= set(ENVIRONMENTS):
                raise InvalidField(
                    "environments", f"environments are production and sandbox, not {shown(environments)}"
                )
            state.add_apns_key(
                key_id=_text(data, "key_id"),
                team_id=_text(data, "team_id"),
                public_key_pem=_text(data, "public_key_pem"),
                topics=_texts(data, "topics"),
                environments=environments,
            )
            return _json(200, {"ok": True})
        if route == ("POST", "/control/service-accounts"):
            state.add_service_account(
                client_email=_text(data, "client_email"),
                private_key_id=_text(data, "private_key_id"),
                project_id=_text(data, "project_id"),
                public_key_pem=_text(data, "public_key_pem"),
            )
            return _json(200, {"ok": True})
        if route == ("POST", "/control/reset"):
            state.reset()
            return _json(200, {"ok": True})
        if route == ("GET", "/control/counts"):
            return _json(200, state.snapshot_counts())
        if route == ("GET", "/control/received"):
            limit = query.get("limit", ["100"])[0]
            if not _LIMIT.fullmatch(limit):
                raise InvalidField("limit", f"limit is a whole number, 0 or more, not {shown(limit)}")
            return _json(200, state.recent(token=query.get("token", [""])[0], limit=int(limit)))
    except InvalidField as exc:
        return _json(400, {"error": f"bad control request: {exc}", "field": exc.field})
    return _json(404, {"error": "no such control endpoint"})


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="3">
<title>Push simulator</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Roboto, sans-serif; background: #eef0f3; margin: 0; padding: 24px; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }} p.meta {{ margin: 0 0 20px; color: #666; font-size: 13px; }}
.phones {{ display: flex; gap: 40px; flex-wrap: wrap; }}
.phone {{ width: 320px; height: 640px; border-radius: 44px; padding: 14px; background: #111; box-shadow: 0 8px 30px rgba(0,0,0,.25); }}
.screen {{ height: 100%; border-radius: 32px; overflow-y: auto; padding: 48px 10px 10px; box-sizing: border-box; }}
.ios .screen {{ background: linear-gradient(160deg, #4b6cb7, #182848); }}
.android .phone, .android {{ }}
.android .screen {{ background: linear-gradient(160deg, #2e7d32, #1b3a1d); border-radius: 20px; }}
.android.phone {{ border-radius: 28px; }}
.clock {{ color: #fff; text-align: center; font-size: 44px; font-weight: 200; margin-bottom: 14px; }}
.label {{ color: #fff; text-align: center; font-size: 12px; margin-bottom: 8px; opacity: .8; }}
.zone {{ color: #fff; text-align: center; font-size: 11px; margin: -12px 0 10px; opacity: .7; }}
.card {{ background: rgba(255,255,255,.88); border-radius: 16px; padding: 10px 12px; margin-bottom: 8px; font-size: 13px; }}
.android .card {{ border-radius: 12px; background: #fafafa; }}
.head {{ display: flex; justify-content: space-between; font-size: 11px; color: #555; margin-bottom: 3px; }}
.title {{ font-weight: 600; }} .subtitle {{ font-weight: 500; }} .body {{ color: #333; }}
.image {{ display: block; width: 100%; max-height: 140px; object-fit: cover; border-radius: 8px; margin-top: 6px; }}
.token {{ font-family: monospace; font-size: 10px; color: #888; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
.empty {{ color: #fff; opacity: .7; text-align: center; margin-top: 40px; font-size: 13px; }}
</style></head><body>
<h1>Push simulator</h1>
<p class="meta">{total} {notifications} received · newest first · counts per token at <a href="/control/counts">/control/counts</a></p>
<div class="phones">
<div><div class="phone ios"><div class="screen"><div class="clock">{clock}</div><div class="zone">UTC</div><div class="label">iOS · APNs</div>{ios}</div></div></div>
<div><div class="phone android"><div class="screen"><div class="label">Android · FCM</div>{android}</div></div></div>
</div></body></html>"""


def _image(item: dict) -> str:
    """The image a notification shows, as a phone finds it: FCM's ``notification.image`` (or its
    Android or APNs options'), or Pushdesk's APNs payload's ``pushdesk.image`` (its Notification
    Service Extension downloads it); "" for none or for a value that is no web address."""
    payload = item.get("payload") or {}
    if item["platform"] == "android" or "message" in payload:
        message = payload.get("message") if isinstance(payload.get("message"), dict) else {}
        places = [
            message.get("notification"),
            (message.get("android") or {}).get("notification") if isinstance(message.get("android"), dict) else None,
            (message.get("apns") or {}).get("fcm_options") if isinstance(message.get("apns"), dict) else None,
        ]
    else:
        places = [payload.get("pushdesk")]
    for place in places:
        image = place.get("image") if isinstance(place, dict) else None
        if isinstance(image, str) and image.lower().startswith(("https://", "http://")):
            return image
    return ""


def _card(item: dict) -> str:
    # The simulator's times are UTC's, named: a marketer in New York reads a push of 14:05 as theirs.
    when = datetime.fromtimestamp(item["received_at"], tz=UTC).strftime("%H:%M:%S UTC")
    parts = [
        f'<div class="card" data-token="{html.escape(item["token"])}">',
        f'<div class="head"><span>{html.escape(item["app"])}</span><span>{when}</span></div>',
    ]
    if item["title"]:
        parts.append(f'<div class="title">{html.escape(item["title"])}</div>')
    if item["subtitle"]:
        parts.append(f'<div class="subtitle">{html.escape(item["subtitle"])}</div>')
    body = item["body"] or ("(background update)" if item["push_type"] in ("background", "data") else "")
    parts.append(f'<div class="body">{html.escape(body)}</div>')
    if image := _image(item):
        parts.append(f'<img class="image" src="{html.escape(image)}" alt="">')
    parts.append(f'<div class="token">{html.escape(item["token"])}</div></div>')
    return "".join(parts)


def handle_page(state: SimState, ex: Exchange) -> Answer:
    items = state.recent(limit=200)
    ios = "".join(_card(i) for i in items if i["platform"] == "ios") or '<div class="empty">No notifications yet</div>'
    android = (
        "".join(_card(i) for i in items if i["platform"] == "android")
        or '<div class="empty">No notifications yet</div>'
    )
    with state.lock:
        total = sum(state.counts.values())
    page = _PAGE.format(
        total=total,
        notifications="notification" if total == 1 else "notifications",
        clock=datetime.fromtimestamp(state.now(), tz=UTC).strftime("%H:%M"),
        ios=ios,
        android=android,
    )
    # "replace": a stored string that is not Unicode (none should be) must not take the page down.
    return Answer(200, [("content-type", "text/html; charset=utf-8")], page.encode("utf-8", "replace"))
