//! The layers of ARCHITECTURE.md, read from the source tree: a module's layer is the folder it
//! sits in under `src/` (`core/`, `machine/`, `io/`, or a feature's folder: `agent/`,
//! `emulator/`, `wire/`). Dependencies point down only (core ← machine ← io ← features), there
//! are no module cycles, and neither the core nor the machine names a clock, the network, the
//! file system, threads or an async runtime. A new folder that is none of these fails until it
//! is given a layer here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each layer's folder and rank: a module may use modules of its own rank or below. The
/// features sit above the I/O edge and may use each other.
const LAYERS: &[(&str, u8)] =
    &[("core", 0), ("machine", 1), ("io", 2), ("agent", 3), ("emulator", 3), ("wire", 3), ("issue", 3)];
/// What no module of the core or the machine may name.
const PURE_FORBIDDEN: &[&str] =
    &["tokio", "reqwest", "hyper", "rustls", "SystemTime::now", "Instant::now", "std::net", "std::fs", "std::thread"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `core/proof/mod.rs` → `core::proof`, `core/token.rs` → `core::token`; `None` for `lib.rs`.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let last = parts.pop()?;
    match last.as_str() {
        "lib.rs" if parts.is_empty() => None,
        "mod.rs" => Some(parts.join("::")),
        file => {
            parts.push(file.trim_end_matches(".rs").to_owned());
            Some(parts.join("::"))
        }
    }
}

