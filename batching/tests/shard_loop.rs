//! The whole recipe a shard runs, on a virtual clock, against the fake server:
//! classify → admit → push → poll_ready → merge → server → split → release. Every
//! client gets exactly what the server answers it alone, within its queue's bound.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use shardgate_batching::{
    classify, merge, split, Admission, AdmissionConfig, BatchPolicy, BatchSpec, Batcher, Decision,
    FlushReason, Pending, QueueSpec,
};

struct Req {
    id: usize,
    body: Vec<u8>,
}

#[test]
fn a_shard_batches_embeddings_and_answers_each_client_alone() {
    let t0 = Instant::now();
    let policy = BatchPolicy::from_spec(&BatchSpec {
        max_batch_size: Some(8),
        max_latency: Some(Duration::from_millis(20)),
        adaptive_enabled: true,
        target_utilization: Some(0.8),
        queues: vec![QueueSpec {
            name: "real-time".into(),
            max_latency: Some(Duration::from_millis(5)),
            max_batch_size: Some(4),
        }],
    })
    .unwrap();
    let mut batcher: Batcher<Req> = Batcher::new(policy);
    let mut admission = Admission::new(64, AdmissionConfig::default());
    let path = "/v1/embeddings";
    let mut answers: Vec<Option<(Vec<u8>, Duration)>> = Vec::new();
    let mut arrivals = Vec::new();
    let mut reasons = Vec::new();
    let mut upstream_calls = 0;
    // 40 requests, one every millisecond, two models, some real-time, some unmergeable;
    // the backend is busy (0.9) for the first 30 ms, then idle (0.1).
    for step in 0..80u64 {
        let now = t0 + Duration::from_millis(step);
        if step < 40 {
            let id = answers.len();
            let model = if step % 3 == 0 { "a" } else { "b" };
            let body = if step % 7 == 0 {
                format!(r#"{{"model":"{model}","input":""}}"#)
            } else {
                format!(r#"{{"model":"{model}","input":["req {id}","more {id}"]}}"#)
            };
            let header = if step % 5 == 0 {
                Some("real-time")
            } else {
                None
            };
            let queue = batcher.queue_id(header).unwrap();
            assert_eq!(admission.try_acquire(0, None), Decision::Admit);
            let class = classify(path, body.as_bytes()).unwrap();
            let item = Pending {
                queue,
                key: class.as_ref().map(|c| c.key.clone()),
                items: class.map_or(1, |c| c.inputs),
                payload: Req {
                    id,
                    body: body.into_bytes(),
                },
            };
            batcher.push(item, now).map_err(|r| r.reason).unwrap();
            answers.push(None);
            arrivals.push(now);
        }
        let util = if step < 30 { 0.9 } else { 0.1 };
        while let Some(batch) = batcher.poll_ready(now, Some(util)) {
            upstream_calls += 1;
            reasons.push(batch.info.reason);
            let bodies: Vec<&[u8]> = batch.members.iter().map(|r| r.body.as_slice()).collect();
            let parts = match &batch.key {
                Some(key) => {
                    let merged = merge(key, &bodies).unwrap();
                    let (status, resp) = support::serve(path, &merged.body);
                    assert_eq!(status, 200);
                    split(&resp, &merged.plan).unwrap()
                }
                None => vec![support::serve(path, bodies[0]).1],
            };
            for (r, part) in batch.members.iter().zip(parts) {
                answers[r.id] = Some((part, now - arrivals[r.id]));
                admission.release();
            }
        }
    }
    assert!(batcher.is_empty());
    assert_eq!(admission.in_use(), 0);
    for (id, a) in answers.iter().enumerate() {
        let (body, waited) = a.as_ref().unwrap();
        let step = id as u64;
        let model = if step % 3 == 0 { "a" } else { "b" };
        let alone = if step % 7 == 0 {
            format!(r#"{{"model":"{model}","input":""}}"#)
        } else {
            format!(r#"{{"model":"{model}","input":["req {id}","more {id}"]}}"#)
        };
        assert_eq!(
            body,
            &support::serve(path, alone.as_bytes()).1,
            "request {id}"
        );
        let bound = if step % 5 == 0 { 5 } else { 20 };
        assert!(
            *waited <= Duration::from_millis(bound),
            "request {id} waited {waited:?}"
        );
    }
    // Fewer upstream calls than requests; every flush reason but drain shows up.
    assert!(upstream_calls < 40, "{upstream_calls}");
    for r in [
        FlushReason::Full,
        FlushReason::Deadline,
        FlushReason::Adaptive,
        FlushReason::Alone,
    ] {
        assert!(reasons.contains(&r), "{r:?} missing from {reasons:?}");
    }
}
