// Example: an app that keeps encrypting and decrypting through key rotations.
//
//   node clients/node/example/app.js roundtrip --rounds 200
//   node clients/node/example/app.js errors
//
// roundtrip seals a record per round with the tenant and record id bound as
// context, opens it again, re-opens records sealed in the first rounds, and
// at the end rewraps those early records under the current primary and
// checks the batch calls. It prints a progress line every 10 rounds and a
// JSON summary, and exits 1 if anything failed or fewer than
// --want-versions key versions were seen (a rotation that never arrived).
//
// errors shows how each kind of mistake comes back: one JSON line with the
// error code and message of each case.
//
// Plaintexts here are made-up records; a real app never prints its own.
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, KeyshiftError, ENV_SOCKET, DEFAULT_SOCKET } from '../index.js';

const EARLY = 10; // records kept from the first rounds and re-opened throughout
const OLD_EVERY = 5; // a kept record is re-opened every OLD_EVERY rounds

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

async function roundtrip(ks, { rounds, wantVersions, pauseMs, timeoutS }) {
  const byVersion = new Map();
  const oldByVersion = new Map();
  const failures = [];
  const early = [];
  let tripsOk = 0, oldOk = 0, failed = 0;
  const fail = (what, err) => {
    failed++;
    if (failures.length < 20) failures.push(`${what}: ${err instanceof KeyshiftError ? `${err.code}: ${err.message}` : err}`);
  };
  const bump = (m, k) => m.set(k, (m.get(k) ?? 0) + 1);

  const primaryBefore = (await ks.status()).keysets[0].primary;
  const deadline = Date.now() + timeoutS * 1000;
  let i = 0;
  while (i < rounds || byVersion.size < wantVersions) {
    if (Date.now() > deadline) {
      fail('timeout', `${i} rounds in ${timeoutS}s, saw key versions [${[...byVersion.keys()]}], want ${wantVersions}`);
      break;
    }
    const pt = Buffer.from(`record ${i}`);
    const ctx = { tenant: 'acme', record: String(i) };
    try {
      const sealed = await ks.encrypt(pt, ctx);
      const opened = await ks.decrypt(sealed.ciphertext, ctx);
      if (!opened.plaintext.equals(pt) || opened.version !== sealed.version) {
        fail(`round ${i}`, 'decrypt returned another plaintext or version');
      } else {
        tripsOk++;
        bump(byVersion, sealed.version);
        if (early.length < EARLY) early.push({ ct: sealed.ciphertext, ctx, version: sealed.version, pt });
      }
    } catch (e) {
      if (!(e instanceof KeyshiftError)) throw e;
      fail(`round ${i}`, e);
    }
    if (i % OLD_EVERY === 0 && early.length > 0) {
      const rec = early[Math.floor(i / OLD_EVERY) % early.length];
      try {
        if (!(await ks.decrypt(rec.ct, rec.ctx)).plaintext.equals(rec.pt)) {
          fail(`round ${i} early record`, 'another plaintext');
        } else {
          oldOk++;
          bump(oldByVersion, rec.version);
        }
      } catch (e) {
        if (!(e instanceof KeyshiftError)) throw e;
        fail(`round ${i} early record`, e);
      }
    }
    i++;
    if (i % 10 === 0) out({ event: 'progress', round: i, versions: [...byVersion.keys()].sort((a, b) => a - b) });
    await sleep(pauseMs);
  }

  const primaryAfter = (await ks.status()).keysets[0].primary;
  let rewrapped = 0, batchOk = 0;
  try {
    for (const rec of early) {
      const r = await ks.rewrap(rec.ct, rec.ctx);
      const moved = r.fromVersion === rec.version && r.version === primaryAfter && r.rewrapped === (rec.version !== primaryAfter);
      if (!moved || !(await ks.decrypt(r.ciphertext, rec.ctx)).plaintext.equals(rec.pt)) {
        fail('rewrap', `v${rec.version} came back as v${r.fromVersion}->v${r.version} rewrapped=${r.rewrapped}`);
      } else if (r.rewrapped) {
        rewrapped++;
      }
    }
    const results = await ks.decryptBatch(early.map((r) => ({ ciphertext: r.ct, context: r.ctx })));
    results.forEach((res, n) => {
      if (res instanceof KeyshiftError) fail('decryptBatch', res);
      else if (res.plaintext.equals(early[n].pt)) batchOk++;
    });
    const items = [0, 1, 2].map((n) => ({ plaintext: Buffer.from(`batch ${n}`), context: { n: String(n) } }));
    const sealed = await ks.encryptBatch(items);
    const opened = await ks.decryptBatch(sealed.map((s, n) =>
      (s instanceof KeyshiftError ? { ciphertext: Buffer.alloc(0) } : { ciphertext: s.ciphertext, context: items[n].context })));
    opened.forEach((res, n) => {
      if (res instanceof KeyshiftError) fail('encryptBatch/decryptBatch', res);
      else if (res.plaintext.equals(items[n].plaintext) && res.version === primaryAfter) batchOk++;
    });
  } catch (e) {
    if (!(e instanceof KeyshiftError)) throw e;
    fail('after the rounds', e);
  }

  const obj = (m) => Object.fromEntries([...m.entries()].sort((a, b) => a[0] - b[0]).map(([k, v]) => [String(k), v]));
  out({
    event: 'summary', language: 'node', rounds: i, round_trips_ok: tripsOk,
    failed, failures, by_version: obj(byVersion),
    old_decrypted: oldOk, old_by_version: obj(oldByVersion),
    rewrapped, batch_ok: batchOk, primary_before: primaryBefore, primary_after: primaryAfter,
  });
  return failed === 0 && byVersion.size >= wantVersions ? 0 : 1;
}

