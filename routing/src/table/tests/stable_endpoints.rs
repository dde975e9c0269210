//! `RoutingTable::build_next`: endpoint indices survive a configuration change.

use super::*;

fn with_slices(addrs: &[&str]) -> String {
    let mut y = format!(
        "{GW}{}",
        route(
            "r",
            "  rules:\n  - backendRefs:\n    - name: svc\n      port: 8000\n"
        )
    );
    for (i, a) in addrs.iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}\n  labels: {{kubernetes.io/service-name: svc}}\naddressType: IPv4\nports: [{{port: 8000}}]\nendpoints: [{{addresses: [\"{a}\"]}}]\n"
        ));
    }
    y
}

fn next(yaml: &str, prev: &RoutingTable) -> RoutingTable {
    RoutingTable::build_next(&config(yaml), &mut |_, _| Vec::new(), prev).unwrap()
}

fn live(t: &RoutingTable) -> Vec<(usize, String)> {
    t.endpoints()
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.retired)
        .map(|(i, e)| (i, e.addr.ip().to_string()))
        .collect()
}

fn group(t: &RoutingTable) -> Vec<usize> {
    let r = t.rule(0).unwrap();
    r.backends[0].endpoints.clone()
}

#[test]
fn endpoints_keep_their_index_across_rebuilds() {
    let a = build(&with_slices(&["10.0.0.1", "10.0.0.2"]));
    assert_eq!(live(&a), [(0, "10.0.0.1".into()), (1, "10.0.0.2".into())]);
    assert!(a.endpoints().iter().all(|e| !e.retired));

    // .1 goes, .3 comes: .2 keeps index 1, .1 stays as a retired entry.
    let b = next(&with_slices(&["10.0.0.2", "10.0.0.3"]), &a);
    assert_eq!(b.endpoints().len(), 3);
    assert!(b.endpoints()[0].retired);
    assert_eq!(live(&b), [(1, "10.0.0.2".into()), (2, "10.0.0.3".into())]);
    assert_eq!(group(&b), [1, 2], "no group names a retired endpoint");

    // .1 comes back under its old index; .3 retires.
    let c = next(&with_slices(&["10.0.0.1", "10.0.0.2"]), &b);
    assert_eq!(c.endpoints().len(), 3);
    assert_eq!(live(&c), [(0, "10.0.0.1".into()), (1, "10.0.0.2".into())]);
    assert!(c.endpoints()[2].retired);
    let mut g = group(&c);
    g.sort_unstable();
    assert_eq!(g, [0, 1]);

    // An unchanged configuration rebuilds to the same table.
    let d = next(&with_slices(&["10.0.0.1", "10.0.0.2"]), &c);
    assert_eq!(d.endpoints(), c.endpoints());
}
