"""A client for the keyshift sidecar, standard library only.

The sidecar serves its API as HTTP/JSON on a Unix socket inside the pod
(the socket's path is in $KEYSHIFT_SOCKET). The application sends
plaintext and gets a self-describing ciphertext back; it never holds a
key, and ciphertexts keep opening after the key rotates::

    import keyshift

    with keyshift.Client() as ks:              # $KEYSHIFT_SOCKET
        sealed = ks.encrypt(b"4111 1111 1111 1111", {"tenant": "acme"})
        opened = ks.decrypt(sealed.ciphertext, {"tenant": "acme"})

Every failure is a KeyshiftError carrying the gRPC code name the sidecar
returned ("InvalidArgument", "NotFound", "FailedPrecondition",
"Unavailable", "PermissionDenied", ...) and its message. A sidecar that
cannot be reached raises SidecarUnreachableError (code "Unavailable").
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

__all__ = [
    "DEFAULT_SOCKET",
    "ENV_SOCKET",
    "Client",
    "Decrypted",
    "DecryptItem",
    "Encrypted",
    "EncryptItem",
    "KeysetStatus",
    "KeyshiftError",
    "Rewrapped",
    "SidecarUnreachableError",
    "Status",
    "VersionStatus",
    "code_name",
]

ENV_SOCKET = "KEYSHIFT_SOCKET"
"""The environment variable the injector sets in every app container."""

DEFAULT_SOCKET = "/var/run/keyshift/keyshift.sock"
"""Where the injector mounts the socket when $KEYSHIFT_SOCKET is unset."""

# gRPC status code names by number, as batch item errors carry them.
_CODE_NAMES = (
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded",
    "NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted",
    "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented",
    "Internal", "Unavailable", "DataLoss", "Unauthenticated",
)

# The code an error reply without a readable body stands for.
_HTTP_CODES = {
    400: "InvalidArgument", 403: "PermissionDenied", 404: "NotFound",
    499: "Canceled", 503: "Unavailable", 504: "DeadlineExceeded",
}


def code_name(code: int) -> str:
    """The gRPC code name for a numeric code ("Code(42)" if unknown)."""
    if 0 <= code < len(_CODE_NAMES):
        return _CODE_NAMES[code]
    return f"Code({code})"


class KeyshiftError(Exception):
    """An error from the sidecar: the gRPC code name and its message.

    ``http_status`` is the HTTP status of the reply, or None when the error
    did not come from a reply (a batch item, an unreachable sidecar).
    """

    def __init__(self, code: str, message: str, http_status: Optional[int] = None) -> None:
        super().__init__(f"keyshift: {code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status


class SidecarUnreachableError(KeyshiftError):
    """The socket could not be connected to or broke mid-call.

    Its code is "Unavailable", as gRPC reports a transport failure; the
    underlying OSError is its ``__cause__``.
    """

    def __init__(self, path: str, cause: BaseException) -> None:
        super().__init__(
            "Unavailable",
            f"cannot reach the keyshift sidecar at {path}: {cause} "
            f"(is the sidecar running? ${ENV_SOCKET} names its socket)",
        )
        self.path = path


@dataclass(frozen=True)
class Encrypted:
    """A ciphertext and the keyset version that sealed it."""

    ciphertext: bytes
    keyset: str
    version: int


@dataclass(frozen=True)
class Decrypted:
    """A plaintext and the keyset version it was sealed under."""

    plaintext: bytes = field(repr=False)  # never in logs
    keyset: str
    version: int


@dataclass(frozen=True)
class Rewrapped:
    """A ciphertext re-sealed under the primary version.

    ``rewrapped`` is False when the input already was under the primary (the
    ciphertext is then returned unchanged).
    """

    ciphertext: bytes
    keyset: str
    from_version: int
    version: int
    rewrapped: bool


@dataclass(frozen=True)
class EncryptItem:
    """One item of encrypt_batch."""

    plaintext: bytes = field(repr=False)
    context: Optional[Mapping[str, str]] = None
    keyset: str = ""


@dataclass(frozen=True)
class DecryptItem:
    """One item of decrypt_batch or rewrap_batch."""

    ciphertext: bytes
    context: Optional[Mapping[str, str]] = None


@dataclass(frozen=True)
class VersionStatus:
    """One loaded key version: its number, state and the KEK version that wraps it."""

    version: int
    state: str
    kek_version: str


@dataclass(frozen=True)
class KeysetStatus:
    """One keyset as the sidecar holds it. It never carries key material."""

    name: str
    kms: str
    primary: int
    versions: Sequence[VersionStatus]
    loaded_at: Optional[str]
    source: str
    last_error: str


@dataclass(frozen=True)
class Status:
    """The sidecar's keysets; ready is True when each has a primary."""

    ready: bool
    keysets: Sequence[KeysetStatus]


