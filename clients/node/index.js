// A client for the keyshift sidecar, with no dependencies: node:http over
// the sidecar's Unix socket, speaking its HTTP/JSON API.
//
//   import { Client } from '@keyshift/client';
//   const ks = new Client();                       // $KEYSHIFT_SOCKET
//   const sealed = await ks.encrypt('4111 1111 1111 1111', { tenant: 'acme' });
//   const opened = await ks.decrypt(sealed.ciphertext, { tenant: 'acme' });
//
// Every failure rejects with a KeyshiftError whose `code` is the gRPC code
// name the sidecar returned ('InvalidArgument', 'NotFound', 'Unavailable',
// 'PermissionDenied', 'FailedPrecondition', ...). Typings: index.d.ts.
import http from 'node:http';

/** The environment variable the injector sets in every app container. */
export const ENV_SOCKET = 'KEYSHIFT_SOCKET';
/** Where the injector mounts the socket when $KEYSHIFT_SOCKET is unset. */
export const DEFAULT_SOCKET = '/var/run/keyshift/keyshift.sock';

const CODE_NAMES = [
  'OK', 'Canceled', 'Unknown', 'InvalidArgument', 'DeadlineExceeded',
  'NotFound', 'AlreadyExists', 'PermissionDenied', 'ResourceExhausted',
  'FailedPrecondition', 'Aborted', 'OutOfRange', 'Unimplemented',
  'Internal', 'Unavailable', 'DataLoss', 'Unauthenticated',
];

// The code an error reply without a readable body stands for.
const HTTP_CODES = {
  400: 'InvalidArgument', 403: 'PermissionDenied', 404: 'NotFound',
  499: 'Canceled', 503: 'Unavailable', 504: 'DeadlineExceeded',
};

/** The gRPC code name for a numeric code, as batch item errors carry them. */
export function codeName(code) {
  return Number.isInteger(code) && code >= 0 && code < CODE_NAMES.length ? CODE_NAMES[code] : `Code(${code})`;
}

/** An error from the sidecar: `code` is the gRPC code name, `message` its message. */
export class KeyshiftError extends Error {
  constructor(code, message, { httpStatus, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'KeyshiftError';
    this.code = code;
    this.httpStatus = httpStatus;
  }
}

/** The socket could not be connected to, or broke mid-call (code 'Unavailable'). */
export class SidecarUnreachableError extends KeyshiftError {
  constructor(socketPath, cause) {
    super('Unavailable',
      `cannot reach the keyshift sidecar at ${socketPath}: ${cause.message} (is the sidecar running? $${ENV_SOCKET} names its socket)`,
      { cause });
    this.name = 'SidecarUnreachableError';
    this.socketPath = socketPath;
  }
}

function b64(bytes) {
  if (typeof bytes === 'string') return Buffer.from(bytes, 'utf8').toString('base64');
  if (bytes instanceof Uint8Array) return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
  throw new TypeError(`keyshift: want a Uint8Array or a string, got ${typeof bytes}`);
}

const unb64 = (s) => Buffer.from(s ?? '', 'base64');
const ctx = (context) => ({ ...(context ?? {}) });

const encrypted = (r) => ({ ciphertext: unb64(r.ciphertext), keyset: r.keyset ?? '', version: r.version ?? 0 });
const decrypted = (r) => ({ plaintext: unb64(r.plaintext), keyset: r.keyset ?? '', version: r.version ?? 0 });
const rewrapped = (r) => ({
  ciphertext: unb64(r.ciphertext), keyset: r.keyset ?? '', fromVersion: r.fromVersion ?? 0,
  version: r.version ?? 0, rewrapped: r.rewrapped ?? false,
});

function item(x, ok) {
  if (x.ok !== undefined) return ok(x.ok);
  return new KeyshiftError(codeName(x.error?.code ?? 2), x.error?.message ?? '');
}

/**
 * Calls one sidecar over its Unix socket. Connections are kept alive and
 * pooled, so one Client serves concurrent calls; close() releases them.
 */
export class Client {
  constructor({ socketPath, keyset = '', timeoutMs = 10_000 } = {}) {
    this.socketPath = socketPath || process.env[ENV_SOCKET] || DEFAULT_SOCKET;
    this.keyset = keyset;
    this.timeoutMs = timeoutMs;
    this.agent = new http.Agent({ keepAlive: true });
  }

