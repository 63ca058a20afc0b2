package io.github.keyshift.client;

import io.github.keyshift.client.KeyshiftClient.DecryptItem;
import io.github.keyshift.client.KeyshiftClient.Decrypted;
import io.github.keyshift.client.KeyshiftClient.EncryptItem;
import io.github.keyshift.client.KeyshiftClient.Encrypted;
import io.github.keyshift.client.KeyshiftClient.KeysetStatus;
import io.github.keyshift.client.KeyshiftClient.Result;
import io.github.keyshift.client.KeyshiftClient.Rewrapped;
import io.github.keyshift.client.KeyshiftClient.Status;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * Tests of the Java client: its JSON and HTTP handling against canned
 * replies from a socket of its own, and every call against a real sidecar at
 * $KEYSHIFT_SOCKET. test/clients (go test ./test/clients) starts the sidecar,
 * with keyset "notes" at v1, compiles this and runs it:
 *
 * <pre>
 * javac -d out $(find clients/java -name '*.java')
 * KEYSHIFT_SOCKET=... java -cp out io.github.keyshift.client.ClientTest
 * </pre>
 *
 * It prints one line per test and exits 1 if any failed.
 */
public final class ClientTest {
    private interface Body {
        void run() throws Exception;
    }

    private static int failed;

    private static void test(String name, Body body) {
        try {
            body.run();
            System.out.println("ok   " + name);
        } catch (Throwable e) {
            failed++;
            System.out.println("FAIL " + name + ": " + e);
            e.printStackTrace(System.out);
        }
    }

    private static void eq(Object want, Object got) {
        if (!Objects.deepEquals(want, got)) {
            throw new AssertionError("want " + show(want) + ", got " + show(got));
        }
    }

    private static String show(Object o) {
        return o instanceof byte[] b ? Arrays.toString(b) : String.valueOf(o);
    }

    private static void yes(boolean b, String what) {
        if (!b) {
            throw new AssertionError(what);
        }
    }

    private static KeyshiftException throwsKeyshift(Body body) throws Exception {
        try {
            body.run();
        } catch (KeyshiftException e) {
            return e;
        }
        throw new AssertionError("no KeyshiftException");
    }

    private static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    public static void main(String[] args) throws Exception {
        jsonTests();
        cannedReplyTests();
        String socket = System.getenv(KeyshiftClient.ENV_SOCKET);
        if (socket == null || socket.isEmpty()) {
            System.out.println("FAIL KEYSHIFT_SOCKET is not set: run these through `go test ./test/clients`, which starts a sidecar");
            System.exit(1);
        }
        sidecarTests(socket);
        System.out.println(failed == 0 ? "PASS" : failed + " FAILED");
        System.exit(failed == 0 ? 0 : 1);
    }

    private static void jsonTests() {
        test("json: values", () -> {
            eq(Map.of("a", List.of(1L, -2L, 3.5, 1e3, true, false), "b", "x"), Json.parse(" {\"a\":[1,-2,3.5,1E3,true,false],\"b\":\"x\"} "));
            eq(Collections.singletonMap("n", null), Json.parse("{\"n\":null}"));
            eq(List.of(), Json.parse("[]"));
            eq(9.223372036854775808E18, Json.parse("9223372036854775808"));
        });
        test("json: string escapes and UTF-16 surrogate pairs", () -> {
            eq("q\"b\\s/\b\f\n\r\té😀", Json.parse("\"q\\\"b\\\\s\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\""));
            eq("é😀", Json.parse("\"é😀\""));
        });
        test("json: write round trips", () -> {
            Object v = Json.parse("{\"s\":\"a\\\"\\\\\\n\\u0001é😀\",\"l\":[1,2.5,null,true],\"m\":{}}");
            eq(v, Json.parse(Json.write(v)));
            eq("{\"s\":\"\\u0001\\\"\"}", Json.write(Map.of("s", "\u0001\"")));
        });
        for (String bad : new String[] {
            "", "{", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "01", "1.", "1e", "-", ".5", "\"\\x\"", "\"\\u12\"",
            "\"a", "\"\u0001\"", "tru", "nul", "[1] 2", "{\"a\":1,\"a\":2}", "[".repeat(100) + "]".repeat(100),
        }) {
            test("json: refuses " + bad.replace("\u0001", "\\u0001").substring(0, Math.min(bad.length(), 20)), () -> {
                try {
                    Json.parse(bad);
                } catch (IllegalArgumentException e) {
                    yes(e.getMessage().startsWith("bad JSON at offset "), e.getMessage());
                    return;
                }
                throw new AssertionError("parsed");
            });
        }
    }

    /**
     * A server on a socket of its own that gives each connection one canned
     * reply, to test what the sidecar would not send: chunked bodies, error
     * replies without a JSON body, a connection closed without a reply.
     */
    private interface ServerBody {
        void run(String sock) throws Exception;
    }

