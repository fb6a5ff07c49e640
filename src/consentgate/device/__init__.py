"""The device SDK: what an app on the phone needs to receive app-layer encrypted messages.

Generate a key pair (:meth:`DeviceKeys.generate`), keep it on the device
(:meth:`DeviceKeys.save` / :meth:`DeviceKeys.load`), register its public JWK
(:func:`register`), and open envelopes with the sending tenant's JWKS
(:meth:`DeviceKeys.open`). It imports nothing from the server: only ``consentgate.crypto``
(the envelope format) and ``consentgate.encoding``, so it can ship on its own.
"""

from __future__ import annotations

from consentgate.crypto.envelope import SUITE_MLKEM768_X25519, SUITE_X25519, EnvelopeError
from consentgate.device.client import RegistrationError, register
from consentgate.device.keys import DeviceKeys, DeviceKeysError, tenant_signing_keys

__all__ = [
    "SUITE_MLKEM768_X25519",
    "SUITE_X25519",
    "DeviceKeys",
    "DeviceKeysError",
    "EnvelopeError",
    "RegistrationError",
    "register",
    "tenant_signing_keys",
]
