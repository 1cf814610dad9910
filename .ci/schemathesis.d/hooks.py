"""Proves carriers' delivery reports as the carriers do, so that generated reports reach the
parsers instead of stopping at the proof (docs/carriers.md, "Delivery receipts"): Twilio's
X-Twilio-Signature, MessageMedia's callback secret in the URL (`?key=`). Telnyx's Ed25519
signatures are not made here: its reports stop at the proof (403)."""

import base64
import hashlib
import hmac
import os

import schemathesis

TWILIO_PATH = "/v1/callbacks/twilio/"
MESSAGEMEDIA_PATH = "/v1/callbacks/messagemedia/"


@schemathesis.hook
def before_call(context, case, kwargs):
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
