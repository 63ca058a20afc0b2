package io.github.keyshift.client;

import java.io.IOException;

/**
 * The sidecar's socket could not be connected to, or the connection broke
 * mid-call. Its code is {@code "Unavailable"}, as gRPC reports a transport
 * failure; the IOException is its cause.
 */
public class SidecarUnreachableException extends KeyshiftException {
    private static final long serialVersionUID = 1L;

    private final String socketPath;

    /** @param socketPath the socket tried; @param cause why it failed */
    public SidecarUnreachableException(String socketPath, IOException cause) {
        super("Unavailable", "cannot reach the keyshift sidecar at " + socketPath + ": " + describe(cause)
                + " (is the sidecar running? $" + KeyshiftClient.ENV_SOCKET + " names its socket)", 0, cause);
        this.socketPath = socketPath;
    }

    /** The socket path that could not be reached. */
    public String socketPath() {
        return socketPath;
    }

    private static String describe(IOException e) {
        String m = e.getMessage();
        String kind = e.getClass().getSimpleName();
        return m == null || m.isEmpty() ? kind : kind + ": " + m;
    }
}
