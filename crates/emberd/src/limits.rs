//! The status of a message over the size limits, as containerd's clients see it.
//!
//! containerd's server (grpc-go) answers a request larger than its receive limit
//! with `RESOURCE_EXHAUSTED`; tonic says `OUT_OF_RANGE`. This response layer turns
//! tonic's answer into containerd's, so that clients retrying or reporting on the
//! code behave alike. The limits themselves are set on each service (see
//! `services::limited!`).

use tonic::codegen::http::{HeaderValue, Response};
use tonic::Code;

/// Gives a too-large message's status containerd's code.
pub fn resource_exhausted<B>(mut resp: Response<B>) -> Response<B> {
    let h = resp.headers_mut();
    let out_of_range = h
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == (Code::OutOfRange as i32).to_string().as_bytes());
    let too_large = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
    if out_of_range && too_large {
        let code = (Code::ResourceExhausted as i32).to_string();
        h.insert(
            "grpc-status",
            HeaderValue::from_str(&code).expect("a number is a header value"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_size_errors_change() {
        let too_large = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 17825792 bytes, the limit is: 16777216 bytes",
        );
        let r = resource_exhausted(too_large.into_http::<()>());
        assert_eq!(r.headers()["grpc-status"], "8");
        let other = tonic::Status::out_of_range("offset past the end");
        let r = resource_exhausted(other.into_http::<()>());
        assert_eq!(r.headers()["grpc-status"], "11");
    }
}
