// A chain application on `openid-client` 6 (a certified relying party), used as its vendor
// would: discovery, authorization code + PKCE (S256), state, nonce, private_key_jwt client
// authentication, ID token validation, userinfo.
//
// Talks JSON lines over stdin/stdout so that the test's scripted browser can sit between
// the two halves of the flow:
//   in:  {"issuer", "client_id", "jwk" (private EC P-256 JWK with kid), "redirect_uri",
//         "scope", "params": {more authorization request parameters: acr_values, login_hint}}
//   out: {"authorization_url"}
//   in:  the callback URL the browser was sent to
//   out: {"claims", "userinfo", "token_type", "scope", "expires_in"}   (never the tokens)
//        or {"error": {"name", "code", "error", "error_description"}}
import { webcrypto } from 'node:crypto';
import { createInterface } from 'node:readline';

import * as client from 'openid-client';

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const next = async () => (await lines.next()).value;
const say = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);

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
  say({ claims, userinfo, token_type: tokens.token_type, scope: tokens.scope, expires_in: tokens.expiresIn() });
} catch (error) {
  say({ error: { name: error.name, code: error.code, error: error.error, error_description: error.error_description,
                 message: error.message } });
}
