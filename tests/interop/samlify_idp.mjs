// Organisations' SAML 2.0 IdPs for the interop tests, on `samlify` (an independent SAML
// implementation, so pysaml2 is not only tested against pysaml2).
//
// Usage: node samlify_idp.mjs '<json config>'
//   {"key_file", "cert_file",
//    "idps": {"<name>": {"sp_metadata_url", "encryption": "aes256-gcm" | "aes256-cbc" | null,
//                        "sign_response": true, "class_ref": "...",
//                        "account": {"name_id", "name", "email", "employee_number", "groups": [..]}}}}
// Each IdP lives at <base>/<name>: metadata at /<name>/metadata (also its entity id), single
// sign-on by HTTP-Redirect at /<name>/sso. A signed AuthnRequest (checked against the SP
// metadata, fetched from the broker on first use) is answered at once, without a login page,
// by an auto-posting form carrying the Response: assertion signed, then encrypted to the SP's
// encryption certificate, then the Response signed (RSA-SHA256 throughout).
// Prints one JSON line {"base": ...} once listening on a free loopback port.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

// Both are CommonJS: their default export is the whole module.exports. The schema check is
// libxml2 compiled to WebAssembly (no Java, no native build; node-xmllint's asm.js build needs
// ~8 s to warm up).
import validator from '@authenio/samlify-xmllint-wasm';
import samlify from 'samlify';

samlify.setSchemaValidator(validator);

const config = JSON.parse(process.argv[2]);
const privateKey = readFileSync(config.key_file, 'utf8');
const signingCert = readFileSync(config.cert_file, 'utf8');
const { algorithms, namespace } = samlify.Constants;
const DATA_ALGORITHMS = {
  'aes256-gcm': 'http://www.w3.org/2009/xmlenc11#aes256-gcm',
  'aes256-cbc': algorithms.encryption.data.AES_256,
};
const ATTRIBUTES = {
  name: 'urn:oid:2.16.840.1.113730.3.1.241',
  email: 'urn:oid:0.9.2342.19200300.100.1.3',
  employee_number: 'urn:oid:2.16.840.1.113730.3.1.3',
  groups: 'urn:oid:1.3.6.1.4.1.5923.1.5.1.1',
};

