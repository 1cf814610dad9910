"""Proves carriers' delivery reports as the carriers do, so that generated reports reach the
parsers instead of stopping at the proof (docs/carriers.md, "Delivery receipts"): Twilio's
X-Twilio-Signature, MessageMedia's callback secret in the URL (`?key=`), Telnyx's Ed25519
signature over `{timestamp}|{body}` (the body as sent, so it is serialized here)."""

import base64
import hashlib
import hmac
import json
import os
import time

import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

TWILIO_PATH = "/v1/callbacks/twilio/"
MESSAGEMEDIA_PATH = "/v1/callbacks/messagemedia/"
TELNYX_PATH = "/v1/callbacks/telnyx/"


def sign_telnyx(case):
    """Sends the generated report as exact bytes, signed as Telnyx signs its webhooks."""
    if isinstance(case.body, bytes):
        raw = case.body
    else:
        raw = json.dumps(case.body, ensure_ascii=False).encode()
    case.body = raw
    timestamp = str(int(time.time()))
    key = Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex(os.environ["SMSGATE_TELNYX_PRIVATE_KEY"])
    )
    signature = key.sign(timestamp.encode() + b"|" + raw)
    case.headers = dict(case.headers or {})
    case.headers["telnyx-timestamp"] = timestamp
    case.headers["telnyx-signature-ed25519"] = base64.b64encode(signature).decode()


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.formatted_path.startswith(TELNYX_PATH):
        if case.media_type == "application/json":
            sign_telnyx(case)
        return
    if case.formatted_path.startswith(MESSAGEMEDIA_PATH):
        case.query = {**(case.query or {}), "key": os.environ["SMSGATE_MM_SECRET"]}
        return
    if (
        not case.formatted_path.startswith(TWILIO_PATH)
        or case.media_type != "application/x-www-form-urlencoded"
        or not isinstance(case.body, dict)
    ):
        return
    # A form carries names and values as text: flatten what was generated to that.
    case.body = {str(name): str(value) for name, value in case.body.items()}
    url = os.environ["SMSGATE_PUBLIC_URL"] + case.formatted_path
    signed = url + "".join(name + value for name, value in sorted(case.body.items()))
    digest = hmac.new(
        os.environ["SMSGATE_TWILIO_AUTH_TOKEN"].encode(), signed.encode(), hashlib.sha1
    ).digest()
    case.headers = dict(case.headers or {})
    case.headers["X-Twilio-Signature"] = base64.b64encode(digest).decode()