    private static void withServer(List<String> replies, ServerBody body) throws Exception {
        Path dir = Files.createTempDirectory("ksj");
        Path sock = dir.resolve("s.sock");
        ServerSocketChannel server = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        try {
            server.bind(UnixDomainSocketAddress.of(sock));
            Thread t = new Thread(() -> {
                for (String reply : replies) {
                    try (SocketChannel c = server.accept()) {
                        ByteBuffer in = ByteBuffer.allocate(1 << 16);
                        String req = "";
                        while (!req.contains("\r\n\r\n")) {
                            if (c.read(in) < 0) {
                                break;
                            }
                            req = new String(in.array(), 0, in.position(), StandardCharsets.ISO_8859_1);
                        }
                        c.write(ByteBuffer.wrap(reply.getBytes(StandardCharsets.UTF_8)));
                    } catch (IOException e) {
                        return;
                    }
                }
            });
            t.start();
            try {
                body.run(sock.toString());
            } finally {
                server.close();
                t.join(5000);
            }
        } finally {
            server.close();
            Files.deleteIfExists(sock);
            Files.deleteIfExists(dir);
        }
    }

    private static void cannedReplyTests() {
        test("http: a chunked reply", () -> withServer(List.of(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                        + chunk("{\"plaintex") + chunk("t\":\"aGk=\",\"version\":7}\n").replaceFirst("\r\n", ";ext=1\r\n")
                        + "0\r\n\r\n"),
                sock -> {
                    try (KeyshiftClient c = client(sock)) {
                        Decrypted d = c.decrypt(utf8("x"), null);
                        eq(utf8("hi"), d.plaintext());
                        eq(7, d.version());
                        eq("", d.keyset());
                    }
                }));
        test("http: error replies without the sidecar's JSON body", () -> withServer(List.of(
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\nConnection: close\r\n\r\nbad gateway",
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n[1]"),
                sock -> {
                    try (KeyshiftClient c = client(sock)) {
                        KeyshiftException e = throwsKeyshift(c::status);
                        eq(List.of("Unknown", "HTTP 502: bad gateway", 502), List.of(e.code(), e.detail(), e.httpStatus()));
                        e = throwsKeyshift(c::status);
                        eq(List.of("Unavailable", "HTTP 503: ", 503), List.of(e.code(), e.detail(), e.httpStatus()));
                        e = throwsKeyshift(c::status);
                        eq("Internal", e.code());
                    }
                }));
        test("http: connection closed before a reply", () -> withServer(List.of("", ""), sock -> {
            try (KeyshiftClient c = client(sock)) {
                KeyshiftException e = throwsKeyshift(c::status);
                yes(e instanceof SidecarUnreachableException, e.toString());
                eq("Unavailable", e.code());
            }
        }));
        test("http: timeout", () -> withServer(List.of(), sock -> {
            // Nothing accepts: the connection waits in the backlog with no reply.
            try (KeyshiftClient c = new KeyshiftClient(sock, null, Duration.ofMillis(200))) {
                KeyshiftException e = throwsKeyshift(c::status);
                eq(List.of("DeadlineExceeded", "no reply from the keyshift sidecar within 200 ms"), List.of(e.code(), e.detail()));
            }
        }));
    }

    private static KeyshiftClient client(String sock) {
        return new KeyshiftClient(sock, null, Duration.ofSeconds(5));
    }

    private static String chunk(String s) {
        return Integer.toHexString(s.getBytes(StandardCharsets.UTF_8).length) + "\r\n" + s + "\r\n";
    }

    private static void sidecarTests(String socket) {
        KeyshiftClient ks = KeyshiftClient.fromEnv();
        test("socket path: argument, then $KEYSHIFT_SOCKET", () -> {
            eq(socket, ks.socketPath());
            try (KeyshiftClient c = new KeyshiftClient("/run/b.sock", null, Duration.ofSeconds(1))) {
                eq("/run/b.sock", c.socketPath());
            }
            eq("/var/run/keyshift/keyshift.sock", KeyshiftClient.DEFAULT_SOCKET);
        });
        test("code names", () -> eq(List.of("OK", "InvalidArgument", "NotFound", "PermissionDenied", "FailedPrecondition", "Unavailable", "Code(17)"),
                List.of(KeyshiftClient.codeName(0), KeyshiftClient.codeName(3), KeyshiftClient.codeName(5), KeyshiftClient.codeName(7),
                        KeyshiftClient.codeName(9), KeyshiftClient.codeName(14), KeyshiftClient.codeName(17))));
        test("status", () -> {
            Status st = ks.status();
            yes(st.ready(), "not ready");
            eq(1, st.keysets().size());
            KeysetStatus k = st.keysets().get(0);
            eq(List.of("notes", 1, 1, 1, "primary", ""), List.of(k.name(), k.primary(), k.versions().size(),
                    k.versions().get(0).version(), k.versions().get(0).state(), k.lastError()));
            yes(k.kms().startsWith("local://") && k.source().startsWith("file:") && k.loadedAt() != null, k.toString());
        });
        test("round trips: binary, empty, UTF-8 context", () -> {
            byte[] all = new byte[256];
            for (int i = 0; i < all.length; i++) {
                all[i] = (byte) i;
            }
            for (byte[] pt : List.of(new byte[0], all, utf8("naïve ✓"))) {
                Encrypted sealed = ks.encrypt(pt, Map.of("tenant", "acme", "ключ", "значение"));
                eq(List.of("notes", 1), List.of(sealed.keyset(), sealed.version()));
                Decrypted opened = ks.decrypt(sealed.ciphertext(), Map.of("ключ", "значение", "tenant", "acme"));
                eq(pt, opened.plaintext());
                yes(!opened.toString().contains("naïve"), "toString shows the plaintext");
            }
            eq(utf8("x"), ks.decrypt(ks.encrypt(utf8("x"), null).ciphertext(), Map.of()).plaintext());
        });
        test("rewrap under the primary comes back unchanged", () -> {
            Encrypted sealed = ks.encrypt(utf8("x"), Map.of("a", "b"));
            Rewrapped r = ks.rewrap(sealed.ciphertext(), Map.of("a", "b"));
            eq(sealed.ciphertext(), r.ciphertext());
            eq(List.of(1, 1, false), List.of(r.fromVersion(), r.version(), r.rewrapped()));
        });
        test("batches: each item succeeds or fails alone", () -> {
            List<Result<Encrypted>> enc = ks.encryptBatch(List.of(new EncryptItem(utf8("a"), Map.of("n", "1")), new EncryptItem(utf8("b"), null, "billing")));
            yes(enc.get(0).ok() && !enc.get(1).ok(), enc.toString());
            eq(List.of("NotFound", 0), List.of(enc.get(1).error().code(), enc.get(1).error().httpStatus()));
            List<Result<Decrypted>> dec = ks.decryptBatch(List.of(new DecryptItem(enc.get(0).get().ciphertext(), Map.of("n", "1")),
                    new DecryptItem(new byte[] {1}, null)));
            eq(utf8("a"), dec.get(0).get().plaintext());
            eq("InvalidArgument", dec.get(1).error().code());
            KeyshiftException thrown = throwsKeyshift(() -> dec.get(1).get());
            eq("InvalidArgument", thrown.code());
            eq(false, ks.rewrapBatch(List.of(new DecryptItem(enc.get(0).get().ciphertext(), Map.of("n", "1")))).get(0).get().rewrapped());
            eq(List.of(), ks.encryptBatch(List.of()));
            KeyshiftException big = throwsKeyshift(() -> ks.decryptBatch(Collections.nCopies(1001, new DecryptItem(utf8("x"), null))));
            eq(List.of("InvalidArgument", 400), List.of(big.code(), big.httpStatus()));
        });
        test("threads share a client", () -> {
            List<Throwable> errs = Collections.synchronizedList(new ArrayList<>());
            List<Thread> threads = new ArrayList<>();
            for (int n = 0; n < 4; n++) {
                int id = n;
                threads.add(new Thread(() -> {
                    try {
                        for (int i = 0; i < 20; i++) {
                            byte[] pt = utf8(id + "/" + i);
                            eq(pt, ks.decrypt(ks.encrypt(pt, null).ciphertext(), null).plaintext());
                        }
                    } catch (Throwable e) {
                        errs.add(e);
                    }
                }));
            }
            threads.forEach(Thread::start);
            for (Thread t : threads) {
                t.join();
            }
            eq(List.of(), errs);
        });
        test("a closed client opens a new connection on its next call", () -> {
            KeyshiftClient c = KeyshiftClient.fromEnv();
            try {
                c.status();
                c.close(); // a later call opens a new connection
                yes(c.status().ready(), "not ready");
            } finally {
                c.close();
            }
        });
        test("a missing socket is a SidecarUnreachableException", () -> {
            try (KeyshiftClient c = new KeyshiftClient(socket + ".gone", null, Duration.ofSeconds(1))) {
                KeyshiftException e = throwsKeyshift(() -> c.encrypt(utf8("x"), null));
                yes(e instanceof SidecarUnreachableException, e.toString());
                eq(List.of("Unavailable", 0, socket + ".gone"), List.of(e.code(), e.httpStatus(), ((SidecarUnreachableException) e).socketPath()));
                yes(e.getCause() instanceof IOException, String.valueOf(e.getCause()));
                yes(e.detail().startsWith("cannot reach the keyshift sidecar at " + socket + ".gone: "), e.detail());
            }
        });
        ks.close();
    }
}