/// The code of a file without its test module (they sit at the end, by convention) and without
/// comments.
fn code_of(text: &str) -> String {
    let tests = ["#[cfg(test)]\nmod tests", "#[cfg(all(test, unix))]\nmod tests"];
    let end = tests.iter().filter_map(|t| text.find(t)).min().unwrap_or(text.len());
    let code = &text[..end];
    code.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Files included into another module with `#[path]` (a generated table): part of their parent.
fn included_by_path(modules: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (m, code) in modules {
        for (i, _) in code.match_indices("#[path = \"") {
            let file = code[i + 10..].split('"').next().unwrap_or_default();
            let parent = m.rsplit_once("::").map_or("", |(p, _)| p);
            let child = file.trim_end_matches(".rs");
            out.insert(if parent.is_empty() { child.to_owned() } else { format!("{parent}::{child}") });
        }
    }
    out
}

/// Module path → its code (without tests and comments).
fn modules() -> BTreeMap<String, String> {
    let root = src();
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut out = BTreeMap::new();
    for path in all {
        let rel = path.strip_prefix(&root).unwrap();
        if let Some(m) = module_of(rel) {
            out.insert(m, code_of(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    for m in included_by_path(&out) {
        out.remove(&m);
    }
    out
}

/// Expands `crate::{a::b, c::{d, e}}` and `crate::a::b` into the paths they name.
fn crate_paths(code: &str) -> Vec<String> {
    fn expand(prefix: &str, group: &str, out: &mut Vec<String>) {
        let mut depth = 0;
        let mut item = String::new();
        let mut items = Vec::new();
        for c in group.chars() {
            match c {
                '{' => {
                    depth += 1;
                    item.push(c);
                }
                '}' => {
                    depth -= 1;
                    item.push(c);
                }
                ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                _ => item.push(c),
            }
        }
        items.push(item);
        for item in items {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            match item.split_once("::{") {
                Some((head, rest)) => expand(&format!("{prefix}{head}::"), rest.strip_suffix('}').unwrap_or(rest), out),
                None => out.push(format!("{prefix}{item}")),
            }
        }
    }
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find_map(|(j, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    (depth == 0).then_some(j)
                })
                .unwrap_or(group.len());
            expand("", &group[..end], &mut out);
        } else {
            out.push(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect());
        }
    }
    out
}

/// The modules a module's code names: the longest known module prefix of each `crate::` path.
fn edges(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for path in crate_paths(code) {
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        for n in (1..=parts.len()).rev() {
            let candidate = parts[..n].join("::");
            if modules.contains(&candidate) {
                out.insert(candidate);
                break;
            }
        }
    }
    out
}

fn rank(module: &str) -> Option<u8> {
    let top = module.split("::").next().unwrap_or_default();
    LAYERS.iter().find(|(folder, _)| *folder == top).map(|(_, r)| *r)
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let lw = self.low[w.as_str()];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on.contains(w.as_str()) {
                    let iw = self.index[w.as_str()];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    comp.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t =
        T { g: graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: vec![], on: BTreeSet::new(), out: vec![] };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

/// Module → the modules it uses (a folder's `mod.rs` declaring its children is not a use).
fn graph(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(m, code)| {
            let mut e = edges(code, &names);
            e.remove(m);
            (m.clone(), e)
        })
        .collect()
}

/// The layer rules over a graph: every problem found.
fn problems(modules: &BTreeMap<String, String>, graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (m, code) in modules {
        let Some(r) = rank(m) else {
            out.push(format!("module {m} is in no layer: put it under core/, machine/, io/ or a feature's folder"));
            continue;
        };
        for used in &graph[m] {
            if rank(used).is_some_and(|u| u > r) {
                out.push(format!("{m} uses {used}, a layer above it"));
            }
        }
        if r <= 1 {
            for f in PURE_FORBIDDEN {
                if code.contains(f) {
                    out.push(format!("{m} names {f}: the core and the machine do no I/O and read no clock"));
                }
            }
        }
        if code.contains("super::") {
            out.push(format!("{m} uses a super:: path: name modules from crate:: so the layers can be read"));
        }
    }
    for c in cycles(graph) {
        out.push(format!("module cycle: {c:?}"));
    }
    out
}

#[test]
fn the_layers_hold_and_no_module_cycles() {
    let modules = modules();
    assert!(modules.len() >= 25, "read only {} modules: {:?}", modules.len(), modules.keys());
    for layer in ["core", "machine", "io"] {
        assert!(modules.keys().any(|m| m.starts_with(layer)), "no module in {layer}/");
    }
    let graph = graph(&modules);
    assert!(graph["machine::verifier"].contains("machine::states"), "the graph was read: {graph:?}");
    let found = problems(&modules, &graph);
    assert!(found.is_empty(), "{found:#?}");
}

/// The checks can fail: a cycle, an upward use, a clock in the core and a module outside every
/// layer are each found in a made-up tree.
#[test]
fn the_layer_checks_find_what_they_look_for() {
    let modules: BTreeMap<String, String> = [
        ("core::a", "use crate::{core::b::X, io::t::Y};"),
        ("core::b", "fn f() { crate::core::a::g(); let _ = std::time::SystemTime::now(); }"),
        ("io::t", ""),
        ("misc", ""),
    ]
    .into_iter()
    .map(|(m, c)| (m.to_owned(), c.to_owned()))
    .collect();
    let graph = graph(&modules);
    assert_eq!(graph["core::a"], ["core::b".to_owned(), "io::t".to_owned()].into());
    let found = problems(&modules, &graph).join("\n");
    assert!(found.contains("core::a uses io::t, a layer above it"), "{found}");
    assert!(found.contains("core::b names SystemTime::now"), "{found}");
    assert!(found.contains("module cycle: [\"core::a\", \"core::b\"]"), "{found}");
    assert!(found.contains("module misc is in no layer"), "{found}");
    // Positive control: a tree that keeps the rules has nothing to report.
    let ok: BTreeMap<String, String> =
        [("core::a", ""), ("machine::m", "use crate::core::a;"), ("io::t", "use crate::{machine::m, core::a};")]
            .into_iter()
            .map(|(m, c)| (m.to_owned(), c.to_owned()))
            .collect();
    assert!(problems(&ok, &graph_of(&ok)).is_empty());
    assert_eq!(module_of(Path::new("core/proof/mod.rs")).as_deref(), Some("core::proof"));
    assert_eq!(module_of(Path::new("lib.rs")), None);
}

fn graph_of(m: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    graph(m)
}
