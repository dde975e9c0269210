//! `shardgate check` and `--help` from the command line.

#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

fn shardgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn seed_paths() -> Vec<String> {
    let here = env!("CARGO_MANIFEST_DIR");
    let v = vec![
        format!("{here}/tests/data/seed-manifests.yaml"),
        format!("{here}/../../shared/examples/seed-manifests.yaml"),
    ];
    for path in &v {
        assert!(
            std::path::Path::new(path).is_file(),
            "seed manifests {path} missing"
        );
    }
    v
}

#[test]
fn every_seed_manifest_loads_with_check() {
    for path in seed_paths() {
        let (code, out, err) = shardgate(&["check", "-c", &path]);
        assert_eq!(code, 0, "check failed on {path}:\n{out}\n{err}");
        for kind in [
            "GatewayClass",
            "InferenceConfig",
            "Gateway",
            "HTTPRoute",
            "InferencePolicy",
            "BatchingPolicy",
            "SecurityPolicy",
            "ServiceMonitor",
        ] {
            assert!(out.contains(kind), "{kind} missing from the report:\n{out}");
        }
        assert!(out.contains("accepted, not enforced"), "{out}");
        assert!(out.contains("configuration OK"), "{out}");
    }
}

#[test]
fn the_demo_config_checks() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/demo.yaml");
    let (code, out, err) = shardgate(&["check", "-c", path]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("127.0.0.1:18001"), "{out}");
}

#[test]
fn check_names_file_document_and_field() {
    let dir = std::env::temp_dir().join(format!("shardgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  gatewayClassName: x\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: 8080\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: broken\nspec:\n  parentRefs:\n  - name: gw\n  rules:\n  - matches:\n    - path:\n        type: Prefix\n        value: /v1\n",
    )
    .unwrap();
    let (code, out, err) = shardgate(&["check", "-c", bad.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("document 1"), "{err}");
    assert!(err.contains("broken"), "{err}");
    assert!(err.contains("spec.rules[0].matches[0].path.type"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_documents_the_commands() {
    let (code, out, _) = shardgate(&["--help"]);
    assert_eq!(code, 0);
    for word in ["serve", "check", "demo"] {
        assert!(out.contains(word), "{out}");
    }
    let (_, out, _) = shardgate(&["serve", "--help"]);
    for flag in [
        "--shards",
        "--admin-addr",
        "--max-body-bytes",
        "--force-epoll",
        "--drain-timeout",
    ] {
        assert!(out.contains(flag), "{flag} missing:\n{out}");
    }
}

#[test]
fn the_deploy_configmap_carries_the_demo_config() {
    let here = env!("CARGO_MANIFEST_DIR");
    let cm = std::fs::read_to_string(format!("{here}/../deploy/configmap.yaml")).unwrap();
    let demo = std::fs::read_to_string(format!("{here}/demo.yaml")).unwrap();
    let start = cm.find("gateway.yaml: |\n").unwrap() + "gateway.yaml: |\n".len();
    let embedded: String = cm[start..]
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        embedded.trim_end(),
        demo.trim_end(),
        "deploy/configmap.yaml is out of date with gateway/demo.yaml"
    );
}

#[test]
fn check_refuses_deep_and_oversized_configs_with_exit_2_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("shardgate-cli-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let deep = dir.join("deep.yaml");
    std::fs::write(
        &deep,
        format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
    )
    .unwrap();
    let (code, _, err) = shardgate(&["check", "-c", deep.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("deep.yaml: document 0: nested deeper than the limit of 64 levels"),
        "{err}"
    );
    let (code, _, err) = shardgate(&[
        "check",
        "-c",
        deep.to_str().unwrap(),
        "--max-config-bytes",
        "1000",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "deep.yaml: configuration larger than the limit of 1000 bytes (--max-config-bytes)"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
