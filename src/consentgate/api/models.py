"""Wire models: requests are parsed here, at the boundary, and rejected with the field named."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["granted", "withdrawn"]
SourceName = Literal["web", "android", "ios", "api", "import", "inbound_keyword"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=1000)


class DeviceIn(_Strict):
    """Capabilities detected at consent time, recorded with the consent (no identifiers)."""

    rcs: bool
    native_e2ee: bool = False
    app_key_kid: str | None = Field(None, max_length=200)


class ConsentEventIn(_Strict):
    consent_id: str = Field(
        min_length=1, max_length=200, description="The CMP's id; idempotency key"
    )
    phone: str | None = Field(None, description="Raw phone number; hashed at once, never stored")
    email: str | None = Field(None, description="Raw e-mail address; hashed at once, never stored")
    hashed_id: str | None = Field(None, description="A hashed id this service returned earlier")
    consent_type: str = Field(min_length=1, max_length=64, description="A purpose of the tenant")
    status: Status
    timestamp: str = Field(description="RFC 3339: when the person acted")
    cmp_version: str | None = Field(None, max_length=100)
    source: SourceName = "api"
    policy_version: str | None = Field(None, max_length=100)
    jurisdiction: str | None = Field(None, max_length=16)
    device: DeviceIn | None = Field(None, description="Capabilities seen at consent time")
    receipt: str | None = Field(
        None, max_length=16384, description="The CMP's signed receipt (compact JWS)"
    )


class ConsentBatchIn(_Strict):
    events: list[ConsentEventIn] = Field(min_length=1, max_length=1000)


class IngestOut(BaseModel):
    event_id: str
    seq: int
    hashed_id: str
    leaf_hash: str


class BatchOut(BaseModel):
    events: list[IngestOut]


class LookupIn(_Strict):
    phone: str | None = None
    email: str | None = None
    hashed_id: str | None = None


class StateOut(BaseModel):
    status: Literal["granted", "withdrawn", "expired"]
    effective_at: str
    event_seq: int
    expires_at: str | None


class ConsentsOut(BaseModel):
    hashed_id: str
    consents: dict[str, StateOut]


class HistoryOut(BaseModel):
    hashed_id: str
    events: list[dict[str, Any]]


class InclusionProofOut(BaseModel):
    seq: int
    tree_size: int
    leaf_hash: str
    hashes: list[str]
    checkpoint: str | None = Field(None, description="The signed checkpoint at tree_size, if any")


class ConsistencyProofOut(BaseModel):
    first: int
    second: int
    hashes: list[str]


class PurposeIn(_Strict):
    max_age_days: int | None = Field(None, ge=1, le=36500)
    description: str = Field("", max_length=200)


class PurposeOut(BaseModel):
    name: str
    max_age_days: int | None
    description: str


class CmpKeysIn(_Strict):
    jwks: dict[str, Any] = Field(description="The CMP's public JWK set")
    require_signed_receipts: bool = False


class ConsentTokenIn(_Strict):
    phone: str | None = None
    email: str | None = None
    hashed_id: str | None = None
    consent_type: str = Field(min_length=1, max_length=64)
    ttl_seconds: int = Field(300, ge=1, le=900)


class ReceiptProofOut(BaseModel):
    seq: int
    tree_size: int
    hashes: list[str]


class ReceiptOut(BaseModel):
    receipt: str = Field(description="Compact JWS (EdDSA), kid in the header")
    leaf: str = Field(description="The leaf's canonical JSON (RFC 8785), exactly as hashed")
    inclusion_proof: ReceiptProofOut
    checkpoint: str = Field(description="The signed checkpoint the proof is against")


class ConsentTokenOut(BaseModel):
    token: str
    expires_at: int


class DeviceRegistrationIn(_Strict):
    phone: str | None = None
    hashed_id: str | None = None
    rcs: bool
    native_e2ee: bool = False
    app_key: dict[str, Any] | None = Field(
        None, description="Public JWK: X25519 (kty OKP) or the ML-KEM-768+X25519 hybrid, with kid"
    )
    expires_at: str | None = Field(None, description="RFC 3339; the key is not used after it")


class DeviceRegistrationOut(BaseModel):
    device_id: str


class TemplateIn(_Strict):
    name: str = Field(min_length=1, max_length=100)
    text: str = Field(min_length=1, max_length=2000)
    rich_card: dict[str, Any] | None = None
    sensitive: bool = False


class TemplateOut(BaseModel):
    template_id: str


class MessageIn(_Strict):
    to: str = Field(description="Raw phone number; used in memory only")
    consent_type: str = Field(min_length=1, max_length=64)
    template_id: str = Field(min_length=1, max_length=36)
    variables: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str = Field(min_length=1, max_length=200)


class DecisionOut(BaseModel):
    action: Literal["sent", "skipped", "fallback"]
    mode: str | None
    reason: str | None


class MessageOut(BaseModel):
    message_id: str
    decision: DecisionOut
    device_kid: str | None
    consent_seq: int | None
    status: str


class CampaignIn(_Strict):
    template_id: str = Field(min_length=1, max_length=36)
    consent_type: str = Field(min_length=1, max_length=64)


class CampaignOut(BaseModel):
    campaign_id: str
    status: str
    total: int
    sent: int
    skipped: int
    fallback: int
    by_reason: dict[str, int]


class AnalyticsSettingsIn(_Strict):
    """k-suppression threshold and monthly privacy budget (epsilon) of the tenant."""

    k_threshold: int = Field(strict=True, description="Smallest group shown (distinct subjects)")
    monthly_epsilon: float = Field(
        strict=True, allow_inf_nan=False, description="Privacy budget per calendar month (UTC)"
    )
    require_dp: bool = Field(False, strict=True, description="Refuse answers without DP noise")


class ConversionsIn(_Strict):
    month: str = Field(min_length=7, max_length=7, description="YYYY-MM the tokens belong to")
    tokens: list[Any] = Field(description="Join tokens of converted people (≤ 10000)")


class RetentionIn(_Strict):
    """How long operational records are kept, in days (1-3650). A field left out takes its
    default; the ledger is never deleted from."""

    delivery_events_days: int | None = Field(
        None, strict=True, description="Delivery receipts and reads of a send (default 400)"
    )
    send_decisions_days: int | None = Field(
        None, strict=True, description="Send decisions, finished campaigns (default 400)"
    )
    outbox_days: int | None = Field(
        None,
        strict=True,
        description="Delivered/dead outbox events, cached CMP webhook answers (default 30)",
    )


class RetentionOut(BaseModel):
    delivery_events_days: int
    send_decisions_days: int
    outbox_days: int
    defaults: dict[str, int]


class ErasureOut(BaseModel):
    erased: bool
    ledger_seq: int = Field(description="The erasure's own ledger leaf")
    tree_size: int = Field(description="Size of the signed checkpoint that covers it")
    counts: dict[str, int] = Field(description="Rows deleted or unlinked, per table")
    notified_endpoints: int = Field(
        description="CRM/CMP endpoints the subject.erased notice is queued for"
    )
    storage: dict[str, Any] = Field(description="What was done to purge the bytes from disk")


class CrmEndpointIn(_Strict):
    """A CRM or CMP webhook endpoint. ``kind: cmp`` endpoints are not sent back the CMP's own
    consent events, only withdrawals that originate here (STOP keywords, RBM unsubscribe)."""

    url: str = Field(min_length=1, max_length=2000, description="http:// or https:// URL")
    event_types: list[str] = Field(
        min_length=1,
        max_length=20,
        description="consent.changed, message.decided, message.delivered, message.read, "
        "message.failed, subject.erased",
    )
    kind: Literal["crm", "cmp"] = "crm"


class CrmEndpointOut(BaseModel):
    endpoint_id: str
    url: str
    kind: str
    event_types: list[str]
    active: bool
    created_at: str
    disabled_at: str | None


class CrmEndpointCreatedOut(CrmEndpointOut):
    secret: str = Field(description="whsec_<base64>: verifies webhook-signature; shown once")


class CrmEndpointsOut(BaseModel):
    endpoints: list[CrmEndpointOut]


class DeliveryOut(BaseModel):
    delivery_id: int
    webhook_id: str = Field(description="Stable per event and endpoint, across retries")
    endpoint_id: str
    event_type: str
    status: Literal["pending", "delivered", "dead"]
    attempts: int
    created_at: str
    queued_at: str
    next_attempt_at: str | None
    last_attempt_at: str | None
    delivered_at: str | None
    last_status_code: int | None
    last_error: str | None
    event: dict[str, Any] = Field(description="The body sent: {type, timestamp, data}")


class DeliveriesOut(BaseModel):
    deliveries: list[DeliveryOut]
    next_cursor: str | None
