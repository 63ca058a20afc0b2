package io.github.keyshift.client;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.function.Function;

/**
 * A client for the keyshift sidecar, standard library only: HTTP/1.1 and JSON
 * over the sidecar's Unix socket.
 *
 * <pre>{@code
 * try (KeyshiftClient ks = KeyshiftClient.fromEnv()) {         // $KEYSHIFT_SOCKET
 *     var sealed = ks.encrypt(card, Map.of("tenant", "acme"));
 *     byte[] plain = ks.decrypt(sealed.ciphertext(), Map.of("tenant", "acme")).plaintext();
 * }
 * }</pre>
 *
 * <p>Every failure is a {@link KeyshiftException} carrying the gRPC code name
 * the sidecar returned; an unreachable sidecar is a
 * {@link SidecarUnreachableException} (code {@code "Unavailable"}).
 *
 * <p>One kept-alive connection, used by one call at a time: a client is safe
 * to share between threads, whose calls take turns (use one client per
 * thread for parallel calls). A connection the sidecar closed is replaced
 * once, on the next call; every call is safe to repeat.
 */
public final class KeyshiftClient implements AutoCloseable {
    /** The environment variable the injector sets in every app container. */
    public static final String ENV_SOCKET = "KEYSHIFT_SOCKET";
    /** Where the injector mounts the socket when $KEYSHIFT_SOCKET is unset. */
    public static final String DEFAULT_SOCKET = "/var/run/keyshift/keyshift.sock";

    // The largest reply read: a batch of 1000 items of the largest
    // plaintext is refused by the sidecar long before this.
    private static final int MAX_REPLY = 64 << 20;

    private static final String[] CODE_NAMES = {
        "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded",
        "NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted",
        "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented",
        "Internal", "Unavailable", "DataLoss", "Unauthenticated",
    };

    private final String socketPath;
    private final String keyset;
    private final Duration timeout;
    private Conn conn; // guarded by this

    /** A ciphertext and the key version (the primary) that sealed it. */
    public record Encrypted(byte[] ciphertext, String keyset, int version) {}

    /** A plaintext and the key version it was sealed under. */
    public record Decrypted(byte[] plaintext, String keyset, int version) {
        @Override
        public String toString() {
            return "Decrypted[plaintext=REDACTED, keyset=" + keyset + ", version=" + version + "]";
        }
    }

    /** A ciphertext re-sealed under the primary; rewrapped is false when it already was. */
    public record Rewrapped(byte[] ciphertext, String keyset, int fromVersion, int version, boolean rewrapped) {}

    /** One item of {@link #encryptBatch}; keyset may be null for the client's default. */
    public record EncryptItem(byte[] plaintext, Map<String, String> context, String keyset) {
        public EncryptItem(byte[] plaintext, Map<String, String> context) {
            this(plaintext, context, null);
        }

        @Override
        public String toString() {
            return "EncryptItem[plaintext=REDACTED, context=" + context + ", keyset=" + keyset + "]";
        }
    }

    /** One item of {@link #decryptBatch} or {@link #rewrapBatch}. */
    public record DecryptItem(byte[] ciphertext, Map<String, String> context) {}

    /** One batch item's outcome: a value, or the item's error. */
    public record Result<T>(T value, KeyshiftException error) {
        /** True when the item succeeded. */
        public boolean ok() {
            return error == null;
        }

        /** The value, or the item's error thrown. */
        public T get() {
            if (error != null) {
                throw error;
            }
            return value;
        }
    }

    /** One loaded key version: pending, primary, decrypt-only, revoked, disabled or destroyed. */
    public record VersionStatus(int version, String state, String kekVersion) {}

    /** One keyset as the sidecar holds it; loadedAt is null if never loaded. */
    public record KeysetStatus(String name, String kms, int primary, List<VersionStatus> versions,
            Instant loadedAt, String source, String lastError) {}

    /** The sidecar's keysets; ready is true when each has a primary. */
    public record Status(boolean ready, List<KeysetStatus> keysets) {}

