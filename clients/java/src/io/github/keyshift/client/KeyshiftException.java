package io.github.keyshift.client;

/**
 * An error from the keyshift sidecar: the gRPC code name it returned
 * ({@code "InvalidArgument"}, {@code "NotFound"}, {@code "FailedPrecondition"},
 * {@code "Unavailable"}, {@code "PermissionDenied"}, ...) and its message.
 * Unchecked, as gRPC-Java's {@code StatusRuntimeException} is.
 */
public class KeyshiftException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    private final String code;
    private final String detail;
    private final int httpStatus;

    /**
     * @param code the gRPC code name
     * @param message the sidecar's message
     * @param httpStatus the reply's HTTP status, or 0 when the error came from no reply
     *     (a batch item, an unreachable sidecar)
     * @param cause the underlying failure, or null
     */
    public KeyshiftException(String code, String message, int httpStatus, Throwable cause) {
        super(code + ": " + message, cause);
        this.code = code;
        this.detail = message;
        this.httpStatus = httpStatus;
    }

    /** The gRPC code name, such as {@code "InvalidArgument"}. */
    public String code() {
        return code;
    }

    /** The sidecar's message alone, without the code. */
    public String detail() {
        return detail;
    }

    /** The reply's HTTP status, or 0 when the error came from no reply. */
    public int httpStatus() {
        return httpStatus;
    }
}
