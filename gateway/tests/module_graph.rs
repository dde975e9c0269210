//! The gateway crate's modules import each other in one direction only: this
//! reads every file under `gateway/src/` (a folder's files count as its
//! module; test-module files are left out), collects every `crate::module`
//! reference outside comments and `#[cfg(test)]` sections (`crate::{a, b}`
//! groups included), and fails on any cycle, naming it. Inside a folder
//! module, the sibling files that name each other through `super::` must not
//! form a cycle either. The same two checks run over every other crate of the
//! workspace. The intended order of the gateway's modules, top to bottom, is
//! in `gateway/src/lib.rs`'s crate doc.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, at any depth, less the files of test
/// modules (`tests.rs`, `*_tests.rs`: each is declared under `#[cfg(test)]`).
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read a source folder") {
        let p = e.expect("dir entry").path();
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs")
            && stem != "tests"
            && !stem.ends_with("_tests")
        {
            out.push(p);
        }
    }
    out
}

/// A file's code before its `#[cfg(test)]` section, comment lines left out.
fn code_of(p: &Path) -> String {
    let text = std::fs::read_to_string(p).expect("read module");
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifier at the start of `s`.
fn ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The first path segment after each `prefix` in `code`: `crate::a::b` gives
/// `a`, and a group `crate::{a::X, b}` gives `a` and `b`.
fn segments_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        let rest = &code[i + prefix.len()..];
        let Some(group) = rest.strip_prefix('{') else {
            out.insert(ident(rest));
            continue;
        };
        // The group's items at depth 0, each led by a segment.
        let (mut depth, mut item_start) = (0usize, 0usize);
        for (j, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    out.insert(ident(&group[item_start..j]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.insert(ident(&group[item_start..j]));
                    item_start = j + 1;
                }
                _ => {}
            }
        }
    }
    out.remove("");
    out
}

/// The crate's top-level modules (a file `src/x.rs`, or a folder `src/x/`
/// whose files all count as `x`), each with the modules it names through
/// `crate::`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    graph_of(&gateway_src())
}

fn gateway_src() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
}

/// [`graph`] for the crate whose sources are in `src`.
fn graph_of(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let src = src.to_path_buf();
    let module_of = |p: &Path| -> String {
        let rel = p.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let first = first.as_os_str().to_str().unwrap_or_default();
        first.strip_suffix(".rs").unwrap_or(first).to_string()
    };
    let files = rust_files(&src);
    let names: BTreeSet<String> = files
        .iter()
        .map(|p| module_of(p))
        .filter(|n| n != "lib" && n != "main")
        .collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in &files {
        let name = module_of(p);
        if !names.contains(&name) {
            continue;
        }
        let deps: Vec<_> = segments_after(&code_of(p), "crate::")
            .into_iter()
            .filter(|m| names.contains(m) && *m != name)
            .collect();
        g.entry(name).or_default().extend(deps);
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

#[test]
fn the_files_of_a_folder_module_import_each_other_in_one_direction() {
    let folders = check_folders(&gateway_src());
    assert!(folders >= 3, "found too few folder modules");
}

/// Panics on a cycle among the sibling files of a folder module of `src`
/// (through `super::`); returns how many folders it read.
fn check_folders(src: &Path) -> usize {
    let mut folders = 0;
    for e in std::fs::read_dir(src).expect("read a crate's src") {
        let dir = e.expect("dir entry").path();
        if !dir.is_dir() {
            continue;
        }
        folders += 1;
        let files: Vec<_> = rust_files(&dir)
            .into_iter()
            .filter(|p| p.parent() == Some(dir.as_path()))
            .collect();
        let stem = |p: &Path| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string()
        };
        let siblings: BTreeSet<String> = files
            .iter()
            .map(|p| stem(p))
            .filter(|n| n != "mod")
            .collect();
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for p in files.iter().filter(|p| siblings.contains(&stem(p))) {
            let me = stem(p);
            let deps: Vec<_> = segments_after(&code_of(p), "super::")
                .into_iter()
                .filter(|m| siblings.contains(m) && *m != me)
                .collect();
            g.entry(me).or_default().extend(deps);
        }
        for m in g.keys() {
            if let Some(c) = cycle(&g, m) {
                panic!(
                    "import cycle in {}: {} -> {m}",
                    dir.display(),
                    c.join(" -> ")
                );
            }
        }
    }
    folders
}

#[test]
fn no_crate_of_the_workspace_has_an_import_cycle_either() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("workspace manifest");
    let members = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("a members line");
    let crates: Vec<&str> = members.split('"').skip(1).step_by(2).collect();
    assert!(crates.len() >= 8, "found too few crates: {crates:?}");
    for c in crates {
        let src = root.join(c).join("src");
        let g = graph_of(&src);
        for m in g.keys() {
            if let Some(cycle) = cycle(&g, m) {
                panic!("import cycle in {c}: {} -> {m}", cycle.join(" -> "));
            }
        }
        check_folders(&src);
    }
}

#[test]
fn the_scan_reads_groups_and_folders() {
    let seen = segments_after(
        "use crate::{a::X, b, c::{d, e}};\nx(crate::f::g)",
        "crate::",
    );
    let want: BTreeSet<String> = ["a", "b", "c", "f"].map(String::from).into();
    assert_eq!(seen, want);
    let g = graph();
    assert!(
        g["h2"].contains("plan"),
        "files under h2/ count as h2: {g:?}"
    );
}
