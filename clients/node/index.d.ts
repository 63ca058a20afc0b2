// Typings for @keyshift/client (index.js), written by hand.

/** The environment variable the injector sets in every app container. */
export declare const ENV_SOCKET: 'KEYSHIFT_SOCKET';
/** Where the injector mounts the socket when $KEYSHIFT_SOCKET is unset. */
export declare const DEFAULT_SOCKET: '/var/run/keyshift/keyshift.sock';

/** The gRPC status code names the sidecar returns. */
export type Code =
  | 'OK' | 'Canceled' | 'Unknown' | 'InvalidArgument' | 'DeadlineExceeded'
  | 'NotFound' | 'AlreadyExists' | 'PermissionDenied' | 'ResourceExhausted'
  | 'FailedPrecondition' | 'Aborted' | 'OutOfRange' | 'Unimplemented'
  | 'Internal' | 'Unavailable' | 'DataLoss' | 'Unauthenticated';

/** The gRPC code name for a numeric code ("Code(42)" if unknown). */
export declare function codeName(code: number): Code | `Code(${number})`;

/** An error from the sidecar: the gRPC code name and its message. */
export declare class KeyshiftError extends Error {
  constructor(code: string, message: string, options?: { httpStatus?: number; cause?: unknown });
  readonly name: string;
  /** 'InvalidArgument', 'NotFound', 'FailedPrecondition', 'Unavailable', 'PermissionDenied', ... */
  readonly code: Code | string;
  /** The reply's HTTP status; undefined for batch items and transport failures. */
  readonly httpStatus: number | undefined;
}

/** The socket could not be connected to, or broke mid-call; code is 'Unavailable'. */
export declare class SidecarUnreachableError extends KeyshiftError {
  constructor(socketPath: string, cause: Error);
  readonly socketPath: string;
}

/** Context bound to a ciphertext: decrypt must be given the same map. */
export type Context = Readonly<Record<string, string>>;

/** Bytes, or a string sent as UTF-8. */
export type Bytes = Uint8Array | string;

export interface Encrypted {
  ciphertext: Buffer;
  keyset: string;
  /** The key version that sealed it (the primary). */
  version: number;
}

export interface Decrypted {
  plaintext: Buffer;
  keyset: string;
  /** The key version it was sealed under. */
  version: number;
}

export interface Rewrapped {
  ciphertext: Buffer;
  keyset: string;
  fromVersion: number;
  version: number;
  /** false when the input already was under the primary (returned unchanged). */
  rewrapped: boolean;
}

export interface EncryptItem {
  plaintext: Bytes;
  context?: Context;
  keyset?: string;
}

export interface DecryptItem {
  ciphertext: Uint8Array;
  context?: Context;
}

export interface VersionStatus {
  version: number;
  /** pending, primary, decrypt-only, revoked, disabled or destroyed. */
  state: string;
  kekVersion: string;
}

export interface KeysetStatus {
  name: string;
  kms: string;
  primary: number;
  versions: VersionStatus[];
  loadedAt: Date | null;
  /** Where the loaded document came from ("file:/path", "xds", ...). */
  source: string;
  /** Why the newest document could not be loaded, if it could not. */
  lastError: string;
}

export interface Status {
  /** true when every configured keyset is loaded with a primary. */
  ready: boolean;
  keysets: KeysetStatus[];
}

export interface ClientOptions {
  /** Defaults to $KEYSHIFT_SOCKET, then DEFAULT_SOCKET. */
  socketPath?: string;
  /** The keyset encrypt uses when a call names none; may be empty when the sidecar serves one. */
  keyset?: string;
  /** Per-call timeout; a call that takes longer fails with 'DeadlineExceeded'. Default 10000. */
  timeoutMs?: number;
}

/** Calls one sidecar over its Unix socket; connections are kept alive and pooled. */
export declare class Client {
  constructor(options?: ClientOptions);
  readonly socketPath: string;
  readonly keyset: string;
  readonly timeoutMs: number;
  /** Closes the pooled connections; later calls open new ones. */
  close(): void;
  /** Seals plaintext under the keyset's primary version, binding context. */
  encrypt(plaintext: Bytes, context?: Context, options?: { keyset?: string }): Promise<Encrypted>;
  /** Opens a ciphertext; context must equal the one given to encrypt. */
  decrypt(ciphertext: Uint8Array, context?: Context): Promise<Decrypted>;
  /** Re-seals a ciphertext under the primary version without returning the plaintext. */
  rewrap(ciphertext: Uint8Array, context?: Context): Promise<Rewrapped>;
  /** Up to 1000 items; each result is the item's value or its KeyshiftError. */
  encryptBatch(items: readonly EncryptItem[]): Promise<Array<Encrypted | KeyshiftError>>;
  decryptBatch(items: readonly DecryptItem[]): Promise<Array<Decrypted | KeyshiftError>>;
  rewrapBatch(items: readonly DecryptItem[]): Promise<Array<Rewrapped | KeyshiftError>>;
  /** The sidecar's loaded keysets and versions. It never returns keys. */
  status(): Promise<Status>;
}
