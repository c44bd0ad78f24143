// The peer for bench/token_bench.py: node `oidc-provider` (a certified OpenID Provider)
// issuing ES256 JWT access tokens (RFC 9068) for client_credentials, refresh_token (rotated
// on every use) and token exchange (RFC 8693, a custom grant: oidc-provider has none built
// in), plus introspection of opaque access tokens (it keeps no state for JWT ones).
//
//   npm ci --prefix bench        # once: installs the versions pinned in bench/package-lock.json
//   [PEER_REDIS_URL=redis://127.0.0.1:6379/0] taskset -c 0 node bench/oidc_provider_peer.mjs PORT REFRESH_COUNT
//
// On start it mints REFRESH_COUNT refresh tokens (one grant each), one subject token for the
// exchange and one opaque token for introspection, then prints one JSON line with them and
// serves until killed. Storage is in memory (MapAdapter below), or in Redis when
// PEER_REDIS_URL is set (RedisAdapter below: what a deployment of several instances needs,
// the state shared like idbroker's Redis store; idbroker also writes its audit trail there).
import * as crypto from 'node:crypto';

import { Redis } from 'ioredis';
import * as jose from 'jose';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 3100);
const refreshCount = Number(process.argv[3] || 20000);
const issuer = `http://127.0.0.1:${port}`;
const API = 'https://api.bench.example';
const OTHER_API = 'https://other-api.bench.example';
const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'bench-es256' };
const resourceServers = {
  [API]: { scope: 'api:read', audience: API, accessTokenTTL: 300, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } },
  [OTHER_API]: { scope: 'api:read', audience: OTHER_API, accessTokenTTL: 300, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } },
};

// oidc-provider's own in-memory adapter is an LRU of 1,000 entries, which would evict the
// minted refresh tokens before they are used: a plain Map (entries expire on read) instead.
const stores = new Map();
class MapAdapter {
  constructor(name) {
    if (!stores.has(name)) stores.set(name, new Map());
    this.entries = stores.get(name);
    this.grants = stores.get('grant-index') || new Map();
    stores.set('grant-index', this.grants);
  }

