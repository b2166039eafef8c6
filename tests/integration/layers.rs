//! The layers of ARCHITECTURE.md, checked on the source: no module cycles, no core module that
//! imports an I/O module, and no clock, network, file system or async runtime in the core.
//! It reads the `crate::` paths of each module's non-test code, as the design's hook does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The pure core: parsing and deciding, `now` passed in.
const CORE: &[&str] = &[
    "arn",
    "identity",
    "rule",
    "token",
    "matcher",
    "membership",
    "endpoint",
    "endpoint_table",
    "sigv4",
    "request",
    "response",
    "challenge",
    "error",
    "credentials",
];
/// The I/O edge and the features above it.
const EDGE: &[&str] = &["transport", "organizations", "replay", "verifier", "emulator", "agent", "files", "token_file"];
/// What no core module may name.
const CORE_FORBIDDEN: &[&str] =
    &["tokio", "reqwest", "hyper", "rustls", "SystemTime::now", "Instant::now", "std::net", "std::fs"];

/// Module name → its non-test source, comments removed.
fn modules() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".rs")) else {
            continue;
        };
        if name == "lib" || name == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Test modules sit at the end by convention.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
        let code: String =
            code.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
        out.insert(name.to_owned(), code);
    }
    out
}

/// The crate modules a module's code names (`crate::x`, and `use crate::{x, y}`).
fn edges(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            let body = &group[..group.find('}').unwrap_or(group.len())];
            for item in body.split(',') {
                out.insert(item.trim().split("::").next().unwrap_or_default().to_owned());
            }
        } else {
            out.insert(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    out.retain(|m| modules.contains(m));
    out
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
            for w in &self.g[v] {
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

fn graph() -> (BTreeMap<String, String>, BTreeMap<String, BTreeSet<String>>) {
    let modules = modules();
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let graph = modules
        .iter()
        .map(|(m, code)| {
            let mut e = edges(code, &names);
            e.remove(m);
            (m.clone(), e)
        })
        .collect();
    (modules, graph)
}

#[test]
fn no_module_cycles() {
    let (_, graph) = graph();
    assert!(graph.len() >= 15, "read only {} modules", graph.len());
    let found = cycles(&graph);
    assert!(found.is_empty(), "module cycles (dependencies must point down only): {found:?}");
}

#[test]
fn core_modules_import_no_io_module_and_no_clock_or_network() {
    let (modules, graph) = graph();
    let mut problems = Vec::new();
    for m in CORE {
        let code = modules.get(*m).unwrap_or_else(|| panic!("core module {m} is missing; update CORE"));
        for e in &graph[*m] {
            if EDGE.contains(&e.as_str()) {
                problems.push(format!("core module {m} imports I/O module {e}"));
            }
        }
        for f in CORE_FORBIDDEN {
            if code.contains(f) {
                problems.push(format!("core module {m} names {f}"));
            }
        }
    }
    for m in modules.keys() {
        assert!(CORE.contains(&m.as_str()) || EDGE.contains(&m.as_str()), "module {m} is in no layer");
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The checks above can fail: a cycle and a core → I/O edge in a made-up graph are found.
#[test]
fn the_layer_checks_find_what_they_look_for() {
    let names: BTreeSet<String> = ["a", "b", "transport"].map(String::from).into();
    assert_eq!(edges("use crate::{b, transport::X};\nfn f() { crate::a::g() }", &names).len(), 3);
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), ["b".to_owned()].into()),
        ("b".to_owned(), ["a".to_owned()].into()),
        ("transport".to_owned(), BTreeSet::new()),
    ]
    .into();
    assert_eq!(cycles(&g), vec![vec!["a".to_owned(), "b".to_owned()]]);
}
