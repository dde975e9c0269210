//! The gateway crate's modules import each other in one direction only: this
//! reads `gateway/src/*.rs`, collects every `crate::module` reference outside
//! comments and `#[cfg(test)]` sections, and fails on any cycle, naming it.
//! The intended order, top to bottom, is in `gateway/src/lib.rs`'s crate doc.

use std::collections::{BTreeMap, BTreeSet};

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let files: Vec<_> = std::fs::read_dir(dir)
        .expect("read gateway/src")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    let names: BTreeSet<String> = files
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_string))
        .filter(|n| n != "lib" && n != "main")
        .collect();
    let mut g = BTreeMap::new();
    for p in &files {
        let name = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if !names.contains(&name) {
            continue;
        }
        let text = std::fs::read_to_string(p).expect("read module");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut deps = BTreeSet::new();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let m: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if names.contains(&m) && m != name {
                    deps.insert(m);
                }
            }
        }
        g.insert(name, deps);
    }
    g
}

/// A cycle through `from`, if there is one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeSet<String>>,
        at: &str,
        goal: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g.get(at).into_iter().flatten() {
            if next == goal {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, next, goal, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_string()];
    walk(g, from, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_two_gateway_modules_import_each_other_in_a_circle() {
    let g = graph();
    assert!(g.len() > 10, "found too few modules: {g:?}");
    assert!(
        g["proxy"].contains("plan"),
        "the scan must see real imports"
    );
    for m in g.keys() {
        if let Some(c) = cycle(&g, m) {
            panic!("import cycle: {} -> {m}", c.join(" -> "));
        }
    }
}

#[test]
fn the_pure_modules_import_no_io_module() {
    let g = graph();
    for pure in ["plan", "attempt", "error", "report", "state", "notify"] {
        let io: Vec<_> = g[pure]
            .iter()
            .filter(|d| {
                [
                    "proxy", "upstream", "shard", "batch", "control", "server", "admin",
                ]
                .contains(&d.as_str())
            })
            .collect();
        assert!(io.is_empty(), "{pure} imports {io:?}");
    }
}
