//! gRPC status codes, and how the gateway's answers become them.
//!
//! [`of_failure`] maps the gateway's own [`Failure`]s (the same ones an
//! HTTP/1.1 client gets as OpenAI-style JSON) to a gRPC status, by code first
//! and HTTP status second: an unknown model is `NOT_FOUND`, an unknown route
//! `UNIMPLEMENTED`, no healthy endpoint / upstream failure `UNAVAILABLE`, shed
//! or rate-limited `RESOURCE_EXHAUSTED`, a timeout `DEADLINE_EXCEEDED`, a bad
//! request `INVALID_ARGUMENT`, a missing or bad token `UNAUTHENTICATED`.
//! [`of_http`] is the gRPC spec's table for an upstream that answered HTTP
//! without `grpc-status`. [`encode_message`] percent-encodes `grpc-message`.

use crate::error::Failure;

/// A gRPC status code (`grpc-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The `grpc-status` value.
    pub fn as_str(self) -> &'static str {
        const S: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        S[self as usize]
    }
}

/// The gRPC status for one of the gateway's own failures.
pub fn of_failure(f: &Failure) -> Code {
    match f.code {
        "model_not_found" => return Code::NotFound,
        "route_not_found" => return Code::Unimplemented,
        "request_timeout" | "upstream_timeout" => return Code::DeadlineExceeded,
        _ => {}
    }
    match f.status {
        400 | 413 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 | 504 => Code::DeadlineExceeded,
        429 | 431 => Code::ResourceExhausted,
        502 | 503 => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// The gRPC status of an HTTP answer that carries none (gRPC spec,
/// "HTTP to gRPC status code mapping").
pub fn of_http(status: u16) -> Code {
    match status {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// Appends `msg` percent-encoded as `grpc-message` wants it: bytes outside
/// printable ASCII, and `%`, as `%XX`.
pub fn encode_message(msg: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in msg.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Side, UpstreamError, UpstreamErrorKind};

    #[test]
    fn gateway_failures_map_to_grpc_statuses() {
        assert_eq!(of_failure(&Failure::unknown_model("m")), Code::NotFound);
        assert_eq!(
            of_failure(&Failure::no_route("POST", "/x/y")),
            Code::Unimplemented
        );
        assert_eq!(of_failure(&Failure::no_endpoint("r")), Code::Unavailable);
        assert_eq!(of_failure(&Failure::saturated("r")), Code::Unavailable);
        assert_eq!(
            of_failure(&Failure::shed_saturated("r")),
            Code::ResourceExhausted
        );
        assert_eq!(
            of_failure(&Failure::rate_limited(Some("m"), 1_000_000_000, None)),
            Code::ResourceExhausted
        );
        assert_eq!(
            of_failure(&Failure::request_timeout()),
            Code::DeadlineExceeded
        );
        assert_eq!(
            of_failure(&Failure::upstream_timeout("x")),
            Code::DeadlineExceeded
        );
        assert_eq!(
            of_failure(&Failure::bad_json("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            of_failure(&Failure::unauthorized(true, "no token", "Bearer")),
            Code::Unauthenticated
        );
        assert_eq!(
            of_failure(&Failure::upstream_failed("x")),
            Code::Unavailable
        );
        assert_eq!(
            of_failure(&UpstreamError::new(UpstreamErrorKind::Protocol, "x").to_failure()),
            Code::Unavailable
        );
        assert_eq!(
            of_failure(&Failure::with(Side::Gateway, 500, "t", "c", String::new())),
            Code::Internal
        );
        assert_eq!(Code::Unauthenticated.as_str(), "16");
        assert_eq!(Code::Ok.as_str(), "0");
    }

    #[test]
    fn http_statuses_map_per_the_grpc_spec() {
        assert_eq!(of_http(400), Code::Internal);
        assert_eq!(of_http(404), Code::Unimplemented);
        assert_eq!(of_http(503), Code::Unavailable);
        assert_eq!(of_http(500), Code::Unknown);
    }

    #[test]
    fn messages_are_percent_encoded() {
        let mut s = String::new();
        encode_message("50% off: café\n", &mut s);
        assert_eq!(s, "50%25 off: caf%C3%A9%0A");
    }
}
