package io.github.keyshift.example;

import io.github.keyshift.client.KeyshiftClient;
import io.github.keyshift.client.KeyshiftClient.DecryptItem;
import io.github.keyshift.client.KeyshiftClient.Decrypted;
import io.github.keyshift.client.KeyshiftClient.EncryptItem;
import io.github.keyshift.client.KeyshiftClient.Encrypted;
import io.github.keyshift.client.KeyshiftClient.Result;
import io.github.keyshift.client.KeyshiftClient.Rewrapped;
import io.github.keyshift.client.KeyshiftException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * Example: an app that keeps encrypting and decrypting through key rotations.
 *
 * <pre>
 * java -cp out io.github.keyshift.example.App roundtrip --rounds 200
 * java -cp out io.github.keyshift.example.App errors
 * </pre>
 *
 * <p>roundtrip seals a record per round with the tenant and record id bound as
 * context, opens it again, re-opens records sealed in the first rounds, and at
 * the end rewraps those early records under the current primary and checks the
 * batch calls. It prints a progress line every 10 rounds and a JSON summary,
 * and exits 1 if anything failed or fewer than --want-versions key versions
 * were seen (a rotation that never arrived).
 *
 * <p>errors shows how each kind of mistake comes back: one JSON line with the
 * error code and message of each case.
 *
 * <p>Plaintexts here are made-up records; a real app never prints its own.
 */
public final class App {
    private static final int EARLY = 10; // records kept from the first rounds and re-opened throughout
    private static final int OLD_EVERY = 5; // a kept record is re-opened every OLD_EVERY rounds

    private record Kept(byte[] ct, Map<String, String> ctx, int version, byte[] pt) {}

    private final KeyshiftClient ks;
    private final List<String> failures = new ArrayList<>();
    private int failed;

    private App(KeyshiftClient ks) {
        this.ks = ks;
    }

    private void fail(String what, Object err) {
        failed++;
        if (failures.size() < 20) {
            failures.add(what + ": " + (err instanceof KeyshiftException e ? e.getMessage() : err));
        }
    }

