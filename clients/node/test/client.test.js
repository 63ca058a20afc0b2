// Tests of the keyshift client against a real sidecar at $KEYSHIFT_SOCKET.
// test/clients (go test ./test/clients) starts the sidecar, with keyset
// "notes" at v1, and runs them:
//
//   KEYSHIFT_SOCKET=... node --test clients/node/test/client.test.js
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import {
  Client, KeyshiftError, SidecarUnreachableError, codeName, DEFAULT_SOCKET, ENV_SOCKET,
} from '../index.js';

const SOCKET = process.env[ENV_SOCKET];
if (!SOCKET) throw new Error('KEYSHIFT_SOCKET is not set: run these through `go test ./test/clients`, which starts a sidecar');

describe('without a sidecar', () => {
  test('socket path: option, then $KEYSHIFT_SOCKET, then the default', () => {
    const saved = process.env[ENV_SOCKET];
    try {
      delete process.env[ENV_SOCKET];
      assert.equal(new Client().socketPath, '/var/run/keyshift/keyshift.sock');
      assert.equal(DEFAULT_SOCKET, '/var/run/keyshift/keyshift.sock');
      process.env[ENV_SOCKET] = '/run/a.sock';
      assert.equal(new Client().socketPath, '/run/a.sock');
      assert.equal(new Client({ socketPath: '/run/b.sock' }).socketPath, '/run/b.sock');
    } finally {
      process.env[ENV_SOCKET] = saved;
    }
  });

  test('code names', () => {
    assert.deepEqual([0, 3, 5, 7, 9, 14, 16, 17].map(codeName),
      ['OK', 'InvalidArgument', 'NotFound', 'PermissionDenied', 'FailedPrecondition', 'Unavailable', 'Unauthenticated', 'Code(17)']);
  });

  test('not bytes', async () => {
    await assert.rejects(new Client({ socketPath: '/nonexistent' }).encrypt(42), TypeError);
  });

  // A server on a socket of our own that answers without the sidecar's
  // JSON error body (a proxy, a crash page) and with a slow reply.
  describe('replies the sidecar would not send', () => {
    let dir, server, sock;
    before(async () => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ksn'));
      sock = path.join(dir, 's.sock');
      server = http.createServer((req, res) => {
        if (req.url === '/v1/status') {
          res.writeHead(502, { 'Content-Type': 'text/html' }).end('<html>bad gateway</html>');
        } else if (req.url === '/v1/encrypt') {
          res.writeHead(503).end();
        } else if (req.url === '/v1/decrypt') {
          res.writeHead(200).end('[1]');
        } else {
          setTimeout(() => res.writeHead(200).end('{}'), 2000); // slow
        }
      });
      await new Promise((resolve) => server.listen(sock, resolve));
    });
    after(async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      fs.rmSync(dir, { recursive: true, force: true });
    });

    test('a body that is not an error object', async () => {
      const c = new Client({ socketPath: sock });
      try {
        await assert.rejects(c.status(), { name: 'KeyshiftError', code: 'Unknown', message: 'HTTP 502: <html>bad gateway</html>', httpStatus: 502 });
        await assert.rejects(c.encrypt('x'), { code: 'Unavailable', message: 'HTTP 503: ', httpStatus: 503 });
        await assert.rejects(c.decrypt(Buffer.from('x')), { code: 'Internal', httpStatus: 200 });
      } finally {
        c.close();
      }
    });

    test('timeout', async () => {
      const c = new Client({ socketPath: sock, timeoutMs: 200 });
      try {
        await assert.rejects(c.rewrap(Buffer.from('x')), { code: 'DeadlineExceeded', message: 'no reply from the keyshift sidecar within 200 ms' });
      } finally {
        c.close();
      }
    });
  });
});

