//! gRPC over HTTP/2, the sans-IO parts: what the HTTP/2 front end
//! (`h2`) needs to know about gRPC to put a call through the same
//! `plan` as an HTTP/1.1 request, with no socket and no clock.
//!
//! - [`wire`]: finds `model_name` (field 1) of a KServe v2 `ModelInferRequest`,
//!   `ModelReadyRequest` or `ModelMetadataRequest` in the first message of a
//!   call by walking the protobuf wire format: a few varints read, tensors
//!   skipped by length, nothing copied or allocated; malformed input is an
//!   error, never a panic.
//! - [`status`]: the gateway's own failures as gRPC statuses (`NOT_FOUND` for
//!   an unknown model, `UNAVAILABLE`, `RESOURCE_EXHAUSTED`, …), a non-gRPC
//!   upstream answer's HTTP status as a gRPC code (the gRPC spec's table), and
//!   `grpc-message` percent-encoding.
//! - [`compressed`]: the same for a compressed first message (`grpc-encoding`
//!   `gzip` or `deflate`), from at most its first 64 KiB inflated.
//! - [`timeout`]: `grpc-timeout` (`1S`, `250m`, at most 8 digits).

pub mod compressed;
pub mod status;
pub mod timeout;
pub mod wire;

use std::borrow::Cow;

/// What a call's first bytes say about its model, compressed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstModel<'a> {
    /// Field 1 of the first message (borrowed from the body, or inflated).
    Found(Cow<'a, str>),
    /// No model in the first message, or one that cannot be read (a
    /// compression the gateway does not inflate): the call is routed by its
    /// headers.
    Absent,
    /// More bytes are needed.
    NeedMore,
}

/// `model_name` of a call's first message at the start of `body`; `encoding`
/// is the call's `grpc-encoding`, used when the message is compressed.
pub fn first_model<'a>(
    body: &'a [u8],
    encoding: Option<&[u8]>,
) -> Result<FirstModel<'a>, wire::WireError> {
    Ok(match wire::model_name(body)? {
        wire::Scan::Found(m) => FirstModel::Found(Cow::Borrowed(m)),
        wire::Scan::Absent => FirstModel::Absent,
        wire::Scan::NeedMore => FirstModel::NeedMore,
        wire::Scan::Compressed => match compressed::Encoding::from_header(encoding) {
            None => FirstModel::Absent,
            Some(enc) => match compressed::model_name(body, enc)? {
                compressed::Inflated::Found(m) => FirstModel::Found(Cow::Owned(m)),
                compressed::Inflated::Absent => FirstModel::Absent,
                compressed::Inflated::NeedMore => FirstModel::NeedMore,
            },
        },
    })
}

/// Whether a request's `content-type` says gRPC (`application/grpc`,
/// `application/grpc+proto`, `application/grpc;…`): the routing table's test,
/// which GRPCRoute matches apply.
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(shardgate_routing::is_grpc_content_type)
}

/// The KServe v2 service whose calls name a model in field 1.
pub const KSERVE_SERVICE: &str = "inference.GRPCInferenceService";

/// Whether a gRPC call to `path` (`/package.Service/Method`) carries a model
/// name in field 1 of its first message: KServe v2 `ModelInfer`,
/// `ModelStreamInfer`, `ModelReady` and `ModelMetadata`.
pub fn names_model(path: &str) -> bool {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    service == KSERVE_SERVICE
        && matches!(
            method,
            "ModelInfer" | "ModelStreamInfer" | "ModelReady" | "ModelMetadata"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(Some(b"application/grpc")));
        assert!(is_grpc(Some(b"application/grpc+proto")));
        assert!(is_grpc(Some(b"Application/GRPC;charset=x")));
        assert!(!is_grpc(Some(b"application/grpcx")));
        assert!(!is_grpc(Some(b"application/json")));
        assert!(!is_grpc(None));
    }

    #[test]
    fn kserve_methods_name_models() {
        assert!(names_model("/inference.GRPCInferenceService/ModelInfer"));
        assert!(names_model(
            "/inference.GRPCInferenceService/ModelStreamInfer"
        ));
        assert!(names_model("/inference.GRPCInferenceService/ModelReady"));
        assert!(!names_model("/inference.GRPCInferenceService/ServerLive"));
        assert!(!names_model("/grpc.health.v1.Health/Check"));
        assert!(!names_model("ModelInfer"));
    }
}
