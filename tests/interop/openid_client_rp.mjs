// A chain application on `openid-client` 6 (a certified relying party), used as its vendor
// would: discovery, authorization code + PKCE (S256), state, nonce, private_key_jwt client
// authentication, ID token validation, userinfo; then, when asked (`then`), RFC 8693 token
// exchange (`genericGrantRequest`), introspection and revocation (RFC 7662, RFC 7009), and
// the refresh_token grant with rotation.
//
// Talks JSON lines over stdin/stdout so that the test's scripted browser can sit between
// the two halves of the flow:
//   in:  {"issuer", "client_id", "jwk" (private EC P-256 JWK with kid), "redirect_uri",
//         "scope", "params": {more authorization request parameters: acr_values, login_hint},
//         "then": {"exchange": [{"audience", "scope"}, ...], "revoke": true, "refresh": true}}
//   out: {"authorization_url"}
//   in:  the callback URL the browser was sent to
//   out: {"claims", "userinfo", "access", "token_type", "scope", "expires_in", "has_refresh_token",
//         "then": {"exchange": [...], "introspection": {...}, "revoked": {...}, "refresh": {...}}}
//        (never the tokens themselves: access tokens as their decoded payload)
//        or {"error": {"name", "code", "error", "error_description"}}
import { webcrypto } from 'node:crypto';
import { createInterface } from 'node:readline';

import * as client from 'openid-client';

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const next = async () => (await lines.next()).value;
const say = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
const payload = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
const failure = (error) => ({ name: error.name, code: error.code, error: error.error,
                              error_description: error.error_description, message: error.message });
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

// What the application does with its tokens afterwards, each step reported, none fatal.
async function then(config, tokens, steps) {
  const out = {};
  if (steps.exchange) {
    out.exchange = [];
    for (const request of steps.exchange) {
      try {
        const exchanged = await client.genericGrantRequest(config, TOKEN_EXCHANGE, {
          subject_token: tokens.access_token, subject_token_type: ACCESS_TOKEN_TYPE, ...request,
        });
        out.exchange.push({ issued_token_type: exchanged.issued_token_type, token_type: exchanged.token_type,
                            expires_in: exchanged.expiresIn(), claims: payload(exchanged.access_token),
                            has_refresh_token: Boolean(exchanged.refresh_token) });
      } catch (error) {
        out.exchange.push({ error: failure(error) });
      }
    }
  }
  if (steps.revoke) {
    const before = await client.tokenIntrospection(config, tokens.access_token);
    await client.tokenRevocation(config, tokens.access_token);
    const after = await client.tokenIntrospection(config, tokens.access_token);
    out.introspection = before;
    out.revoked = after;
  }
  if (steps.refresh) {
    const old = tokens.refresh_token;
    try {
      const fresh = await client.refreshTokenGrant(config, old);
      out.refresh = { rotated: Boolean(fresh.refresh_token) && fresh.refresh_token !== old,
                      claims: payload(fresh.access_token), id_token: fresh.id_token ? fresh.claims() : null };
      // The retired token comes back: refused, and the whole family with it.
      try {
        await client.refreshTokenGrant(config, old);
        out.refresh.reuse = { accepted: true };
      } catch (error) {
        out.refresh.reuse = failure(error);
      }
      try {
        await client.refreshTokenGrant(config, fresh.refresh_token);
        out.refresh.after_reuse = { accepted: true };
      } catch (error) {
        out.refresh.after_reuse = failure(error);
      }
    } catch (error) {
      out.refresh = { error: failure(error) };
    }
  }
  return out;
}

try {
  const settings = JSON.parse(await next());
  const { d, kid, ...publicPart } = settings.jwk;
  const key = await webcrypto.subtle.importKey(
    'jwk', { ...publicPart, d }, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
  const config = await client.discovery(
    new URL(settings.issuer), settings.client_id,
    { id_token_signed_response_alg: 'ES256' },
    client.PrivateKeyJwt({ key, kid }),
    // The broker runs on plain http://127.0.0.1 in the tests.
    { execute: [client.allowInsecureRequests] },
  );
  const verifier = client.randomPKCECodeVerifier();
  const nonce = client.randomNonce();
  const state = client.randomState();
  const parameters = {
    redirect_uri: settings.redirect_uri,
    scope: settings.scope,
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    nonce,
    state,
  };
  Object.assign(parameters, settings.params || {});
  say({ authorization_url: client.buildAuthorizationUrl(config, parameters).href });

  const callback = new URL(await next());
  const tokens = await client.authorizationCodeGrant(config, callback, {
    pkceCodeVerifier: verifier, expectedNonce: nonce, expectedState: state, idTokenExpected: true,
  });
  const claims = tokens.claims();
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  const afterwards = settings.then ? await then(config, tokens, settings.then) : undefined;
  say({ claims, userinfo, access: payload(tokens.access_token), token_type: tokens.token_type, scope: tokens.scope, expires_in: tokens.expiresIn(),
        has_refresh_token: Boolean(tokens.refresh_token), then: afterwards });
} catch (error) {
  say({ error: failure(error) });
}
