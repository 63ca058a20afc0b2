"""Tests of the keyshift client against a real sidecar at $KEYSHIFT_SOCKET.

test/clients (go test ./test/clients) starts the sidecar, with keyset
"notes" at v1, and runs these:

    PYTHONPATH=clients/python python3 -m unittest discover -s clients/python/tests
"""

from __future__ import annotations

import os
import threading
import unittest
from unittest import mock

import keyshift

SOCKET = os.environ.get(keyshift.ENV_SOCKET, "")


class PureTest(unittest.TestCase):
    def test_socket_path(self) -> None:
        with mock.patch.dict(os.environ, {}, clear=True):
            self.assertEqual(keyshift.Client().socket_path, "/var/run/keyshift/keyshift.sock")
        with mock.patch.dict(os.environ, {"KEYSHIFT_SOCKET": "/run/a.sock"}):
            self.assertEqual(keyshift.Client().socket_path, "/run/a.sock")
            self.assertEqual(keyshift.Client("/run/b.sock").socket_path, "/run/b.sock")

    def test_code_name(self) -> None:
        self.assertEqual(
            [keyshift.code_name(c) for c in (0, 3, 5, 7, 9, 14, 16, 17)],
            ["OK", "InvalidArgument", "NotFound", "PermissionDenied", "FailedPrecondition", "Unavailable", "Unauthenticated", "Code(17)"],
        )

    def test_reply_without_json_body(self) -> None:
        cases = [
            (503, b"", "Unavailable", "HTTP 503: "),
            (502, b"<html>bad gateway</html>", "Unknown", "HTTP 502: <html>bad gateway</html>"),
            (403, b'{"code": 7}', "PermissionDenied", 'HTTP 403: {"code": 7}'),
        ]
        for status, body, code, message in cases:
            with self.subTest(status=status), self.assertRaises(keyshift.KeyshiftError) as cm:
                keyshift._reply(status, body)
            self.assertEqual((cm.exception.code, cm.exception.message, cm.exception.http_status), (code, message, status))

    def test_ok_reply_not_an_object(self) -> None:
        with self.assertRaises(keyshift.KeyshiftError) as cm:
            keyshift._reply(200, b"[1]")
        self.assertEqual(cm.exception.code, "Internal")

    def test_repr_hides_plaintext(self) -> None:
        d = keyshift.Decrypted(b"card 4111", "notes", 1)
        self.assertNotIn("4111", repr(d))
        self.assertNotIn("4111", repr(keyshift.EncryptItem(b"card 4111")))

    def test_not_bytes(self) -> None:
        with self.assertRaises(TypeError):
            keyshift.Client("/nonexistent").encrypt("text")  # type: ignore[arg-type]


class SidecarTest(unittest.TestCase):
    ks: keyshift.Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.ks = keyshift.Client()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.ks.close()

    def test_status(self) -> None:
        st = self.ks.status()
        self.assertTrue(st.ready)
        self.assertEqual([(k.name, k.primary, [(v.version, v.state) for v in k.versions]) for k in st.keysets],
                         [("notes", 1, [(1, "primary")])])
        k = st.keysets[0]
        self.assertTrue(k.kms.startswith("local://"), k.kms)
        self.assertTrue(k.source.startswith("file:"), k.source)
        self.assertEqual(k.last_error, "")
        self.assertIsNotNone(k.loaded_at)

    def test_round_trip_binary_and_empty(self) -> None:
        for pt in (b"", bytes(range(256)), "naïve ✓".encode()):
            with self.subTest(size=len(pt)):
                sealed = self.ks.encrypt(pt, {"tenant": "acme", "ключ": "значение"})
                self.assertEqual((sealed.keyset, sealed.version), ("notes", 1))
                opened = self.ks.decrypt(sealed.ciphertext, {"ключ": "значение", "tenant": "acme"})
                self.assertEqual((opened.plaintext, opened.keyset, opened.version), (pt, "notes", 1))

    def test_no_context_is_empty_context(self) -> None:
        sealed = self.ks.encrypt(b"x")
        self.assertEqual(self.ks.decrypt(sealed.ciphertext, {}).plaintext, b"x")

    def test_rewrap_under_primary_is_unchanged(self) -> None:
        sealed = self.ks.encrypt(b"x", {"a": "b"})
        r = self.ks.rewrap(sealed.ciphertext, {"a": "b"})
        self.assertEqual((r.ciphertext, r.from_version, r.version, r.rewrapped), (sealed.ciphertext, 1, 1, False))

    def test_batches(self) -> None:
        enc = self.ks.encrypt_batch([keyshift.EncryptItem(b"a", {"n": "1"}), keyshift.EncryptItem(b"b", keyset="billing")])
        self.assertIsInstance(enc[0], keyshift.Encrypted)
        self.assertIsInstance(enc[1], keyshift.KeyshiftError)
        assert isinstance(enc[0], keyshift.Encrypted) and isinstance(enc[1], keyshift.KeyshiftError)
        self.assertEqual((enc[1].code, enc[1].http_status), ("NotFound", None))
        dec = self.ks.decrypt_batch([keyshift.DecryptItem(enc[0].ciphertext, {"n": "1"}), keyshift.DecryptItem(b"\x01", {})])
        assert isinstance(dec[0], keyshift.Decrypted) and isinstance(dec[1], keyshift.KeyshiftError)
        self.assertEqual(dec[0].plaintext, b"a")
        self.assertEqual(dec[1].code, "InvalidArgument")
        rw = self.ks.rewrap_batch([keyshift.DecryptItem(enc[0].ciphertext, {"n": "1"})])
        assert isinstance(rw[0], keyshift.Rewrapped)
        self.assertFalse(rw[0].rewrapped)
        self.assertEqual(self.ks.encrypt_batch([]), [])

    def test_batch_too_large(self) -> None:
        with self.assertRaises(keyshift.KeyshiftError) as cm:
            self.ks.decrypt_batch([keyshift.DecryptItem(b"x")] * 1001)
        self.assertEqual((cm.exception.code, cm.exception.http_status), ("InvalidArgument", 400))

    def test_threads_share_a_client(self) -> None:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(20):
                    pt = f"{n}/{i}".encode()
                    assert self.ks.decrypt(self.ks.encrypt(pt).ciphertext).plaintext == pt
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        self.assertEqual(errors, [])

    def test_reconnects_after_the_connection_drops(self) -> None:
        ks = keyshift.Client()
        try:
            ks.status()
            assert ks._conn is not None and ks._conn.sock is not None
            ks._conn.sock.close()  # as when the sidecar restarts
            self.assertTrue(ks.status().ready)
        finally:
            ks.close()

    def test_socket_missing(self) -> None:
        with self.assertRaises(keyshift.SidecarUnreachableError) as cm:
            keyshift.Client(SOCKET + ".gone").encrypt(b"x")
        e = cm.exception
        self.assertIsInstance(e, keyshift.KeyshiftError)
        self.assertEqual((e.code, e.http_status, e.path), ("Unavailable", None, SOCKET + ".gone"))
        self.assertIsInstance(e.__cause__, FileNotFoundError)


def setUpModule() -> None:
    if not SOCKET:
        raise RuntimeError("KEYSHIFT_SOCKET is not set: run these through `go test ./test/clients`, which starts a sidecar")


if __name__ == "__main__":
    unittest.main()