    private int roundtrip(int rounds, int wantVersions, long pauseMs, double timeoutS) throws InterruptedException {
        TreeMap<Integer, Integer> byVersion = new TreeMap<>();
        TreeMap<Integer, Integer> oldByVersion = new TreeMap<>();
        List<Kept> early = new ArrayList<>();
        int tripsOk = 0;
        int oldOk = 0;
        int primaryBefore = ks.status().keysets().get(0).primary();
        long deadline = System.nanoTime() + (long) (timeoutS * 1e9);
        int i = 0;
        while (i < rounds || byVersion.size() < wantVersions) {
            if (System.nanoTime() > deadline) {
                fail("timeout", i + " rounds in " + timeoutS + "s, saw key versions " + byVersion.keySet() + ", want " + wantVersions);
                break;
            }
            byte[] pt = ("record " + i).getBytes(StandardCharsets.UTF_8);
            Map<String, String> ctx = Map.of("tenant", "acme", "record", Integer.toString(i));
            try {
                Encrypted sealed = ks.encrypt(pt, ctx);
                Decrypted opened = ks.decrypt(sealed.ciphertext(), ctx);
                if (!Arrays.equals(opened.plaintext(), pt) || opened.version() != sealed.version()) {
                    fail("round " + i, "decrypt returned another plaintext or version");
                } else {
                    tripsOk++;
                    byVersion.merge(sealed.version(), 1, Integer::sum);
                    if (early.size() < EARLY) {
                        early.add(new Kept(sealed.ciphertext(), ctx, sealed.version(), pt));
                    }
                }
            } catch (KeyshiftException e) {
                fail("round " + i, e);
            }
            if (i % OLD_EVERY == 0 && !early.isEmpty()) {
                Kept k = early.get((i / OLD_EVERY) % early.size());
                try {
                    if (!Arrays.equals(ks.decrypt(k.ct(), k.ctx()).plaintext(), k.pt())) {
                        fail("round " + i + " early record", "another plaintext");
                    } else {
                        oldOk++;
                        oldByVersion.merge(k.version(), 1, Integer::sum);
                    }
                } catch (KeyshiftException e) {
                    fail("round " + i + " early record", e);
                }
            }
            i++;
            if (i % 10 == 0) {
                System.out.println("{\"event\":\"progress\",\"round\":" + i + ",\"versions\":" + byVersion.keySet().toString().replace(" ", "") + "}");
                System.out.flush();
            }
            Thread.sleep(pauseMs);
        }

        int primaryAfter = ks.status().keysets().get(0).primary();
        int rewrapped = 0;
        int batchOk = 0;
        try {
            for (Kept k : early) {
                Rewrapped r = ks.rewrap(k.ct(), k.ctx());
                boolean moved = r.fromVersion() == k.version() && r.version() == primaryAfter && r.rewrapped() == (k.version() != primaryAfter);
                if (!moved || !Arrays.equals(ks.decrypt(r.ciphertext(), k.ctx()).plaintext(), k.pt())) {
                    fail("rewrap", "v" + k.version() + " came back as v" + r.fromVersion() + "->v" + r.version() + " rewrapped=" + r.rewrapped());
                } else if (r.rewrapped()) {
                    rewrapped++;
                }
            }
            List<DecryptItem> items = new ArrayList<>();
            for (Kept k : early) {
                items.add(new DecryptItem(k.ct(), k.ctx()));
            }
            List<Result<Decrypted>> results = ks.decryptBatch(items);
            for (int n = 0; n < results.size(); n++) {
                Result<Decrypted> res = results.get(n);
                if (!res.ok()) {
                    fail("decryptBatch", res.error());
                } else if (Arrays.equals(res.value().plaintext(), early.get(n).pt())) {
                    batchOk++;
                }
            }
            List<EncryptItem> plain = new ArrayList<>();
            for (int n = 0; n < 3; n++) {
                plain.add(new EncryptItem(("batch " + n).getBytes(StandardCharsets.UTF_8), Map.of("n", Integer.toString(n))));
            }
            List<DecryptItem> sealed = new ArrayList<>();
            List<Result<Encrypted>> enc = ks.encryptBatch(plain);
            for (int n = 0; n < enc.size(); n++) {
                sealed.add(new DecryptItem(enc.get(n).get().ciphertext(), plain.get(n).context()));
            }
            List<Result<Decrypted>> opened = ks.decryptBatch(sealed);
            for (int n = 0; n < opened.size(); n++) {
                Result<Decrypted> res = opened.get(n);
                if (!res.ok()) {
                    fail("encryptBatch/decryptBatch", res.error());
                } else if (Arrays.equals(res.value().plaintext(), plain.get(n).plaintext()) && res.value().version() == primaryAfter) {
                    batchOk++;
                }
            }
        } catch (KeyshiftException e) {
            fail("after the rounds", e);
        }

        Map<String, Object> summary = new LinkedHashMap<>();
        summary.put("event", "summary");
        summary.put("language", "java");
        summary.put("rounds", i);
        summary.put("round_trips_ok", tripsOk);
        summary.put("failed", failed);
        summary.put("failures", failures);
        summary.put("by_version", byVersion);
        summary.put("old_decrypted", oldOk);
        summary.put("old_by_version", oldByVersion);
        summary.put("rewrapped", rewrapped);
        summary.put("batch_ok", batchOk);
        summary.put("primary_before", primaryBefore);
        summary.put("primary_after", primaryAfter);
        System.out.println(json(summary));
        return failed == 0 && byVersion.size() >= wantVersions ? 0 : 1;
    }

    private interface Call {
        void run();
    }

