// The reference side of the interop test: Alibaba's own libraries compute the
// Authorization of each request the daemon sent (as the fake Alibaba captured
// it: method, path, query, headers as received). Our code stays in C; this
// file only asks @alicloud/openapi-util 0.3.3 and @alicloud/openapi-client
// 0.4.15 (pinned in package-lock.json, installed by `npm ci`).
//
// usage: node reference.js CAPTURED.json ACCESS_KEY_ID SECRET_FILE
// CAPTURED.json: [{"method", "path", "rawQuery", "headers": [[name, value]...],
//                  "action"}, ...]
// Prints one JSON array: for each request {"util": Authorization computed by
// OpenApiUtil.getAuthorization over the request as received, "client": the
// Authorization the official client puts on the same call (same action,
// parameters, endpoint, x-acs-date and nonce)}.
'use strict';
const fs = require('fs');
const OpenApiUtil = require('@alicloud/openapi-util').default;
const OpenApi = require('@alicloud/openapi-client');
const Tea = require('@alicloud/tea-typescript');
const TeaUtilModule = require('@alicloud/tea-util');
const TeaUtil = TeaUtilModule.default;

const ALGORITHM = 'ACS3-HMAC-SHA256';
const [file, keyId, secretFile] = process.argv.slice(2);
const secret = fs.readFileSync(secretFile, 'utf8').replace(/\n+$/, '');
const captured = JSON.parse(fs.readFileSync(file, 'utf8'));

// The query as the server decodes it: name=value pairs, %XX decoded as
// UTF-8, '+' kept as a plus (RFC 3986).
function decodeQuery(raw) {
  const q = {};
  for (const piece of raw.split('&')) {
    if (!piece) continue;
    const at = piece.indexOf('=');
    const k = decodeURIComponent(at < 0 ? piece : piece.slice(0, at));
    const v = at < 0 ? '' : decodeURIComponent(piece.slice(at + 1));
    if (Object.prototype.hasOwnProperty.call(q, k)) throw new Error(`parameter ${k} repeated`);
    q[k] = v;
  }
  return q;
}

// (a) The library's signer over the request as received: every header the
// request carried but Authorization, with the names as they were sent.
function utilAuthorization(r) {
  const headers = {};
  let payload = null;
  for (const [k, v] of r.headers) {
    if (k.toLowerCase() === 'authorization') continue;
    if (k.toLowerCase() === 'x-acs-content-sha256') payload = v;
    headers[k] = v;
  }
  const request = new Tea.Request();
  request.method = r.method;
  request.pathname = r.path;
  request.query = decodeQuery(r.rawQuery);
  request.headers = headers;
  return OpenApiUtil.getAuthorization(request, ALGORITHM, payload, keyId, secret);
}

// (b) The official client making the same call. Its clock and nonce are set
// to the request's, and the request it would send is taken just before it
// goes out (Tea.doAction). The credential is a plain AccessKey provider with
// no provider name: @alicloud/credentials' own would add an
// x-acs-credentials-provider header that the daemon does not send.
let current = null;
let sent = null;
OpenApiUtil.getTimestamp = () => current.date;
TeaUtil.getNonce = () => current.nonce;
Tea.doAction = async (request) => {
  sent = request;
  const e = new Error('captured');
  e.code = 'Captured';
  throw e;
};
const credential = {
  getCredential: async () => ({accessKeyId: keyId, accessKeySecret: secret, securityToken: '',
                               type: 'access_key', providerName: ''}),
};

async function clientAuthorization(r) {
  const h = {};
  for (const [k, v] of r.headers) h[k.toLowerCase()] = v;
  current = {date: h['x-acs-date'], nonce: h['x-acs-signature-nonce']};
  sent = null;
  const client = new OpenApi.default(new OpenApi.Config({
    credential, endpoint: h['host'], protocol: 'HTTPS', readTimeout: 1000, connectTimeout: 1000,
  }));
  // As the product SDK (cloudauth-intl 2022-08-09) calls an RPC action.
  const params = new OpenApi.Params({
    action: h['x-acs-action'], version: h['x-acs-version'], protocol: 'HTTPS', pathname: '/',
    method: 'POST', authType: 'AK', style: 'RPC', reqBodyType: 'formData', bodyType: 'json',
  });
  const req = new OpenApi.OpenApiRequest({query: OpenApiUtil.query(decodeQuery(r.rawQuery))});
  try {
    await client.callApi(params, req, new TeaUtilModule.RuntimeOptions({}));
  } catch (e) {
    if (e.code !== 'Captured') throw e;
  }
  if (!sent) throw new Error('the client sent nothing');
  return {authorization: sent.headers['Authorization'],
          contentType: sent.headers['content-type'] || null};
}

(async () => {
  const out = [];
  for (const r of captured) {
    const c = await clientAuthorization(r);
    out.push({util: utilAuthorization(r), client: c.authorization,
              clientContentType: c.contentType});
  }
  process.stdout.write(JSON.stringify(out) + '\n');
})().catch((e) => {
  console.error(e && e.stack || e);
  process.exit(1);
});
