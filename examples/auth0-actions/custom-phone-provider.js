/**
 * Auth0 Action, trigger `custom-phone-provider`: sends Auth0's phone notifications (sign-up and
 * login codes, password resets, blocked-account notices) through smsgate.
 *
 * Install: Branding > Phone Provider > Custom, paste this file as the provider's Action, add the
 * secrets below, deploy. No npm dependencies: the token is signed with Node's crypto.
 *
 * Secrets:
 *   SMSGATE_URL       https://sms.example.com/v1/auth0/phone-provider
 *   SMSGATE_SECRET    the `secret` of an [auth0.<name>] signer in smsgate's configuration
 *   SMSGATE_AUDIENCE  that signer's `audience`, e.g. urn:MySmsGateway
 *   SMSGATE_SUBJECT   that signer's `subject`, if it has one, e.g. urn:Auth0
 *
 * Timing: an Action must finish within 20 s, so smsgate gets 10 s. When smsgate cannot take the
 * message (busy, down, rate-limited), the Action asks Auth0 to run it again later
 * (api.notification.retry, up to 5 times); every run sends the same Idempotency-Key, so smsgate
 * queues the message once however often it arrives. A message smsgate refuses for good (a
 * blocked destination, an invalid number) is dropped with the reason.
 */
const crypto = require('crypto');

const TIMEOUT_MS = 10000;
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

/**
 * The same for every run of one notification: Auth0 retries with the same event. A call and a
 * text of one code are two messages, so the delivery method and the spoken text are part of it.
 */
function idempotencyKey(event) {
  const n = event.notification;
  const parts = [
    (event.transaction && event.transaction.correlation_id) || '',
    n.recipient, n.message_type || '', n.code || '', n.as_text || '',
    n.delivery_method || '', n.as_voice || '',
  ];
  return crypto.createHash('sha256').update(JSON.stringify(parts)).digest('hex');
}

/** smsgate's answers that are worth another try later. */
function isTransient(status) {
  return status === 408 || status === 429 || status >= 500;
}

exports.onExecuteCustomPhoneProvider = async (event, api) => {
  const n = event.notification;
  const request = event.request || {};
  const body = {
    notification: {
      recipient: n.recipient,
      as_text: n.as_text,
      // What a call says: Auth0 writes it for the ear; without it smsgate speaks as_text.
      as_voice: n.as_voice,
      delivery_method: n.delivery_method,
      message_type: n.message_type,
      code: n.code,
      locale: n.locale,
      from: n.from,
    },
    request: {
      ip: request.ip,
      user_agent: request.user_agent,
      geoip: request.geoip ? { countryCode: request.geoip.countryCode } : undefined,
    },
  };
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  try {
    const response = await fetch(event.secrets.SMSGATE_URL, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${signToken(event.secrets)}`,
        'idempotency-key': idempotencyKey(event),
      },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (response.ok) return;
    const answer = (await response.text()).slice(0, 500);
    if (isTransient(response.status)) {
      api.notification.retry(`smsgate answered ${response.status}: ${answer}`);
    } else {
      api.notification.drop(`smsgate refused the message (${response.status}): ${answer}`);
    }
  } catch (err) {
    api.notification.retry(`smsgate did not answer: ${err.message}`);
  } finally {
    clearTimeout(timer);
  }
};
