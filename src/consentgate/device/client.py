"""Registering a device with consentgate: ``POST /v1/devices``.

The contract (DESIGN.md §4): body ``{"phone" | "hashed_id", "rcs", "native_e2ee",
"app_key": <public JWK>, "expires_at"?}`` with the tenant's API key as a bearer token;
``201 {"device_id"}`` for a new device (``200`` when an existing one is refreshed), an
RFC 9457 problem otherwise. The raw phone number goes only into the request body: it is never
put in an exception or a log line here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from consentgate.device.keys import DeviceKeys


class RegistrationError(Exception):
    """The service refused the registration (or answered something unexpected)."""

    def __init__(self, status: int, title: str, detail: str | None = None) -> None:
        super().__init__(f"device registration failed ({status}): {detail or title}")
        self.status = status
        self.title = title
        self.detail = detail


def _expires_at(value: str | datetime | None) -> str | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        return value.isoformat().replace("+00:00", "Z")
    return value


def _problem(response: httpx.Response) -> RegistrationError:
    try:
        problem: Any = response.json()
    except ValueError:
        problem = None
    if isinstance(problem, dict):
        title = str(problem.get("title") or response.reason_phrase)
        detail = problem.get("detail")
        return RegistrationError(response.status_code, title, str(detail) if detail else None)
    return RegistrationError(response.status_code, response.reason_phrase or "unexpected answer")


def register(
    base_url: str,
    api_key: str,
    *,
    keys: DeviceKeys,
    rcs: bool,
    native_e2ee: bool,
    phone: str | None = None,
    hashed_id: str | None = None,
    expires_at: str | datetime | None = None,
    client: httpx.Client | None = None,
    timeout: float = 10.0,
) -> str:
    """Register (or refresh) a device and its envelope key; return the ``device_id``.

    Exactly one of ``phone`` (E.164, hashed by the service at once) or ``hashed_id`` (an id
    the service returned earlier). ``expires_at`` (RFC 3339) is when the app key stops being
    used. Pass ``client`` to reuse a connection pool or inject a transport; otherwise a
    short-lived client is made for this call. Use an https ``base_url``.
    """
    if (phone is None) == (hashed_id is None):
        raise ValueError("give exactly one of phone or hashed_id")
    body: dict[str, Any] = {
        "rcs": rcs,
        "native_e2ee": native_e2ee,
        "app_key": keys.public_jwk(),
    }
    if phone is not None:
        body["phone"] = phone
    else:
        body["hashed_id"] = hashed_id
    expiry = _expires_at(expires_at)
    if expiry is not None:
        body["expires_at"] = expiry
    url = f"{base_url.rstrip('/')}/v1/devices"
    headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
    if client is None:
        with httpx.Client(timeout=timeout) as own:
            response = own.post(url, json=body, headers=headers)
    else:
        response = client.post(url, json=body, headers=headers)
    if response.status_code not in (200, 201):
        raise _problem(response)
    try:
        device_id = response.json()["device_id"]
    except (ValueError, KeyError, TypeError):
        device_id = None
    if not isinstance(device_id, str) or not device_id:
        raise RegistrationError(response.status_code, "the answer carries no device_id")
    return device_id
