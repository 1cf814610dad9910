/**
 * Auth0 Action, trigger `post-login`: tells smsgate that a login was completed with a
 * passwordless SMS code, so smsgate can measure which carrier's codes arrive (a login is the
 * proof a receipt cannot give) and route by it (`order = "measured"`).
 *
 * Install: Actions > Library > Create Action > "Login / Post Login", paste this file, add the
 * secrets below, deploy, and add it to the Login flow.
 *
 * Secrets:
 *   SMSGATE_URL       https://sms.example.com/v1/verifications
 *   SMSGATE_SECRET    the `secret` of an [auth0.<name>] signer in smsgate's configuration
 *   SMSGATE_AUDIENCE  that signer's `audience`, e.g. urn:MySmsGateway
 *   SMSGATE_SUBJECT   that signer's `subject`, if it has one, e.g. urn:Auth0
 *
 * What the event tells (Auth0's post-login event object): `event.authentication.methods` lists
 * how the user authenticated, each `{name, timestamp}` (an ISO 8601 time); `name` is "sms" when
 * a passwordless SMS connection was the first factor, and the user's number is
 * `event.user.phone_number`. An MFA challenge by SMS is not reported: the post-login trigger
 * runs before MFA, and the event does not carry the enrolled MFA phone number.
 *
 * It never fails the login: smsgate gets 5 s, and any error is logged and dropped. A run for a
 * refresh-token exchange or a repeated run is harmless: smsgate attributes a login to a message
 * once.
 */
const crypto = require('crypto');

const TIMEOUT_MS = 5000;
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

/** The SMS code this login was completed with, if any: its method entry. */
function smsMethod(event) {
  const methods = (event.authentication && event.authentication.methods) || [];
  return methods.filter((m) => m && m.name === 'sms').pop();
}

exports.onExecutePostLogin = async (event, api) => {
  const method = smsMethod(event);
  const phone = event.user && event.user.phone_number;
  if (!method || !phone) return;
  const body = { phone_number: phone };
  if (typeof method.timestamp === 'string') body.at = method.timestamp;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  try {
    const response = await fetch(event.secrets.SMSGATE_URL, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${signToken(event.secrets)}`,
      },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      console.log(`smsgate refused the verification (${response.status})`);
    }
  } catch (err) {
    console.log(`smsgate did not take the verification: ${err.message}`);
  } finally {
    clearTimeout(timer);
  }
};