// oldCiphertext, sealed earlier with context tenant=acme, is decrypted and
// rewrapped: under a revoked key version decrypt is refused and rewrap works.
async function errors(ks, oldCiphertext) {
  const cases = {};
  const ctx = { tenant: 'acme' };
  const kase = async (name, call) => {
    try {
      await call();
      cases[name] = { code: 'OK', message: '' };
    } catch (e) {
      if (!(e instanceof KeyshiftError)) throw e;
      cases[name] = { code: e.code, message: e.message, http_status: e.httpStatus ?? null };
    }
  };
  await kase('tampered', async () => {
    const ct = (await ks.encrypt('card 4111', ctx)).ciphertext;
    ct[ct.length - 1] ^= 1;
    return ks.decrypt(ct, ctx);
  });
  await kase('wrong_context', async () => ks.decrypt((await ks.encrypt('card 4111', ctx)).ciphertext, { tenant: 'globex' }));
  await kase('malformed', () => ks.decrypt(Uint8Array.of(1, 2, 3), ctx));
  await kase('unknown_keyset', () => ks.encrypt('x', ctx, { keyset: 'billing' }));
  await kase('bad_context', () => ks.encrypt('x', { '': 'empty key' }));
  await kase('oversized', () => ks.encrypt(Buffer.alloc((4 << 20) + 1), ctx));
  await kase('batch_item', async () => {
    const good = (await ks.encrypt('card 4111', ctx)).ciphertext;
    const res = await ks.decryptBatch([{ ciphertext: good, context: ctx }, { ciphertext: good, context: { tenant: 'globex' } }]);
    for (const r of res) if (r instanceof KeyshiftError) throw r;
  });
  await kase('no_socket', async () => {
    const missing = new Client({ socketPath: ks.socketPath + '.missing' });
    try {
      await missing.status();
    } finally {
      missing.close();
    }
  });
  if (oldCiphertext) {
    await kase('old_decrypt', () => ks.decrypt(oldCiphertext, ctx));
    await kase('old_rewrap', async () => ks.decrypt((await ks.rewrap(oldCiphertext, ctx)).ciphertext, ctx));
  }
  out({ event: 'errors', language: 'node', cases });
  return 0;
}

async function main() {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: {
      rounds: { type: 'string', default: '200' },
      'want-versions': { type: 'string', default: '1' },
      'pause-ms': { type: 'string', default: '5' },
      'timeout-s': { type: 'string', default: '60' },
      'old-ciphertext': { type: 'string' },
    },
  });
  const num = (name) => {
    const n = Number(values[name]);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name}: want a number >= 0, got ${JSON.stringify(values[name])}`);
    return n;
  };
  const cmd = positionals[0];
  if (cmd !== 'roundtrip' && cmd !== 'errors') {
    process.stderr.write('usage: app.js roundtrip [--rounds N] [--want-versions K] [--pause-ms P] [--timeout-s T] | app.js errors [--old-ciphertext B64]\n');
    return 2;
  }
  process.stderr.write(`keyshift socket: ${process.env[ENV_SOCKET] || DEFAULT_SOCKET}\n`);
  const ks = new Client();
  try {
    if (cmd === 'roundtrip') {
      return await roundtrip(ks, { rounds: num('rounds'), wantVersions: num('want-versions'), pauseMs: num('pause-ms'), timeoutS: num('timeout-s') });
    }
    const old = values['old-ciphertext'];
    return await errors(ks, old === undefined ? undefined : Buffer.from(old, 'base64'));
  } catch (e) {
    if (!(e instanceof KeyshiftError)) throw e;
    process.stderr.write(`keyshift: ${e.code}: ${e.message}\n`);
    return 1;
  } finally {
    ks.close();
  }
}

process.exitCode = await main();
