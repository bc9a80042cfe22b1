"""The simulator's trust file: public keys of apps that send to it, written by their owners.

``demo_setup`` (and anyone trying the product with generated credentials) adds the public
halves of the keys it made; ``manage.py pushsim`` re-reads the file when a request names a
key or service account it does not know yet. Only public keys are ever written here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from delivery.pushsim.state import SimState


def trust_file_path() -> Path:
    from django.conf import settings

    return Path(settings.VAR_DIR) / "pushsim" / "trust.json"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"apns_keys": [], "service_accounts": []}


def trust_add(*, path: Path, apns_key: dict | None = None, service_account: dict | None = None) -> None:
    """Add (or replace, by key id / client email) a public APNs key or service account to the file."""
    data = _read(path)
    if apns_key is not None:
        data["apns_keys"] = [k for k in data.get("apns_keys", []) if k["key_id"] != apns_key["key_id"]] + [apns_key]
    if service_account is not None:
        email = service_account["client_email"]
        data["service_accounts"] = [a for a in data.get("service_accounts", []) if a["client_email"] != email] + [
            service_account
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def trust_loader(state: SimState, path: Path):
    """A function that loads the file into ``state`` when it changed since the last load."""
    seen = {"mtime": None}

    def load() -> None:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime == seen["mtime"]:
            return
        seen["mtime"] = mtime
        data = _read(path)
        for key in data.get("apns_keys", []):
            state.add_apns_key(
                key_id=key["key_id"],
                team_id=key["team_id"],
                public_key_pem=key["public_key_pem"],
                topics=key["topics"],
                environments=tuple(key.get("environments") or ("production", "sandbox")),
            )
        for account in data.get("service_accounts", []):
            state.add_service_account(
                client_email=account["client_email"],
                private_key_id=account["private_key_id"],
                project_id=account["project_id"],
                public_key_pem=account["public_key_pem"],
            )

    return load