    /**
     * Each mistake an app can make, and the code and message it gets.
     * oldCiphertext, sealed earlier with context tenant=acme, is decrypted and
     * rewrapped: under a revoked key version decrypt is refused and rewrap works.
     */
    private int errors(byte[] oldCiphertext) {
        Map<String, Object> cases = new LinkedHashMap<>();
        Map<String, String> ctx = Map.of("tenant", "acme");
        byte[] card = "card 4111".getBytes(StandardCharsets.UTF_8);
        Map<String, Call> calls = new LinkedHashMap<>();
        calls.put("tampered", () -> {
            byte[] ct = ks.encrypt(card, ctx).ciphertext();
            ct[ct.length - 1] ^= 1;
            ks.decrypt(ct, ctx);
        });
        calls.put("wrong_context", () -> ks.decrypt(ks.encrypt(card, ctx).ciphertext(), Map.of("tenant", "globex")));
        calls.put("malformed", () -> ks.decrypt(new byte[] {1, 2, 3}, ctx));
        calls.put("unknown_keyset", () -> ks.encrypt("x".getBytes(StandardCharsets.UTF_8), ctx, "billing"));
        calls.put("bad_context", () -> ks.encrypt("x".getBytes(StandardCharsets.UTF_8), Map.of("", "empty key")));
        calls.put("oversized", () -> ks.encrypt(new byte[(4 << 20) + 1], ctx));
        calls.put("batch_item", () -> {
            byte[] good = ks.encrypt(card, ctx).ciphertext();
            for (Result<Decrypted> r : ks.decryptBatch(List.of(new DecryptItem(good, ctx), new DecryptItem(good, Map.of("tenant", "globex"))))) {
                r.get();
            }
        });
        calls.put("no_socket", () -> {
            try (KeyshiftClient missing = new KeyshiftClient(ks.socketPath() + ".missing", null, java.time.Duration.ofSeconds(5))) {
                missing.status();
            }
        });
        if (oldCiphertext != null) {
            calls.put("old_decrypt", () -> ks.decrypt(oldCiphertext, ctx));
            calls.put("old_rewrap", () -> ks.decrypt(ks.rewrap(oldCiphertext, ctx).ciphertext(), ctx));
        }
        for (Map.Entry<String, Call> c : calls.entrySet()) {
            Map<String, Object> got = new LinkedHashMap<>();
            try {
                c.getValue().run();
                got.put("code", "OK");
                got.put("message", "");
            } catch (KeyshiftException e) {
                got.put("code", e.code());
                got.put("message", e.detail());
                got.put("http_status", e.httpStatus() == 0 ? null : e.httpStatus());
            }
            cases.put(c.getKey(), got);
        }
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("event", "errors");
        out.put("language", "java");
        out.put("cases", cases);
        System.out.println(json(out));
        return 0;
    }

    /** A small JSON writer for the summary: maps, lists, strings, numbers, null. */
    private static String json(Object v) {
        if (v == null) {
            return "null";
        }
        if (v instanceof Number || v instanceof Boolean) {
            return v.toString();
        }
        if (v instanceof Map<?, ?> m) {
            List<String> parts = new ArrayList<>();
            m.forEach((k, x) -> parts.add(json(k.toString()) + ":" + json(x)));
            return "{" + String.join(",", parts) + "}";
        }
        if (v instanceof List<?> l) {
            List<String> parts = new ArrayList<>();
            l.forEach(x -> parts.add(json(x)));
            return "[" + String.join(",", parts) + "]";
        }
        StringBuilder b = new StringBuilder("\"");
        for (char c : v.toString().toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }

    public static void main(String[] args) throws InterruptedException {
        if (args.length == 0 || !(args[0].equals("roundtrip") || args[0].equals("errors"))) {
            System.err.println("usage: App roundtrip [--rounds N] [--want-versions K] [--pause-ms P] [--timeout-s T] | App errors [--old-ciphertext B64]");
            System.exit(2);
        }
        Map<String, String> flags = new LinkedHashMap<>(Map.of("--rounds", "200", "--want-versions", "1", "--pause-ms", "5", "--timeout-s", "60", "--old-ciphertext", ""));
        for (int k = 1; k < args.length; k += 2) {
            if (!flags.containsKey(args[k]) || k + 1 >= args.length) {
                System.err.println("unknown flag or missing value: " + args[k]);
                System.exit(2);
            }
            flags.put(args[k], args[k + 1]);
        }
        int code;
        try (KeyshiftClient ks = KeyshiftClient.fromEnv()) {
            System.err.println("keyshift socket: " + ks.socketPath());
            App app = new App(ks);
            if (args[0].equals("roundtrip")) {
                code = app.roundtrip(Integer.parseInt(flags.get("--rounds")), Integer.parseInt(flags.get("--want-versions")),
                        Long.parseLong(flags.get("--pause-ms")), Double.parseDouble(flags.get("--timeout-s")));
            } else {
                String old = flags.get("--old-ciphertext");
                code = app.errors(old.isEmpty() ? null : java.util.Base64.getDecoder().decode(old));
            }
        } catch (KeyshiftException e) {
            System.err.println("keyshift: " + e.getMessage());
            code = 1;
        } catch (IllegalArgumentException e) {
            System.err.println("bad flag value: " + e.getMessage());
            code = 2;
        }
        System.exit(code);
    }
}