describe('against the sidecar', () => {
  let ks;
  before(() => { ks = new Client(); });
  after(() => ks.close());

  test('status', async () => {
    const st = await ks.status();
    assert.equal(st.ready, true);
    assert.deepEqual(st.keysets.map((k) => [k.name, k.primary, k.versions.map((v) => [v.version, v.state])]), [['notes', 1, [[1, 'primary']]]]);
    const k = st.keysets[0];
    assert.match(k.kms, /^local:\/\//);
    assert.match(k.source, /^file:/);
    assert.equal(k.lastError, '');
    assert.ok(k.loadedAt instanceof Date && !Number.isNaN(k.loadedAt.getTime()));
  });

  test('round trips: binary, empty, UTF-8 strings and context', async () => {
    for (const pt of [Buffer.alloc(0), Buffer.from([...Array(256).keys()]), Buffer.from('naïve ✓')]) {
      const sealed = await ks.encrypt(pt, { tenant: 'acme', ключ: 'значение' });
      assert.deepEqual([sealed.keyset, sealed.version], ['notes', 1]);
      const opened = await ks.decrypt(sealed.ciphertext, { ключ: 'значение', tenant: 'acme' });
      assert.deepEqual([opened.plaintext, opened.keyset, opened.version], [pt, 'notes', 1]);
    }
    const s = await ks.encrypt('a string is UTF-8');
    assert.equal((await ks.decrypt(s.ciphertext)).plaintext.toString(), 'a string is UTF-8');
    const u8 = new Uint8Array([9, 8, 7, 6]).subarray(1, 3); // a view, not a whole buffer
    assert.deepEqual([...(await ks.decrypt((await ks.encrypt(u8)).ciphertext)).plaintext], [8, 7]);
  });

  test('rewrap under the primary comes back unchanged', async () => {
    const sealed = await ks.encrypt('x', { a: 'b' });
    const r = await ks.rewrap(sealed.ciphertext, { a: 'b' });
    assert.deepEqual([r.ciphertext, r.fromVersion, r.version, r.rewrapped], [sealed.ciphertext, 1, 1, false]);
  });

  test('batches: each item succeeds or fails alone', async () => {
    const enc = await ks.encryptBatch([{ plaintext: 'a', context: { n: '1' } }, { plaintext: 'b', keyset: 'billing' }]);
    assert.ok(!(enc[0] instanceof KeyshiftError));
    assert.ok(enc[1] instanceof KeyshiftError);
    assert.deepEqual([enc[1].code, enc[1].httpStatus], ['NotFound', undefined]);
    const dec = await ks.decryptBatch([{ ciphertext: enc[0].ciphertext, context: { n: '1' } }, { ciphertext: Buffer.from([1]) }]);
    assert.equal(dec[0].plaintext.toString(), 'a');
    assert.equal(dec[1].code, 'InvalidArgument');
    const rw = await ks.rewrapBatch([{ ciphertext: enc[0].ciphertext, context: { n: '1' } }]);
    assert.equal(rw[0].rewrapped, false);
    assert.deepEqual(await ks.encryptBatch([]), []);
    await assert.rejects(ks.decryptBatch(Array(1001).fill({ ciphertext: Buffer.from('x') })), { code: 'InvalidArgument', httpStatus: 400 });
  });

  test('concurrent calls share the client', async () => {
    const all = await Promise.all([...Array(50).keys()].map(async (n) => {
      const pt = Buffer.from(`record ${n}`);
      return (await ks.decrypt((await ks.encrypt(pt)).ciphertext)).plaintext.equals(pt);
    }));
    assert.ok(all.every(Boolean));
  });

  test('a missing socket is a SidecarUnreachableError', async () => {
    const c = new Client({ socketPath: SOCKET + '.gone' });
    try {
      const err = await c.encrypt('x').then(() => assert.fail('no error'), (e) => e);
      assert.ok(err instanceof SidecarUnreachableError && err instanceof KeyshiftError);
      assert.equal(err.code, 'Unavailable');
      assert.equal(err.socketPath, SOCKET + '.gone');
      assert.equal(err.cause.code, 'ENOENT');
      assert.match(err.message, /^cannot reach the keyshift sidecar at .*\.gone: connect ENOENT/);
    } finally {
      c.close();
    }
  });
});
