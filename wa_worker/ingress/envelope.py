"""Pure rules of the ingress: the verify handshake, the signature verdict, the envelope.

No I/O. The envelope is the worker's contract (wa_worker/models/records.py `Envelope`):
`{id, headers, body, timestamp}` with `body` the raw request body as a string, so the worker
verifies the signature again over the very same bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime

import orjson

from wa_worker.errors import SignatureError
from wa_worker.operators.parse import SIGNATURE_HEADER, verify_signature

# Kept in the envelope: what the worker needs (the signature) and what an auditor needs (who
# sent it, as what); never cookies, authorization or a proxy's headers.
KEPT_HEADERS = (SIGNATURE_HEADER, "User-Agent", "Content-Type", "traceparent", "tracestate")
RECEIVED_AT_HEADER = "X-Wa-Ingress-Received-At"


def handshake(params: Mapping[str, str], verify_token: bytes | None) -> str | None:
    """The challenge to echo when Meta's subscription request carries our token, else None."""
    if verify_token is None or params.get("hub.mode") != "subscribe":
        return None
    given = params.get("hub.verify_token", "").encode()
    challenge = params.get("hub.challenge")
    if challenge is None or not hmac.compare_digest(given, verify_token):
        return None
    return challenge


def signature_problem(body: bytes, header: str | None, secrets: Sequence[bytes]) -> str | None:
    """None when one of the secrets signed `body`; else the outcome class of the refusal."""
    if not secrets:
        return None  # INGRESS_ALLOW_UNSIGNED: refused at start-up unless asked for
    if not header:
        return "missing_signature"
    scheme, _, given = header.partition("=")
    if scheme != "sha256" or not given:
        return "malformed_signature"
    for secret in secrets:
        try:
            verify_signature(body, header, secret)
            return None
        except SignatureError:
            continue
    return "bad_signature"


def envelope_id(body: bytes) -> str:
    """A digest of the raw bytes: Meta's retry of a delivery gets the same id (and key)."""
    return hashlib.sha256(body).hexdigest()[:32]


def kept_headers(headers: Mapping[str, str], received_at: datetime) -> dict[str, str]:
    kept = {name: headers[name] for name in KEPT_HEADERS if name in headers}
    kept[RECEIVED_AT_HEADER] = received_at.isoformat(timespec="milliseconds")
    return kept


def build_envelope(
    text: str, webhook_id: str, headers: Mapping[str, str], received_at: datetime
) -> bytes:
    """`text`: the body decoded as UTF-8, strictly (its re-encoding gives the signed bytes)."""
    return orjson.dumps(
        {
            "id": webhook_id,
            "headers": kept_headers(headers, received_at),
            "body": text,
            "timestamp": received_at.isoformat(timespec="milliseconds"),
        }
    )
