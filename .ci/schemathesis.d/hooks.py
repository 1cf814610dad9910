"""Signs Twilio status callbacks as Twilio does, so that generated reports reach the parser
instead of stopping at the signature check (docs/carriers.md, "Delivery receipts")."""

import base64
import hashlib
import hmac
import os

import schemathesis

TWILIO_PATH = "/v1/callbacks/twilio/"


@schemathesis.hook
def before_call(context, case, kwargs):
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
