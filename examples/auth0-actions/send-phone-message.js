/**
 * Auth0 Action, trigger `send-phone-message`: sends MFA codes (enrollment and challenge) through
 * smsgate when MFA's phone factor uses a custom provider.
 *
 * Install: Actions > Library > Create Action > "Send Phone Message", paste this file, add the
 * secrets below, deploy, and add it to the Send Phone Message flow; then set the SMS factor's
 * delivery provider to Custom (Security > Multi-factor Auth > Phone Message).
 *
 * Secrets:
 *   SMSGATE_URL       https://sms.example.com/v1/auth0/phone-provider
 *   SMSGATE_SECRET    the `secret` of an [auth0.<name>] signer in smsgate's configuration
 *   SMSGATE_AUDIENCE  that signer's `audience`, e.g. urn:MySmsGateway
 *   SMSGATE_SUBJECT   that signer's `subject`, if it has one, e.g. urn:Auth0
 *
 * This trigger is blocking and must finish within 20 s: smsgate gets 8 s, and a failure throws,
 * so Auth0 reports it to the user at once instead of leaving them waiting for a code. The
 * Idempotency-Key makes a repeated run of the same challenge one message.
 */
const crypto = require('crypto');

const TIMEOUT_MS = 8000;
const TOKEN_SECONDS = 60;

function base64url(text) {
  return Buffer.from(text).toString('base64url');
}

/** An HS256 token as smsgate's [auth0.<name>] signer expects it. */
function signToken(secrets) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { iss: 'Auth0', aud: secrets.SMSGATE_AUDIENCE, iat: now, exp: now + TOKEN_SECONDS };
  if (secrets.SMSGATE_SUBJECT) claims.sub = secrets.SMSGATE_SUBJECT;
  const unsigned = `${base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${base64url(JSON.stringify(claims))}`;
  const signature = crypto.createHmac('sha256', secrets.SMSGATE_SECRET).update(unsigned).digest('base64url');
  return `${unsigned}.${signature}`;
}

function idempotencyKey(event) {
  const m = event.message_options;
  const parts = [
    (event.transaction && event.transaction.id) || '',
    m.recipient, m.action || '', m.code || '', m.text || '',
  ];
  return crypto.createHash('sha256').update(JSON.stringify(parts)).digest('hex');
}

exports.onExecuteSendPhoneMessage = async (event, api) => {
  const m = event.message_options;
  const request = event.request || {};
  const body = {
    message_options: {
      recipient: m.recipient,
      text: m.text,
      code: m.code,
      message_type: m.message_type,
      action: m.action,
    },
    request: { ip: request.ip, user_agent: request.user_agent },
  };
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  let response;
  try {
    response = await fetch(event.secrets.SMSGATE_URL, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${signToken(event.secrets)}`,
        'idempotency-key': idempotencyKey(event),
      },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
  } catch (err) {
    throw new Error(`smsgate did not answer: ${err.message}`);
  } finally {
    clearTimeout(timer);
  }
  if (!response.ok) {
    const answer = (await response.text()).slice(0, 500);
    throw new Error(`smsgate refused the message (${response.status}): ${answer}`);
  }
};