const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${server.address().port}`;

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const id = () => `_${randomUUID()}`;

function makeIdp(name, settings) {
  const prefix = `${base}/${name}`;
  const idp = samlify.IdentityProvider({
    entityID: `${prefix}/metadata`,
    privateKey,
    signingCert,
    wantAuthnRequestsSigned: true,
    requestSignatureAlgorithm: algorithms.signature.RSA_SHA256,
    nameIDFormat: [namespace.format.persistent],
    singleSignOnService: [{ Binding: namespace.binding.redirect, Location: `${prefix}/sso` }],
    isAssertionEncrypted: Boolean(settings.encryption),
    dataEncryptionAlgorithm: DATA_ALGORITHMS[settings.encryption || 'aes256-gcm'],
    keyEncryptionAlgorithm: algorithms.encryption.key.RSA_OAEP_MGF1P,
  });
  let sp = null;
  return {
    prefix,
    idp,
    async sp() {
      if (sp === null) {
        const reply = await fetch(settings.sp_metadata_url);
        if (!reply.ok) throw new Error(`SP metadata: HTTP ${reply.status}`);
        // wantMessageSigned: the Response is signed too, not only the assertion.
        sp = samlify.ServiceProvider({ metadata: await reply.text(), wantMessageSigned: settings.sign_response });
      }
      return sp;
    },
    // samlify leaves the AuthnStatement empty; an organisation's IdP states how the person
    // logged in (AuthnContextClassRef), which is what the broker's assurance policy reads.
    template(requestId, target) {
      return (template) => {
        const now = new Date();
        const later = new Date(now.getTime() + 5 * 60 * 1000).toISOString();
        const { account } = settings;
        const values = { name: account.name, email: account.email, employee_number: account.employee_number };
        const attributes = Object.entries(values).filter(([, value]) => value)
          .map(([key, value]) => [ATTRIBUTES[key], [value]]);
        if (account.groups?.length) attributes.push([ATTRIBUTES.groups, account.groups]);
        const statement = '<saml:AttributeStatement>' + attributes.map(([attr, list]) =>
          `<saml:Attribute Name="${attr}" NameFormat="urn:oasis:names:tc:SAML:2.0:attrname-format:uri">`
          + list.map((v) => `<saml:AttributeValue xsi:type="xs:string">${escape(v)}</saml:AttributeValue>`).join('')
          + '</saml:Attribute>').join('') + '</saml:AttributeStatement>';
        const authn = `<saml:AuthnStatement AuthnInstant="${now.toISOString()}" SessionIndex="${id()}">`
          + `<saml:AuthnContext><saml:AuthnContextClassRef>${escape(settings.class_ref)}`
          + '</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>';
        const responseId = id();
        const tags = {
          ID: responseId, AssertionID: id(), Destination: target.acs, Audience: target.entityId,
          SubjectRecipient: target.acs, Issuer: `${prefix}/metadata`, IssueInstant: now.toISOString(),
          StatusCode: 'urn:oasis:names:tc:SAML:2.0:status:Success', ConditionsNotBefore: now.toISOString(),
          ConditionsNotOnOrAfter: later, SubjectConfirmationDataNotOnOrAfter: later,
          NameIDFormat: namespace.format.persistent, NameID: account.name_id, InResponseTo: requestId,
        };
        let context = samlify.SamlLib.replaceTagsByValue(template, tags);
        context = context.replace('{AuthnStatement}', authn).replace('{AttributeStatement}', statement);
        return { id: responseId, context };
      };
    },
  };
}

const idps = Object.fromEntries(Object.entries(config.idps).map(([name, s]) => [name, makeIdp(name, s)]));

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' }).end(body);
}

async function sso(entry, url) {
  const sp = await entry.sp();
  // The signature covers the query exactly as sent: SAMLRequest, RelayState, SigAlg, in that order.
  const raw = url.search.slice(1).split('&');
  const octetString = ['SAMLRequest', 'RelayState', 'SigAlg']
    .map((key) => raw.find((part) => part.startsWith(`${key}=`))).filter(Boolean).join('&');
  const query = Object.fromEntries(url.searchParams);
  const request = await entry.idp.parseLoginRequest(sp, 'redirect', { query, octetString });
  const requestId = request.extract.request.id;
  const target = {
    acs: sp.entityMeta.getAssertionConsumerService('post'),
    entityId: sp.entityMeta.getEntityID(),
  };
  const response = await entry.idp.createLoginResponse(sp, request, 'post', {}, {
    customTagReplacement: entry.template(requestId, target),
    encryptThenSign: true,
    relayState: query.RelayState,
  });
  return '<!doctype html><html lang="nl"><head><meta charset="utf-8"><title>Doorsturen</title></head><body>'
    + `<form method="post" action="${escape(response.entityEndpoint)}">`
    + `<input type="hidden" name="SAMLResponse" value="${escape(response.context)}">`
    + `<input type="hidden" name="RelayState" value="${escape(query.RelayState || '')}">`
    + '<button type="submit">Doorgaan</button></form></body></html>';
}

server.on('request', async (req, res) => {
  const url = new URL(req.url, base);
  const [, name, action] = url.pathname.split('/');
  const entry = idps[name];
  try {
    if (entry && action === 'metadata') {
      send(res, 200, 'application/samlmetadata+xml', entry.idp.getMetadata());
    } else if (entry && action === 'sso') {
      send(res, 200, 'text/html; charset=utf-8', await sso(entry, url));
    } else {
      send(res, 404, 'text/plain', 'not found');
    }
  } catch (error) {
    console.error(`samlify IdP ${name}: ${error.message}`);
    send(res, 400, 'text/plain', `refused: ${error.message}`);
  }
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
console.log(JSON.stringify({ base }));
