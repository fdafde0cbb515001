// Acceptance test for tollgate's Vercel Blob client tokens (lib/src/presign/blob.rs).
//
// tests/blob_token.rs writes BLOB_TOKENS_FILE: a JSON list of
//   {token, rw_token, pathname, allowedContentTypes, maximumSizeInBytes,
//    validUntil, forged?}
// where `token` came from tollgate and `forged: true` marks a token that
// tollgate signed with a different read-write token than `rw_token`.
//
// Each genuine token must be exactly what @vercel/blob itself issues for the
// same options, decode with the package's getPayloadFromClientToken, and
// carry a valid HMAC under `rw_token`. Each forged one must fail that check.

import assert from 'node:assert/strict';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import {
  generateClientTokenFromReadWriteToken,
  getPayloadFromClientToken,
  handleUpload,
} from '@vercel/blob/client';

const file = process.env.BLOB_TOKENS_FILE;
assert.ok(file, 'BLOB_TOKENS_FILE must name the JSON file of tokens to check');
const cases = JSON.parse(readFileSync(file, 'utf8'));
assert.ok(cases.length > 0, 'BLOB_TOKENS_FILE holds no tokens');

// The store id is the fourth `_`-separated field, as parseStoreIdFromReadWriteToken reads it.
const storeIdOf = (rwToken) => rwToken.split('_')[3];

// Checks a client token the way the issuer of `rwToken` can: the store id, then
// HMAC-SHA256 (hex) over the base64 payload text, keyed with the whole
// read-write token, as the package's signPayload computes it. Returns the payload.
function verify(clientToken, rwToken) {
  const prefix = `vercel_blob_client_${storeIdOf(rwToken)}_`;
  if (!clientToken.startsWith(prefix)) throw new Error('wrong store id or prefix');
  const inner = Buffer.from(clientToken.slice(prefix.length), 'base64').toString();
  const [signature, encodedPayload, ...extra] = inner.split('.');
  if (extra.length || !signature || !encodedPayload) throw new Error('not <mac>.<payload>');
  const expected = createHmac('sha256', rwToken).update(encodedPayload).digest('hex');
  const given = Buffer.from(signature);
  if (given.length !== expected.length || !timingSafeEqual(given, Buffer.from(expected))) {
    throw new Error('bad signature');
  }
  return getPayloadFromClientToken(clientToken);
}

// The options tollgate puts in every token; addRandomSuffix is pinned to false.
const optionsOf = (c) => ({
  allowedContentTypes: c.allowedContentTypes,
  maximumSizeInBytes: c.maximumSizeInBytes,
  validUntil: c.validUntil,
  addRandomSuffix: false,
});

const genuine = cases.filter((c) => !c.forged);
const forged = cases.filter((c) => c.forged);
assert.ok(genuine.length > 0 && forged.length > 0, 'need genuine and forged tokens');

for (const c of genuine) {
  test(`tollgate's token for ${JSON.stringify(c.pathname)} is what @vercel/blob issues`, async () => {
    const ours = await generateClientTokenFromReadWriteToken({
      token: c.rw_token,
      ...optionsOf(c),
      pathname: c.pathname,
    });
    assert.equal(c.token, ours);
  });

  test(`tollgate's token for ${JSON.stringify(c.pathname)} is what handleUpload issues`, async () => {
    const result = await handleUpload({
      token: c.rw_token,
      request: { headers: {}, url: '/api/upload' },
      body: {
        type: 'blob.generate-client-token',
        payload: { pathname: c.pathname, clientPayload: null, multipart: false },
      },
      onBeforeGenerateToken: async () => optionsOf(c),
    });
    assert.equal(result.type, 'blob.generate-client-token');
    assert.equal(c.token, result.clientToken);
  });

  test(`tollgate's token for ${JSON.stringify(c.pathname)} decodes and verifies`, () => {
    const payload = verify(c.token, c.rw_token);
    assert.deepEqual(payload, { ...optionsOf(c), pathname: c.pathname });
    assert.deepEqual(getPayloadFromClientToken(c.token), payload);
    assert.ok(payload.validUntil > Date.now(), 'the token has already expired');
  });
}

for (const c of forged) {
  test(`a token for ${JSON.stringify(c.pathname)} signed with another read-write token is refused`, () => {
    // It still decodes: only the signature gives it away.
    assert.equal(getPayloadFromClientToken(c.token).pathname, c.pathname);
    assert.throws(() => verify(c.token, c.rw_token), /bad signature/);
  });
}

test('a genuine token with its payload altered is refused', () => {
  const c = genuine[0];
  const prefix = `vercel_blob_client_${storeIdOf(c.rw_token)}_`;
  const [signature, encodedPayload] = Buffer.from(c.token.slice(prefix.length), 'base64')
    .toString()
    .split('.');
  const payload = JSON.parse(Buffer.from(encodedPayload, 'base64').toString());
  payload.maximumSizeInBytes += 1;
  const altered = Buffer.from(JSON.stringify(payload)).toString('base64');
  const tampered = prefix + Buffer.from(`${signature}.${altered}`).toString('base64');
  assert.throws(() => verify(tampered, c.rw_token), /bad signature/);
});
