//! The module graph has no circles: no module uses a module that uses it back, in either crate,
//! between top-level modules (`engine` → `conversation` → `core`, …) and between the modules of
//! one directory (`conversation/fanout.rs` → `conversation/ordering.rs`, …). A directory's own
//! `mod.rs` is its children's parent and is left out of its children's graph.
//!
//! `cargo test --test integration layers` runs it; a failure names the circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path below its crate root, e.g. `["conversation", "fanout"]`.
type ModPath = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/conversation/fanout.rs` → `["conversation", "fanout"]`; `mod.rs` names its directory.
fn mod_path(root: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: ModPath = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib" || l == "main") {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its `#[cfg(test)]` tail (tests may use
/// anything).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The module paths `src` names after `prefix` (`crate::`, `super::`), e.g. `crate::a::b::C`
/// gives `["a", "b", "C"]` and `crate::{a::x, b}` gives `["a", "x"]` and `["b"]`.
fn paths_after(src: &str, prefix: &str) -> Vec<ModPath> {
    fn walk(s: &str, base: &ModPath, out: &mut Vec<ModPath>) -> usize {
        // Reads one path (with nested groups) at the start of `s`; returns how much it read.
        let mut path = base.clone();
        let mut i = 0;
        loop {
            let rest = &s[i..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut j = 0;
                loop {
                    let inner = &group[j..];
                    let skip = inner.len() - inner.trim_start().len();
                    j += skip;
                    if group[j..].starts_with('}') {
                        return i + 1 + j + 1;
                    }
                    j += walk(&group[j..], &path, out);
                    let inner = &group[j..];
                    let skip = inner.len() - inner.trim_start().len();
                    j += skip;
                    if group[j..].starts_with(',') {
                        j += 1;
                    }
                    if j >= group.len() {
                        return s.len();
                    }
                }
            }
            let id = ident(rest);
            if id.is_empty() {
                break;
            }
            path.push(id.to_owned());
            i += id.len();
            if s[i..].starts_with("::") {
                i += 2;
            } else {
                break;
            }
        }
        if path.len() > base.len() {
            out.push(path);
        }
        i.max(1)
    }
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        walk(rest, &Vec::new(), &mut out);
    }
    out
}

/// A circle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut c = stack[from..].to_vec();
                c.push(n.to_owned());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

/// Every edge between modules of the crate rooted at `root`, as (from, to) module paths, and the
/// set of module paths that exist.
fn edges(root: &Path) -> (Vec<(ModPath, ModPath)>, BTreeSet<ModPath>) {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let modules: BTreeSet<ModPath> = files.iter().map(|f| mod_path(root, f)).collect();
    // The longest existing module path that starts `p`.
    let resolve = |p: &[String]| -> Option<ModPath> {
        (1..=p.len()).rev().map(|n| p[..n].to_vec()).find(|m| modules.contains(m))
    };
    let mut out = Vec::new();
    for f in &files {
        let from = mod_path(root, f);
        if from.first().is_some_and(|m| m == "bin") {
            continue;
        }
        let src = code(&std::fs::read_to_string(f).unwrap());
        // `super::` of a file `a/b.rs` is `a`; of `a/b/mod.rs` it is `a` too.
        let parent: ModPath = from[..from.len().saturating_sub(1)].to_vec();
        let mut named: Vec<ModPath> = paths_after(&src, "crate::");
        for p in paths_after(&src, "super::") {
            let mut full = parent.clone();
            full.extend(p);
            named.push(full);
        }
        for p in named {
            if let Some(to) = resolve(&p) {
                if to != from {
                    out.push((from.clone(), to));
                }
            }
        }
    }
    (out, modules)
}

/// Checks one crate: the top-level modules, then the children of each directory module.
fn check_crate(root: &Path) {
    let (edges, modules) = edges(root);
    // Top level: an edge between two different top-level modules.
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in &edges {
        if let (Some(a), Some(b)) = (from.first(), to.first()) {
            if a != b {
                top.entry(a.clone()).or_default().insert(b.clone());
            }
        }
    }
    assert!(top.len() >= 5, "{}: too few module uses found: {top:?}", root.display());
    if let Some(c) = find_cycle(&top) {
        panic!("{}: the modules {} use each other in a circle", root.display(), c.join(" -> "));
    }
    // Within each directory module: edges between its children (siblings, and what is below them).
    let dirs: BTreeSet<ModPath> = modules.iter().filter(|m| m.len() >= 2).map(|m| m[..m.len() - 1].to_vec()).collect();
    for dir in dirs {
        let child = |m: &ModPath| -> Option<String> {
            (m.len() > dir.len() && m[..dir.len()] == dir[..]).then(|| m[dir.len()].clone())
        };
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in &edges {
            if let (Some(a), Some(b)) = (child(from), child(to)) {
                if a != b {
                    g.entry(a).or_default().insert(b);
                }
            }
        }
        if let Some(c) = find_cycle(&g) {
            panic!("{}: in {}, {} use each other in a circle", root.display(), dir.join("/"), c.join(" -> "));
        }
    }
}

#[test]
fn no_module_uses_a_module_that_uses_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    check_crate(&root.join("actors/src"));
    check_crate(&root.join("src"));
}

#[test]
fn the_check_sees_circles() {
    // The parser and the circle finder on a made-up crate: a → b → c → a is found, and the
    // grouped, nested and `super::` forms count.
    let names = paths_after("use crate::{a::X, b::{self, c::Y}}; fn f() { crate::d::g(); super::e::h(); }", "crate::");
    let names: Vec<String> = names.iter().map(|p| p.join("::")).collect();
    assert_eq!(names, ["a::X", "b::self", "b::c::Y", "d::g"]);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        g.entry(a.into()).or_default().insert(b.into());
    }
    let c = find_cycle(&g).expect("a circle");
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4, "{c:?}");
    g.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&g), None);
}
