// An organisation's OpenID Provider for the interop tests: `oidc-provider` (a certified OP),
// configured as an organisation would, with one scripted, non-interactive login.
//
// Usage: node oidc_idp.mjs '<json config>'
//   {"client": {"client_id", "redirect_uris", "jwks_uri"},
//    "accounts": {"<id>": {"name", "email", "groups"}}, "acr": "...", "amr": ["pwd", "otp"],
//    "conform_id_token_claims": true}
// Listens on a free loopback port and prints one JSON line {"issuer": ...} once ready.
//
// oidc-provider's own devInteractions set no `acr`, so /interaction/* is answered here: the
// login is finished at once for the account named by `login_hint` (else the first), with the
// configured acr/amr, and consent is given with a Grant for exactly what is missing.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(process.argv[2]);
const accountIds = Object.keys(config.accounts);

const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

// An ES256 signing key made for this run (the broker's policy accepts ES256 only).
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'idp-es256', alg: 'ES256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: config.client.client_id,
    redirect_uris: config.client.redirect_uris,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    jwks_uri: config.client.jwks_uri,
    id_token_signed_response_alg: 'ES256',
  }],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  acrValues: [config.acr],
  claims: {
    // amr and auth_time with every ID token, as most organisation IdPs send them.
    openid: ['sub', 'amr', 'auth_time'],
    profile: ['name', 'given_name', 'family_name'],
    email: ['email'],
    groups: ['groups'],
  },
  scopes: ['openid', 'profile', 'email', 'groups'],
  conformIdTokenClaims: config.conform_id_token_claims ?? true,
  pkce: { required: () => true },
  // oidc-provider refuses to fetch from loopback addresses (SSRF protection); here the broker's
  // jwks_uri is on loopback, so that one URL (and only that one) is fetched without the guard.
  fetch: (url, options) => {
    if (new URL(url).href === new URL(config.client.jwks_uri).href) delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const account = config.accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, ...account };
      },
    };
  },
});
// Refusals go to stderr (the test's peer log) with oidc-provider's detail: the reason an
// interop problem shows up as a bare `invalid_client` at the broker.
provider.on('server_error', (ctx, error) => console.error('oidc-provider server_error', error));
const why = (error) => {
  const reasons = [];
  for (let e = error; e; e = e.cause) reasons.push(e.error_detail || e.error_description || e.message || String(e));
  return reasons.join(' <- ');
};
for (const event of ['grant.error', 'authorization.error', 'userinfo.error']) {
  provider.on(event, (ctx, error) => console.error(`oidc-provider ${event}: ${why(error)}`));
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params } = details;
  if (prompt.name === 'login') {
    const hinted = accountIds.includes(params.login_hint) ? params.login_hint : accountIds[0];
    await provider.interactionFinished(req, res, {
      login: { accountId: hinted, acr: config.acr, amr: config.amr },
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  res.writeHead(400, { 'content-type': 'text/plain' }).end(`unexpected prompt ${prompt.name}`);
}

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((error) => {
      console.error('interaction failed', error);
      if (!res.headersSent) res.writeHead(500).end();
    });
    return;
  }
  callback(req, res);
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
console.log(JSON.stringify({ issuer }));