    /**
     * @param socketPath the sidecar's socket; null or empty for $KEYSHIFT_SOCKET, then DEFAULT_SOCKET
     * @param keyset the keyset encrypt uses when a call names none; null or empty when the sidecar serves one
     * @param timeout the longest one call may take; it then fails with DeadlineExceeded
     */
    public KeyshiftClient(String socketPath, String keyset, Duration timeout) {
        String env = System.getenv(ENV_SOCKET);
        this.socketPath = socketPath != null && !socketPath.isEmpty() ? socketPath
                : env != null && !env.isEmpty() ? env : DEFAULT_SOCKET;
        this.keyset = keyset == null ? "" : keyset;
        this.timeout = timeout;
    }

    /** A client of the socket at $KEYSHIFT_SOCKET (or DEFAULT_SOCKET), with a 10 s timeout. */
    public static KeyshiftClient fromEnv() {
        return new KeyshiftClient(null, null, Duration.ofSeconds(10));
    }

    /** The socket this client calls. */
    public String socketPath() {
        return socketPath;
    }

    /** The gRPC code name for a numeric code, as batch item errors carry them. */
    public static String codeName(long code) {
        return code >= 0 && code < CODE_NAMES.length ? CODE_NAMES[(int) code] : "Code(" + code + ")";
    }

    /** Seals plaintext under the primary version of the client's keyset, binding context. */
    public Encrypted encrypt(byte[] plaintext, Map<String, String> context) {
        return encrypt(plaintext, context, null);
    }

    /** Seals plaintext under the primary version of the named keyset, binding context. */
    public Encrypted encrypt(byte[] plaintext, Map<String, String> context, String keyset) {
        return encrypted(call("POST", "/v1/encrypt", encryptReq(new EncryptItem(plaintext, context, keyset))));
    }

    /** Opens a ciphertext; context must equal the one given to encrypt. */
    public Decrypted decrypt(byte[] ciphertext, Map<String, String> context) {
        return decrypted(call("POST", "/v1/decrypt", decryptReq(new DecryptItem(ciphertext, context))));
    }

    /** Re-seals a ciphertext under the primary version without returning the plaintext. */
    public Rewrapped rewrap(byte[] ciphertext, Map<String, String> context) {
        return rewrapped(call("POST", "/v1/rewrap", decryptReq(new DecryptItem(ciphertext, context))));
    }

    /** Encrypts up to 1000 items; each succeeds or fails alone. */
    public List<Result<Encrypted>> encryptBatch(List<EncryptItem> items) {
        List<Object> reqs = new ArrayList<>();
        for (EncryptItem it : items) {
            reqs.add(encryptReq(it));
        }
        return results(call("POST", "/v1/batch/encrypt", Map.of("items", reqs)), KeyshiftClient::encrypted);
    }

    /** Decrypts up to 1000 items; each succeeds or fails alone. */
    public List<Result<Decrypted>> decryptBatch(List<DecryptItem> items) {
        return results(call("POST", "/v1/batch/decrypt", Map.of("items", decryptReqs(items))), KeyshiftClient::decrypted);
    }

    /** Rewraps up to 1000 items; each succeeds or fails alone. */
    public List<Result<Rewrapped>> rewrapBatch(List<DecryptItem> items) {
        return results(call("POST", "/v1/batch/rewrap", Map.of("items", decryptReqs(items))), KeyshiftClient::rewrapped);
    }

    /** The sidecar's loaded keysets and versions. It never returns keys. */
    public Status status() {
        Map<String, Object> r = call("GET", "/v1/status", null);
        List<KeysetStatus> keysets = new ArrayList<>();
        for (Object o : list(r, "keysets")) {
            Map<String, Object> k = obj(o);
            List<VersionStatus> versions = new ArrayList<>();
            for (Object v : list(k, "versions")) {
                Map<String, Object> vm = obj(v);
                versions.add(new VersionStatus(num(vm, "version"), str(vm, "state"), str(vm, "kekVersion")));
            }
            String loaded = str(k, "loadedAt");
            keysets.add(new KeysetStatus(str(k, "name"), str(k, "kms"), num(k, "primary"), List.copyOf(versions),
                    loaded.isEmpty() ? null : Instant.parse(loaded), str(k, "source"), str(k, "lastError")));
        }
        return new Status(Boolean.TRUE.equals(r.get("ready")), List.copyOf(keysets));
    }

    /** Closes the connection; a later call opens a new one. */
    @Override
    public synchronized void close() {
        drop();
    }

