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
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from delivery.pushsim.state import Answer, Exchange, SimState


def _json(status: int, value) -> Answer:
    return Answer(status, [("content-type", "application/json")], json.dumps(value).encode())


def handle_control(state: SimState, ex: Exchange) -> Answer:
    url = urlsplit(ex.path)
    query = parse_qs(url.query)
    route = (ex.method, url.path.rstrip("/"))
    try:
        data = json.loads(ex.body) if ex.body else {}
    except ValueError:
        return _json(400, {"error": "the body is not JSON"})
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
            state.add_device(
                token=data["token"],
                platform=data.get("platform", "ios"),
                state=data.get("state", "active"),
                environment=data.get("environment", ""),
                topic=data.get("topic", ""),
                project_id=data.get("project_id", ""),
            )
            return _json(200, {"ok": True})
        if route == ("POST", "/control/fail-token"):
            failures = [tuple(f) if isinstance(f, list) else f for f in data["failures"]]
            state.fail_token(token=data["token"], failures=failures)
            return _json(200, {"ok": True})
        if route == ("POST", "/control/apns-keys"):
            state.add_apns_key(
                key_id=data["key_id"],
                team_id=data["team_id"],
                public_key_pem=data["public_key_pem"],
                topics=data["topics"],
                environments=tuple(data.get("environments") or ("production", "sandbox")),
            )
            return _json(200, {"ok": True})
        if route == ("POST", "/control/service-accounts"):
            state.add_service_account(
                client_email=data["client_email"],
                private_key_id=data["private_key_id"],
                project_id=data["project_id"],
                public_key_pem=data["public_key_pem"],
            )
            return _json(200, {"ok": True})
        if route == ("POST", "/control/reset"):
            state.reset()
            return _json(200, {"ok": True})
        if route == ("GET", "/control/counts"):
            return _json(200, state.snapshot_counts())
        if route == ("GET", "/control/received"):
            limit = int(query.get("limit", ["100"])[0])
            return _json(200, state.recent(token=query.get("token", [""])[0], limit=limit))
    except (KeyError, ValueError, TypeError) as exc:
        return _json(400, {"error": f"bad control request: {exc}"})
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
.card {{ background: rgba(255,255,255,.88); border-radius: 16px; padding: 10px 12px; margin-bottom: 8px; font-size: 13px; }}
.android .card {{ border-radius: 12px; background: #fafafa; }}
.head {{ display: flex; justify-content: space-between; font-size: 11px; color: #555; margin-bottom: 3px; }}
.title {{ font-weight: 600; }} .subtitle {{ font-weight: 500; }} .body {{ color: #333; }}
.token {{ font-family: monospace; font-size: 10px; color: #888; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
.empty {{ color: #fff; opacity: .7; text-align: center; margin-top: 40px; font-size: 13px; }}
</style></head><body>
<h1>Push simulator</h1>
<p class="meta">{total} notification(s) received · newest first · counts per token at <a href="/control/counts">/control/counts</a></p>
<div class="phones">
<div><div class="phone ios"><div class="screen"><div class="clock">{clock}</div><div class="label">iOS · APNs</div>{ios}</div></div></div>
<div><div class="phone android"><div class="screen"><div class="label">Android · FCM</div>{android}</div></div></div>
</div></body></html>"""


def _card(item: dict) -> str:
    when = datetime.fromtimestamp(item["received_at"], tz=UTC).strftime("%H:%M:%S")
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
        total=total, clock=datetime.fromtimestamp(state.now(), tz=UTC).strftime("%H:%M"), ios=ios, android=android
    )
    return Answer(200, [("content-type", "text/html; charset=utf-8")], page.encode())