  async upsert(id, payload, expiresIn) {
    this.entries.set(id, { payload, expires: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
    if (payload.grantId) {
      const ids = this.grants.get(payload.grantId) || [];
      ids.push([this.entries, id]);
      this.grants.set(payload.grantId, ids);
    }
  }

  async find(id) {
    const entry = this.entries.get(id);
    if (!entry) return undefined;
    if (entry.expires <= Date.now()) { this.entries.delete(id); return undefined; }
    return entry.payload;
  }

  async findByUid(uid) {
    for (const [id, entry] of this.entries) if (entry.payload.uid === uid) return this.find(id);
    return undefined;
  }

  async findByUserCode(code) {
    for (const [id, entry] of this.entries) if (entry.payload.userCode === code) return this.find(id);
    return undefined;
  }

  async consume(id) {
    const entry = this.entries.get(id);
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { this.entries.delete(id); }

  async revokeByGrantId(grantId) {
    for (const [entries, id] of this.grants.get(grantId) || []) entries.delete(id);
    this.grants.delete(grantId);
  }
}

// Each model instance as JSON under oidc:NAME:ID with its expiry; a list per grant of the
// keys issued under it (revokeByGrantId); uid and userCode point at their session / code.
const redisUrl = process.env.PEER_REDIS_URL;
const redis = redisUrl ? new Redis(redisUrl) : null;
redis?.defineCommand('consumeEntry', {
  numberOfKeys: 1,
  lua: `local value = redis.call('GET', KEYS[1])
if value then
  local entry = cjson.decode(value)
  entry.consumed = tonumber(ARGV[1])
  redis.call('SET', KEYS[1], cjson.encode(entry), 'KEEPTTL')
end
return 0`,
});
redis?.defineCommand('revokeGrant', {
  numberOfKeys: 1,
  lua: `for _, key in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do redis.call('DEL', key) end
redis.call('DEL', KEYS[1])
return 0`,
});

class RedisAdapter {
  constructor(name) { this.name = name; }

  key(id) { return `oidc:${this.name}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const write = redis.multi();
    if (expiresIn) write.set(key, JSON.stringify(payload), 'EX', expiresIn);
    else write.set(key, JSON.stringify(payload));
    for (const [field, value] of [['grant', payload.grantId], ['uid', payload.uid], ['userCode', payload.userCode]]) {
      if (!value) continue;
      const index = `oidc:${field}:${value}`;
      if (field === 'grant') write.rpush(index, key);
      else write.set(index, id);
      if (expiresIn) write.expire(index, expiresIn);
    }
    await write.exec();
  }

  async find(id) {
    const value = await redis.get(this.key(id));
    return value ? JSON.parse(value) : undefined;
  }

  async findByUid(uid) {
    const id = await redis.get(`oidc:uid:${uid}`);
    return id ? this.find(id) : undefined;
  }

  async findByUserCode(code) {
    const id = await redis.get(`oidc:userCode:${code}`);
    return id ? this.find(id) : undefined;
  }

  async consume(id) { await redis.consumeEntry(this.key(id), Math.floor(Date.now() / 1000)); }

  async destroy(id) { await redis.del(this.key(id)); }

  async revokeByGrantId(grantId) { await redis.revokeGrant(`oidc:grant:${grantId}`); }
}

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'bench', client_secret: 'bench-secret', token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials', EXCHANGE],
    redirect_uris: ['https://rp.bench.example/cb'], scope: 'openid offline_access',
    id_token_signed_response_alg: 'ES256',
  }],
  adapter: redis ? RedisAdapter : MapAdapter,
  jwks: { keys: [jwk] },
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => API,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        const info = resourceServers[resourceIndicator];
        if (!info) throw new Provider.errors.InvalidTarget();
        return info;
      },
    },
  },
  rotateRefreshToken: true,
  ttl: { AccessToken: 300, ClientCredentials: 300, RefreshToken: 6 * 3600, Grant: 6 * 3600 },
});

// RFC 8693 as a custom grant: the subject token must be a live JWT access token of this
// provider, issued to the calling client; the new token is for the requested resource.
const exchangeParams = ['subject_token', 'subject_token_type', 'resource', 'audience', 'scope'];
provider.registerGrantType(EXCHANGE, async (ctx) => {
  const { params, client } = ctx.oidc;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new Provider.errors.InvalidRequest('unsupported subject_token_type');
  }
  let claims;
  try {
    ({ payload: claims } = await jose.jwtVerify(params.subject_token, publicKey, {
      issuer, algorithms: ['ES256'], typ: 'at+jwt',
    }));
  } catch {
    throw new Provider.errors.InvalidGrant('subject token invalid');
  }
  if (claims.client_id !== client.clientId) throw new Provider.errors.InvalidGrant('foreign subject token');
  const resource = params.resource || OTHER_API;
  const info = resourceServers[resource];
  if (!info) throw new Provider.errors.InvalidTarget();
  const token = new provider.AccessToken({
    accountId: claims.sub, client, gty: 'token_exchange', scope: 'api:read',
    extra: { act: { sub: client.clientId } },
  });
  token.resourceServer = new provider.ResourceServer(resource, info);
  const value = await token.save();
  ctx.body = {
    access_token: value, issued_token_type: ACCESS_TOKEN_TYPE, token_type: 'Bearer',
    expires_in: token.expiration, scope: 'api:read',
  };
}, exchangeParams);

async function mint() {
  const client = await provider.Client.find('bench');
  const now = Math.floor(Date.now() / 1000);
  const refresh = [];
  for (let i = 0; i < refreshCount; i += 1) {
    const grant = new provider.Grant({ accountId: `user-${i}`, clientId: 'bench' });
    grant.addOIDCScope('offline_access');
    grant.addResourceScope(API, 'api:read');
    const grantId = await grant.save();
    const token = new provider.RefreshToken({
      accountId: `user-${i}`, client, grantId, scope: 'offline_access', gty: 'authorization_code',
      authTime: now, iiat: now, rotations: 0, resource: API,
    });
    refresh.push(await token.save());
  }
  const subject = new provider.AccessToken({ accountId: 'user-0', client, gty: 'client_credentials', scope: 'api:read' });
  subject.resourceServer = new provider.ResourceServer(API, resourceServers[API]);
  const opaque = new provider.AccessToken({ accountId: 'user-0', client, gty: 'authorization_code', scope: 'api:read' });
  return { refresh, subject: await subject.save(), opaque: await opaque.save() };
}

const minted = await mint();
provider.listen(port, '127.0.0.1');
process.stdout.write(`${JSON.stringify({ issuer, ...minted })}\n`);
