"""Provider adapters: the :class:`Provider` seam (``base``), Google RBM-style RCS (``rbm``),
Twilio-style SMS (``sms``), in-app push (``push``) and an in-memory fake for tests."""

from typing import TYPE_CHECKING

from consentgate.delivery.providers.base import (
    CallbackMalformed,
    CallbackUnauthenticated,
    Capabilities,
    Channel,
    EventKind,
    FakeProvider,
    OutboundMessage,
    Provider,
    ProviderError,
    ProviderEvent,
    ProviderRejected,
    ProviderUnavailable,
    SendReceipt,
)
from consentgate.delivery.providers.push import PushProvider
from consentgate.delivery.providers.rbm import RbmProvider
from consentgate.delivery.providers.sms import SmsProvider

__all__ = [
    "CallbackMalformed",
    "CallbackUnauthenticated",
    "Capabilities",
    "Channel",
    "EventKind",
    "FakeProvider",
    "OutboundMessage",
    "Provider",
    "ProviderError",
    "ProviderEvent",
    "ProviderRejected",
    "ProviderUnavailable",
    "PushProvider",
    "RbmProvider",
    "SendReceipt",
    "SmsProvider",
]

if TYPE_CHECKING:  # mypy proves each adapter fits the seam

    def _conforms(p: RbmProvider | SmsProvider | PushProvider | FakeProvider) -> Provider:
        return p