    private Map<String, Object> encryptReq(EncryptItem it) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("keyset", it.keyset() != null && !it.keyset().isEmpty() ? it.keyset() : keyset);
        m.put("plaintext", b64(it.plaintext()));
        m.put("context", ctx(it.context()));
        return m;
    }

    private static Map<String, Object> decryptReq(DecryptItem it) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("ciphertext", b64(it.ciphertext()));
        m.put("context", ctx(it.context()));
        return m;
    }

    private static List<Object> decryptReqs(List<DecryptItem> items) {
        List<Object> reqs = new ArrayList<>();
        for (DecryptItem it : items) {
            reqs.add(decryptReq(it));
        }
        return reqs;
    }

    private static String b64(byte[] b) {
        if (b == null) {
            throw new IllegalArgumentException("keyshift: bytes must not be null");
        }
        return Base64.getEncoder().encodeToString(b);
    }

    private static Map<String, String> ctx(Map<String, String> context) {
        return context == null ? Map.of() : context;
    }

    private static Encrypted encrypted(Map<String, Object> r) {
        return new Encrypted(bytes(r, "ciphertext"), str(r, "keyset"), num(r, "version"));
    }

    private static Decrypted decrypted(Map<String, Object> r) {
        return new Decrypted(bytes(r, "plaintext"), str(r, "keyset"), num(r, "version"));
    }

    private static Rewrapped rewrapped(Map<String, Object> r) {
        return new Rewrapped(bytes(r, "ciphertext"), str(r, "keyset"), num(r, "fromVersion"), num(r, "version"),
                Boolean.TRUE.equals(r.get("rewrapped")));
    }

    private static <T> List<Result<T>> results(Map<String, Object> r, Function<Map<String, Object>, T> ok) {
        List<Result<T>> out = new ArrayList<>();
        for (Object o : list(r, "results")) {
            Map<String, Object> x = obj(o);
            if (x.containsKey("ok")) {
                out.add(new Result<>(ok.apply(obj(x.get("ok"))), null));
            } else {
                Map<String, Object> e = x.get("error") == null ? Map.of() : obj(x.get("error"));
                long code = e.get("code") instanceof Long l ? l : 2;
                out.add(new Result<>(null, new KeyshiftException(codeName(code), str(e, "message"), 0, null)));
            }
        }
        return out;
    }

    // Accessors for the reply's fields: proto3 JSON leaves out fields that
    // hold their default, so a missing field is "", 0, false or empty.

    @SuppressWarnings("unchecked")
    private static Map<String, Object> obj(Object o) {
        if (o instanceof Map<?, ?> m) {
            return (Map<String, Object>) m;
        }
        throw badReply("want a JSON object, got " + o);
    }

    private static List<?> list(Map<String, Object> m, String k) {
        Object v = m.get(k);
        if (v == null) {
            return List.of();
        }
        if (v instanceof List<?> l) {
            return l;
        }
        throw badReply(k + " is not a list");
    }

    private static String str(Map<String, Object> m, String k) {
        Object v = m.get(k);
        if (v == null) {
            return "";
        }
        if (v instanceof String s) {
            return s;
        }
        throw badReply(k + " is not a string");
    }

    private static int num(Map<String, Object> m, String k) {
        Object v = m.get(k);
        if (v == null) {
            return 0;
        }
        if (v instanceof Long l && l >= 0 && l <= Integer.MAX_VALUE) {
            return l.intValue();
        }
        throw badReply(k + " is not a version number");
    }

    private static byte[] bytes(Map<String, Object> m, String k) {
        try {
            return Base64.getDecoder().decode(str(m, k));
        } catch (IllegalArgumentException e) {
            throw badReply(k + " is not base64");
        }
    }

    private static KeyshiftException badReply(String why) {
        return new KeyshiftException("Internal", "unexpected reply from the keyshift sidecar: " + why, 200, null);
    }

    private synchronized Map<String, Object> call(String method, String path, Object body) {
        byte[] data = body == null ? null : Json.write(body).getBytes(StandardCharsets.UTF_8);
        for (int attempt = 1; ; attempt++) {
            boolean reused = conn != null;
            try {
                if (conn == null) {
                    conn = new Conn(socketPath);
                }
                Reply r = conn.exchange(method, path, data, System.nanoTime() + timeout.toNanos());
                if (r.close) {
                    drop();
                }
                return reply(r.status, r.body);
            } catch (Timeout e) {
                drop();
                throw new KeyshiftException("DeadlineExceeded",
                        "no reply from the keyshift sidecar within " + timeout.toMillis() + " ms", 0, e);
            } catch (IOException e) {
                drop();
                // A kept-alive connection the sidecar has closed fails on
                // first use: try once more on a new one.
                if (reused && attempt == 1) {
                    continue;
                }
                throw new SidecarUnreachableException(socketPath, e);
            }
        }
    }

    private void drop() {
        if (conn != null) {
            conn.close();
            conn = null;
        }
    }

    private static Map<String, Object> reply(int status, byte[] raw) {
        Object parsed;
        try {
            parsed = Json.parse(new String(raw, StandardCharsets.UTF_8));
        } catch (IllegalArgumentException e) {
            parsed = null;
        }
        if (status == 200) {
            if (parsed instanceof Map<?, ?>) {
                return obj(parsed);
            }
            throw badReply("not a JSON object");
        }
        if (parsed instanceof Map<?, ?> m && m.get("code") instanceof String code) {
            return throwError(code, m.get("message") instanceof String s ? s : "", status);
        }
        String text = new String(raw, 0, Math.min(raw.length, 200), StandardCharsets.UTF_8).strip();
        String code = switch (status) {
            case 400 -> "InvalidArgument";
            case 403 -> "PermissionDenied";
            case 404 -> "NotFound";
            case 499 -> "Canceled";
            case 503 -> "Unavailable";
            case 504 -> "DeadlineExceeded";
            default -> "Unknown";
        };
        return throwError(code, "HTTP " + status + ": " + text, status);
    }

    private static Map<String, Object> throwError(String code, String message, int status) {
        throw new KeyshiftException(code, message, status, null);
    }

    private record Reply(int status, byte[] body, boolean close) {}

    private static final class Timeout extends IOException {
        private static final long serialVersionUID = 1L;

        Timeout() {
            super("timed out");
        }
    }

    /** One HTTP/1.1 connection over the socket, non-blocking under a selector so each call has a deadline. */
    private static final class Conn {
        private final SocketChannel ch;
        private final Selector sel;
        private final SelectionKey key;
        private final ByteBuffer in = ByteBuffer.allocate(16 << 10);

        Conn(String path) throws IOException {
            SocketChannel c = SocketChannel.open(UnixDomainSocketAddress.of(path));
            try {
                c.configureBlocking(false);
                sel = Selector.open();
                key = c.register(sel, 0);
            } catch (IOException e) {
                c.close();
                throw e;
            }
            ch = c;
            in.flip(); // empty, ready to read from
        }

        void close() {
            try {
                sel.close();
            } catch (IOException ignored) {
                // closing: nothing to do
            }
            try {
                ch.close();
            } catch (IOException ignored) {
                // closing: nothing to do
            }
        }

        Reply exchange(String method, String path, byte[] body, long deadline) throws IOException {
            StringBuilder h = new StringBuilder();
            h.append(method).append(' ').append(path).append(" HTTP/1.1\r\nHost: keyshift\r\n");
            if (body != null) {
                h.append("Content-Type: application/json\r\nContent-Length: ").append(body.length).append("\r\n");
            }
            h.append("\r\n");
            IOException sendFailed = null;
            try {
                write(ByteBuffer.wrap(h.toString().getBytes(StandardCharsets.US_ASCII)), deadline);
                if (body != null) {
                    write(ByteBuffer.wrap(body), deadline);
                }
            } catch (Timeout e) {
                throw e;
            } catch (IOException e) {
                // The sidecar may answer and close before reading all of a
                // large body (a refusal, a body over its limit): its reply
                // is still there to read.
                sendFailed = e;
            }
            try {
                return readReply(deadline);
            } catch (Timeout e) {
                throw e;
            } catch (IOException e) {
                if (sendFailed != null) {
                    sendFailed.addSuppressed(e);
                    throw sendFailed;
                }
                throw e;
            }
        }

        private Reply readReply(long deadline) throws IOException {
            String statusLine = line(deadline);
            // HTTP/1.1 200 OK
            String[] parts = statusLine.split(" ", 3);
            if (parts.length < 2 || !parts[0].startsWith("HTTP/1.")) {
                throw new IOException("not an HTTP reply: " + statusLine);
            }
            int status;
            try {
                status = Integer.parseInt(parts[1]);
            } catch (NumberFormatException e) {
                throw new IOException("bad HTTP status line: " + statusLine);
            }
            long length = -1;
            boolean chunked = false;
            boolean close = parts[0].equals("HTTP/1.0");
            for (String l = line(deadline); !l.isEmpty(); l = line(deadline)) {
                int colon = l.indexOf(':');
                if (colon <= 0) {
                    throw new IOException("bad HTTP header: " + l);
                }
                String name = l.substring(0, colon).trim().toLowerCase(Locale.ROOT);
                String value = l.substring(colon + 1).trim();
                switch (name) {
                    case "content-length" -> {
                        try {
                            length = Long.parseLong(value);
                        } catch (NumberFormatException e) {
                            throw new IOException("bad Content-Length: " + value);
                        }
                    }
                    case "transfer-encoding" -> chunked = value.equalsIgnoreCase("chunked");
                    case "connection" -> close = value.equalsIgnoreCase("close");
                    default -> { }
                }
            }
            byte[] out;
            if (chunked) {
                ByteArrayOutputStream b = new ByteArrayOutputStream();
                while (true) {
                    String size = line(deadline);
                    int semi = size.indexOf(';');
                    long n;
                    try {
                        n = Long.parseLong((semi >= 0 ? size.substring(0, semi) : size).trim(), 16);
                    } catch (NumberFormatException e) {
                        throw new IOException("bad chunk size: " + size);
                    }
                    if (n < 0 || b.size() + n > MAX_REPLY) {
                        throw new IOException("reply larger than " + MAX_REPLY + " bytes");
                    }
                    if (n == 0) {
                        while (!line(deadline).isEmpty()) {
                            // trailers: none expected, skipped
                        }
                        break;
                    }
                    b.writeBytes(read((int) n, deadline));
                    if (!line(deadline).isEmpty()) {
                        throw new IOException("chunk not followed by CRLF");
                    }
                }
                out = b.toByteArray();
            } else if (length >= 0) {
                if (length > MAX_REPLY) {
                    throw new IOException("reply larger than " + MAX_REPLY + " bytes");
                }
                out = read((int) length, deadline);
            } else {
                throw new IOException("HTTP reply with neither Content-Length nor chunked encoding");
            }
            return new Reply(status, out, close);
        }

        private void write(ByteBuffer b, long deadline) throws IOException {
            while (b.hasRemaining()) {
                if (ch.write(b) == 0) {
                    await(SelectionKey.OP_WRITE, deadline);
                }
            }
        }

        /** Reads more into in; in stays in read mode. */
        private void fill(long deadline) throws IOException {
            in.compact();
            try {
                while (true) {
                    int n = ch.read(in);
                    if (n < 0) {
                        throw new IOException("the sidecar closed the connection");
                    }
                    if (n > 0) {
                        return;
                    }
                    await(SelectionKey.OP_READ, deadline);
                }
            } finally {
                in.flip();
            }
        }

        private String line(long deadline) throws IOException {
            StringBuilder b = new StringBuilder();
            while (true) {
                while (in.hasRemaining()) {
                    char c = (char) (in.get() & 0xff);
                    if (c == '\n') {
                        int n = b.length();
                        return n > 0 && b.charAt(n - 1) == '\r' ? b.substring(0, n - 1) : b.toString();
                    }
                    if (b.length() > 8 << 10) {
                        throw new IOException("HTTP header line longer than 8 KiB");
                    }
                    b.append(c);
                }
                fill(deadline);
            }
        }

        private byte[] read(int n, long deadline) throws IOException {
            byte[] out = new byte[n];
            int got = 0;
            while (got < n) {
                if (!in.hasRemaining()) {
                    fill(deadline);
                }
                int k = Math.min(in.remaining(), n - got);
                in.get(out, got, k);
                got += k;
            }
            return out;
        }

        private void await(int op, long deadline) throws IOException {
            long left = deadline - System.nanoTime();
            if (left <= 0) {
                throw new Timeout();
            }
            key.interestOps(op);
            sel.selectedKeys().clear();
            sel.select(Math.max(1, left / 1_000_000));
        }
    }
}