  /** Closes the pooled connections; later calls open new ones. */
  close() {
    this.agent.destroy();
  }

  async encrypt(plaintext, context, { keyset } = {}) {
    return encrypted(await this.#call('POST', '/v1/encrypt', this.#encryptReq({ plaintext, context, keyset })));
  }

  async decrypt(ciphertext, context) {
    return decrypted(await this.#call('POST', '/v1/decrypt', { ciphertext: b64(ciphertext), context: ctx(context) }));
  }

  async rewrap(ciphertext, context) {
    return rewrapped(await this.#call('POST', '/v1/rewrap', { ciphertext: b64(ciphertext), context: ctx(context) }));
  }

  async encryptBatch(items) {
    const r = await this.#call('POST', '/v1/batch/encrypt', { items: items.map((i) => this.#encryptReq(i)) });
    return (r.results ?? []).map((x) => item(x, encrypted));
  }

  async decryptBatch(items) {
    const r = await this.#call('POST', '/v1/batch/decrypt', { items: items.map(decryptReq) });
    return (r.results ?? []).map((x) => item(x, decrypted));
  }

  async rewrapBatch(items) {
    const r = await this.#call('POST', '/v1/batch/rewrap', { items: items.map(decryptReq) });
    return (r.results ?? []).map((x) => item(x, rewrapped));
  }

  async status() {
    const r = await this.#call('GET', '/v1/status');
    return {
      ready: r.ready ?? false,
      keysets: (r.keysets ?? []).map((k) => ({
        name: k.name ?? '',
        kms: k.kms ?? '',
        primary: k.primary ?? 0,
        versions: (k.versions ?? []).map((v) => ({ version: v.version ?? 0, state: v.state ?? '', kekVersion: v.kekVersion ?? '' })),
        loadedAt: k.loadedAt ? new Date(k.loadedAt) : null,
        source: k.source ?? '',
        lastError: k.lastError ?? '',
      })),
    };
  }

  #encryptReq({ plaintext, context, keyset }) {
    return { keyset: keyset || this.keyset, plaintext: b64(plaintext), context: ctx(context) };
  }

  async #call(method, path, body) {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    try {
      return await this.#once(method, path, data);
    } catch (e) {
      // A kept-alive connection the sidecar has closed fails on first
      // use: try once more on a new one (every call is safe to repeat).
      if (e instanceof Retry) return this.#once(method, path, data, true);
      throw e;
    }
  }

  #once(method, path, data, retried = false) {
    return new Promise((resolve, reject) => {
      const headers = data === undefined ? {} : { 'Content-Type': 'application/json', 'Content-Length': data.length };
      const req = http.request({ socketPath: this.socketPath, path, method, headers, agent: this.agent, host: 'keyshift' }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('error', (err) => reject(new SidecarUnreachableError(this.socketPath, err)));
        res.on('end', () => {
          try {
            resolve(reply(res.statusCode, Buffer.concat(chunks)));
          } catch (err) {
            reject(err);
          }
        });
      });
      req.setTimeout(this.timeoutMs, () => {
        req.destroy(new KeyshiftError('DeadlineExceeded', `no reply from the keyshift sidecar within ${this.timeoutMs} ms`));
      });
      req.on('error', (err) => {
        if (err instanceof KeyshiftError) reject(err);
        else if (req.reusedSocket && !retried) reject(new Retry());
        else reject(new SidecarUnreachableError(this.socketPath, err));
      });
      req.end(data);
    });
  }
}

class Retry extends Error {}

function decryptReq({ ciphertext, context }) {
  return { ciphertext: b64(ciphertext), context: ctx(context) };
}

function reply(status, raw) {
  let parsed;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch {
    parsed = undefined;
  }
  if (status === 200) {
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new KeyshiftError('Internal', "the sidecar's reply is not a JSON object", { httpStatus: status });
    return parsed;
  }
  if (parsed && typeof parsed.code === 'string') {
    throw new KeyshiftError(parsed.code, String(parsed.message ?? ''), { httpStatus: status });
  }
  const text = raw.subarray(0, 200).toString('utf8').trim();
  throw new KeyshiftError(HTTP_CODES[status] ?? 'Unknown', `HTTP ${status}: ${text}`, { httpStatus: status });
}