class _UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTPConnection that connects to a Unix socket instead of TCP."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("keyshift", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout)
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


def _b64(b: bytes) -> str:
    if not isinstance(b, (bytes, bytearray, memoryview)):
        raise TypeError(f"keyshift: want bytes, got {type(b).__name__}")
    return base64.b64encode(bytes(b)).decode("ascii")


def _unb64(d: Mapping[str, Any], key: str) -> bytes:
    return base64.b64decode(d.get(key, ""), validate=True)


def _ctx(context: Optional[Mapping[str, str]]) -> dict[str, str]:
    return dict(context) if context else {}


class Client:
    """Calls one sidecar over its Unix socket.

    One kept-alive connection, used under a lock: a Client is safe to share
    between threads, and calls from several threads take turns (use one
    Client per thread for parallel calls). A connection the sidecar closed
    (it restarted, or dropped an idle connection) is replaced once, on the
    next call; every call is safe to repeat.
    """

    def __init__(self, socket_path: Optional[str] = None, *, keyset: str = "", timeout: float = 10.0) -> None:
        """socket_path defaults to $KEYSHIFT_SOCKET, then DEFAULT_SOCKET.

        keyset is the keyset encrypt uses when a call names none; it may be
        empty when the sidecar serves exactly one.
        """
        self.socket_path = socket_path or os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET
        self.keyset = keyset
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: Optional[_UnixHTTPConnection] = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection; a later call opens a new one."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def encrypt(self, plaintext: bytes, context: Optional[Mapping[str, str]] = None, *, keyset: Optional[str] = None) -> Encrypted:
        """Seals plaintext under the keyset's primary version, binding context."""
        r = self._call("POST", "/v1/encrypt", self._encrypt_req(EncryptItem(plaintext, context, keyset or "")))
        return _encrypted(r)

    def decrypt(self, ciphertext: bytes, context: Optional[Mapping[str, str]] = None) -> Decrypted:
        """Opens a ciphertext; context must equal the one given to encrypt."""
        r = self._call("POST", "/v1/decrypt", {"ciphertext": _b64(ciphertext), "context": _ctx(context)})
        return _decrypted(r)

    def rewrap(self, ciphertext: bytes, context: Optional[Mapping[str, str]] = None) -> Rewrapped:
        """Re-seals a ciphertext under the primary version without returning the plaintext."""
        r = self._call("POST", "/v1/rewrap", {"ciphertext": _b64(ciphertext), "context": _ctx(context)})
        return _rewrapped(r)

    def encrypt_batch(self, items: Sequence[EncryptItem]) -> list[Union[Encrypted, KeyshiftError]]:
        """Encrypts up to 1000 items; each result is an Encrypted or the item's KeyshiftError."""
        r = self._call("POST", "/v1/batch/encrypt", {"items": [self._encrypt_req(i) for i in items]})
        return [_item(x, _encrypted) for x in r.get("results", [])]

    def decrypt_batch(self, items: Sequence[DecryptItem]) -> list[Union[Decrypted, KeyshiftError]]:
        """Decrypts up to 1000 items; each result is a Decrypted or the item's KeyshiftError."""
        r = self._call("POST", "/v1/batch/decrypt", {"items": [_decrypt_req(i) for i in items]})
        return [_item(x, _decrypted) for x in r.get("results", [])]

    def rewrap_batch(self, items: Sequence[DecryptItem]) -> list[Union[Rewrapped, KeyshiftError]]:
        """Rewraps up to 1000 items; each result is a Rewrapped or the item's KeyshiftError."""
        r = self._call("POST", "/v1/batch/rewrap", {"items": [_decrypt_req(i) for i in items]})
        return [_item(x, _rewrapped) for x in r.get("results", [])]

    def status(self) -> Status:
        """The sidecar's loaded keysets and versions."""
        r = self._call("GET", "/v1/status", None)
        return Status(
            ready=bool(r.get("ready", False)),
            keysets=[
                KeysetStatus(
                    name=k.get("name", ""),
                    kms=k.get("kms", ""),
                    primary=int(k.get("primary", 0)),
                    versions=[
                        VersionStatus(int(v.get("version", 0)), v.get("state", ""), v.get("kekVersion", ""))
                        for v in k.get("versions", [])
                    ],
                    loaded_at=k.get("loadedAt"),
                    source=k.get("source", ""),
                    last_error=k.get("lastError", ""),
                )
                for k in r.get("keysets", [])
            ],
        )

    def _encrypt_req(self, i: EncryptItem) -> dict[str, Any]:
        return {"keyset": i.keyset or self.keyset, "plaintext": _b64(i.plaintext), "context": _ctx(i.context)}

    def _call(self, method: str, path: str, body: Optional[Mapping[str, Any]]) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                if self._conn is None:
                    self._conn = _UnixHTTPConnection(self.socket_path, self.timeout)
                try:
                    try:
                        self._conn.request(method, path, body=data, headers=headers)
                    except (BrokenPipeError, ConnectionResetError):
                        # The sidecar may answer and close before reading all
                        # of a large body (a refusal, a body over its limit):
                        # its reply is still there to read. If it is not,
                        # getresponse fails and that is the error.
                        pass
                    resp = self._conn.getresponse()
                    raw = resp.read()
                    if resp.will_close:
                        self._drop()
                    break
                except TimeoutError as e:
                    self._drop()
                    raise KeyshiftError("DeadlineExceeded", f"no reply from the keyshift sidecar within {self.timeout}s") from e
                except (OSError, http.client.HTTPException) as e:
                    self._drop()
                    # A kept-alive connection the sidecar has closed fails on
                    # first use: try once more on a new one.
                    if reused and attempt == 1:
                        continue
                    raise SidecarUnreachableError(self.socket_path, e) from e
        return _reply(resp.status, raw)


