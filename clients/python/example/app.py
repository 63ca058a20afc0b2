"""Example: an app that keeps encrypting and decrypting through key rotations.

    PYTHONPATH=clients/python python3 clients/python/example/app.py roundtrip --rounds 200
    PYTHONPATH=clients/python python3 clients/python/example/app.py errors

roundtrip seals a record per round with the tenant and record id bound as
context, opens it again, re-opens records sealed in the first rounds, and at
the end rewraps those early records under the current primary and checks the
batch calls. It prints a progress line every 10 rounds and a JSON summary,
and exits 1 if anything failed or fewer than --want-versions key versions
were seen (a rotation that never arrived).

errors shows how each kind of mistake comes back: one JSON line with the
error code and message of each case.

Plaintexts here are made-up records; a real app never prints its own.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from typing import Any, Callable

import keyshift

EARLY = 10  # records kept from the first rounds and re-opened throughout
OLD_EVERY = 5  # a kept record is re-opened every OLD_EVERY rounds


def out(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def roundtrip(ks: keyshift.Client, rounds: int, want_versions: int, pause: float, timeout: float) -> int:
    by_version: dict[int, int] = {}
    old_by_version: dict[int, int] = {}
    failures: list[str] = []
    early: list[tuple[bytes, dict[str, str], int, bytes]] = []
    trips_ok = old_ok = failed = 0

    def fail(what: str, err: object) -> None:
        nonlocal failed
        failed += 1
        if len(failures) < 20:
            failures.append(f"{what}: {err}")

    primary_before = ks.status().keysets[0].primary
    deadline = time.monotonic() + timeout
    i = 0
    while i < rounds or len(by_version) < want_versions:
        if time.monotonic() > deadline:
            fail("timeout", f"{i} rounds in {timeout}s, saw key versions {sorted(by_version)}, want {want_versions}")
            break
        pt = f"record {i}".encode()
        ctx = {"tenant": "acme", "record": str(i)}
        try:
            sealed = ks.encrypt(pt, ctx)
            opened = ks.decrypt(sealed.ciphertext, ctx)
            if opened.plaintext != pt or opened.version != sealed.version:
                fail(f"round {i}", "decrypt returned another plaintext or version")
            else:
                trips_ok += 1
                by_version[sealed.version] = by_version.get(sealed.version, 0) + 1
                if len(early) < EARLY:
                    early.append((sealed.ciphertext, ctx, sealed.version, pt))
        except keyshift.KeyshiftError as e:
            fail(f"round {i}", e)
        if i % OLD_EVERY == 0 and early:
            ct, ctx, v, want = early[(i // OLD_EVERY) % len(early)]
            try:
                if ks.decrypt(ct, ctx).plaintext != want:
                    fail(f"round {i} early record", "another plaintext")
                else:
                    old_ok += 1
                    old_by_version[v] = old_by_version.get(v, 0) + 1
            except keyshift.KeyshiftError as e:
                fail(f"round {i} early record", e)
        i += 1
        if i % 10 == 0:
            out({"event": "progress", "round": i, "versions": sorted(by_version)})
        time.sleep(pause)

    primary_after = ks.status().keysets[0].primary
    rewrapped = batch_ok = 0
    try:
        for ct, ctx, v, want in early:
            r = ks.rewrap(ct, ctx)
            moved = r.from_version == v and r.version == primary_after and r.rewrapped == (v != primary_after)
            if not moved or ks.decrypt(r.ciphertext, ctx).plaintext != want:
                fail("rewrap", f"v{v} came back as v{r.from_version}->v{r.version} rewrapped={r.rewrapped}")
            elif r.rewrapped:
                rewrapped += 1
        results = ks.decrypt_batch([keyshift.DecryptItem(ct, ctx) for ct, ctx, _, _ in early])
        for (_, _, _, want), res in zip(early, results, strict=True):
            if isinstance(res, keyshift.KeyshiftError):
                fail("decrypt_batch", res)
            elif res.plaintext == want:
                batch_ok += 1
        items = [keyshift.EncryptItem(f"batch {n}".encode(), {"n": str(n)}) for n in range(3)]
        sealed_items = ks.encrypt_batch(items)
        opened_items = ks.decrypt_batch(
            [keyshift.DecryptItem(s.ciphertext, it.context) for s, it in zip(sealed_items, items, strict=True)
             if isinstance(s, keyshift.Encrypted)])
        for it, res in zip(items, opened_items, strict=True):
            if isinstance(res, keyshift.KeyshiftError):
                fail("encrypt_batch/decrypt_batch", res)
            elif res.plaintext == it.plaintext and res.version == primary_after:
                batch_ok += 1
    except (keyshift.KeyshiftError, ValueError) as e:
        fail("after the rounds", e)

    out({
        "event": "summary", "language": "python", "rounds": i, "round_trips_ok": trips_ok,
        "failed": failed, "failures": failures,
        "by_version": {str(k): n for k, n in sorted(by_version.items())},
        "old_decrypted": old_ok, "old_by_version": {str(k): n for k, n in sorted(old_by_version.items())},
        "rewrapped": rewrapped, "batch_ok": batch_ok,
        "primary_before": primary_before, "primary_after": primary_after,
    })
    return 0 if failed == 0 and len(by_version) >= want_versions else 1


def errors(ks: keyshift.Client, old_ciphertext: bytes | None) -> int:
    """Each mistake an app can make, and the code and message it gets.

    old_ciphertext, sealed earlier with context tenant=acme, is decrypted and
    rewrapped: under a revoked key version decrypt is refused and rewrap works.
    """
    cases: dict[str, Any] = {}

    def case(name: str, call: Callable[[], object]) -> None:
        try:
            call()
            cases[name] = {"code": "OK", "message": ""}
        except keyshift.KeyshiftError as e:
            cases[name] = {"code": e.code, "message": e.message, "http_status": e.http_status}

    ctx = {"tenant": "acme"}

    def tampered() -> object:
        ct = bytearray(ks.encrypt(b"card 4111", ctx).ciphertext)
        ct[-1] ^= 1
        return ks.decrypt(bytes(ct), ctx)

    def batch_item() -> object:
        good = ks.encrypt(b"card 4111", ctx).ciphertext
        res = ks.decrypt_batch([keyshift.DecryptItem(good, ctx), keyshift.DecryptItem(good, {"tenant": "globex"})])
        if isinstance(res[0], keyshift.KeyshiftError):
            raise res[0]
        if isinstance(res[1], keyshift.KeyshiftError):
            raise res[1]
        return res

    case("tampered", tampered)
    case("wrong_context", lambda: ks.decrypt(ks.encrypt(b"card 4111", ctx).ciphertext, {"tenant": "globex"}))
    case("malformed", lambda: ks.decrypt(b"\x01\x02\x03", ctx))
    case("unknown_keyset", lambda: ks.encrypt(b"x", ctx, keyset="billing"))
    case("bad_context", lambda: ks.encrypt(b"x", {"": "empty key"}))
    case("oversized", lambda: ks.encrypt(b"\0" * (4 << 20 | 1), ctx))
    case("batch_item", batch_item)
    missing = ks.socket_path + ".missing"
    case("no_socket", lambda: keyshift.Client(missing).status())
    if old_ciphertext is not None:
        old = old_ciphertext
        case("old_decrypt", lambda: ks.decrypt(old, ctx))
        case("old_rewrap", lambda: ks.decrypt(ks.rewrap(old, ctx).ciphertext, ctx))
    out({"event": "errors", "language": "python", "cases": cases})
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    rt = sub.add_parser("roundtrip", help="encrypt and decrypt through rotations")
    rt.add_argument("--rounds", type=int, default=200, help="rounds to run at least")
    rt.add_argument("--want-versions", type=int, default=1, help="run until this many key versions were seen")
    rt.add_argument("--pause-ms", type=int, default=5, help="pause between rounds")
    rt.add_argument("--timeout-s", type=float, default=60, help="give up after this long")
    er = sub.add_parser("errors", help="show the error each mistake gets")
    er.add_argument("--old-ciphertext", help="base64 ciphertext sealed earlier with context tenant=acme")
    a = p.parse_args()
    print(f"keyshift socket: {os.environ.get(keyshift.ENV_SOCKET) or keyshift.DEFAULT_SOCKET}", file=sys.stderr)
    try:
        with keyshift.Client() as ks:
            if a.cmd == "roundtrip":
                return roundtrip(ks, a.rounds, a.want_versions, a.pause_ms / 1000, a.timeout_s)
            return errors(ks, base64.b64decode(a.old_ciphertext, validate=True) if a.old_ciphertext else None)
    except keyshift.KeyshiftError as e:
        print(e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