def _reply(status: int, raw: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if status == 200:
        if not isinstance(parsed, dict):
            raise KeyshiftError("Internal", "the sidecar's reply is not a JSON object", status)
        return parsed
    if isinstance(parsed, dict) and isinstance(parsed.get("code"), str):
        raise KeyshiftError(parsed["code"], str(parsed.get("message", "")), status)
    text = raw[:200].decode("utf-8", "replace").strip()
    raise KeyshiftError(_HTTP_CODES.get(status, "Unknown"), f"HTTP {status}: {text}", status)


def _decrypt_req(i: DecryptItem) -> dict[str, Any]:
    return {"ciphertext": _b64(i.ciphertext), "context": _ctx(i.context)}


def _encrypted(r: Mapping[str, Any]) -> Encrypted:
    return Encrypted(_unb64(r, "ciphertext"), r.get("keyset", ""), int(r.get("version", 0)))


def _decrypted(r: Mapping[str, Any]) -> Decrypted:
    return Decrypted(_unb64(r, "plaintext"), r.get("keyset", ""), int(r.get("version", 0)))


def _rewrapped(r: Mapping[str, Any]) -> Rewrapped:
    return Rewrapped(
        _unb64(r, "ciphertext"), r.get("keyset", ""), int(r.get("fromVersion", 0)),
        int(r.get("version", 0)), bool(r.get("rewrapped", False)),
    )


def _item(x: Mapping[str, Any], ok: Any) -> Any:
    if "ok" in x:
        return ok(x["ok"])
    err = x.get("error", {})
    return KeyshiftError(code_name(int(err.get("code", 2))), str(err.get("message", "")))
