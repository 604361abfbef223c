//! The dependency rule of `src/lib.rs`, checked: the core depends on the model; the store on
//! the model; the glue on core and store; nothing on the glue but glue and tools; nothing on
//! the tools but tools; no cycle between top-level modules.
//!
//! Reads every `src/**/*.rs`, finds each `crate::` path outside comments and string literals
//! (plain paths and `use crate::{...}` trees), and maps it to the module it names: the
//! top-level module, or the second-level one for modules split across layers (`legacy`).
//! Run it with `cargo test --test architecture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, from the bottom up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    Model,
    Core,
    Store,
    Glue,
    Tools,
    /// `lib.rs`'s `test_support`: unit-test helpers any module's tests may use.
    Test,
}

/// Which layer each module is in. A module not listed fails the test: place it.
const LAYERS: &[(&str, Layer)] = &[
    ("id", Layer::Model),
    ("proto", Layer::Model),
    ("model", Layer::Model),
    ("frame", Layer::Core),
    ("crypto", Layer::Core),
    ("session_crypto", Layer::Core),
    ("token", Layer::Core),
    ("validate", Layer::Core),
    ("join_string", Layer::Core),
    ("handlers", Layer::Core),
    ("protocol", Layer::Core),
    ("session", Layer::Core),
    ("quota", Layer::Core),
    ("legacy::wire", Layer::Core),
    ("legacy::reader", Layer::Core),
    ("legacy::session", Layer::Core),
    ("legacy::vectors", Layer::Test),
    ("store", Layer::Store),
    ("failstop", Layer::Store),
    ("connection", Layer::Glue),
    ("server", Layer::Glue),
    ("driver", Layer::Glue),
    ("admission", Layer::Glue),
    ("legacy", Layer::Glue),
    ("legacy::server", Layer::Glue),
    ("legacy::client", Layer::Glue),
    ("registry", Layer::Glue),
    ("sealed_identity", Layer::Glue),
    ("ha", Layer::Glue),
    ("handshake_keys", Layer::Glue),
    ("metrics", Layer::Glue),
    ("admin", Layer::Glue),
    ("daemon", Layer::Glue),
    ("process", Layer::Glue),
    ("clock", Layer::Glue),
    ("client", Layer::Glue),
    ("regcred", Layer::Glue),
    ("node", Layer::Glue),
    ("cli", Layer::Tools),
    ("bench", Layer::Tools),
    ("test_support", Layer::Test),
];

/// Top-level modules whose submodules sit in different layers: their second-level modules
/// are placed one by one.
const SPLIT: &[&str] = &["legacy"];

/// Edges against the rule that are known and being removed, each with who removes it. The
/// test fails if an entry is no longer needed, so the list only shrinks.
const ALLOWED: &[(&str, &str, &str)] = &[];

fn may_depend(from: Layer, to: Layer) -> bool {
    use Layer::*;
    matches!(
        (from, to),
        (_, Test)
            | (Test, _)
            | (Model, Model)
            | (Core, Model | Core)
            | (Store, Model | Store)
            | (Glue, Model | Core | Store | Glue)
            | (Tools, _)
    )
}

/// One `crate::` reference: the module it is in, the module it names, where.
#[derive(Debug, Clone)]
struct Edge {
    from: String,
    to: String,
    file: PathBuf,
    line: usize,
}

impl std::fmt::Display for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} ({}:{})",
            self.from,
            self.to,
            self.file.display(),
            self.line
        )
    }
}

/// The source with comments removed and string and char literals emptied, newlines kept
/// (so line numbers stay right).
/// `code` up to its unit-test module (`#[cfg(test)]` followed by `mod`, by convention last
/// in a file): the rule binds the library, while unit tests may drive it through any layer
/// (a core's tests run it against a store through the driver's synchronous harness).
fn without_unit_tests(code: &str) -> String {
    let mut kept = String::with_capacity(code.len());
    let mut lines = code.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines.peek().is_some_and(|next| {
                next.trim_start().starts_with("mod ")
                    || next.trim_start().starts_with("pub(crate) mod ")
            })
        {
            break;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    kept
}

fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && is_raw_string(&chars, i) {
            // r"..." or r#"..."#: skip to the closing quote and as many hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            j += 1;
            while j < chars.len() {
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                if chars[j] == '\n' {
                    out.push('\n');
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if chars.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            out.push_str("\"\"");
            i += 1;
        } else if c == '\'' && is_char_literal(&chars, i) {
            // A char literal ('x', '\n', '\''), not a lifetime.
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            out.push_str("' '");
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_raw_string(chars: &[char], at: usize) -> bool {
    let before_is_ident = at > 0 && (chars[at - 1].is_alphanumeric() || chars[at - 1] == '_');
    if before_is_ident {
        return false;
    }
    let mut j = at + 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    chars.get(j) == Some(&'"')
}

fn is_char_literal(chars: &[char], at: usize) -> bool {
    match chars.get(at + 1) {
        Some('\\') => true,
        Some(_) => chars.get(at + 2) == Some(&'\''),
        None => false,
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every path named after `crate::` in `code`, with its line, as lists of segments (at
/// most the first two matter). `use crate::{a::{b, c}, d}` gives `a::b`, `a::c` and `d`.
fn crate_paths(code: &str) -> Vec<(Vec<String>, usize)> {
    let chars: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    let needle: Vec<char> = "crate::".chars().collect();
    let mut i = 0;
    while i + needle.len() <= chars.len() {
        if chars[i..i + needle.len()] == needle[..]
            && (i == 0 || !(is_ident_char(chars[i - 1]) || chars[i - 1] == '$'))
        {
            let line = chars[..i].iter().filter(|c| **c == '\n').count() + 1;
            let mut j = i + needle.len();
            let mut paths = Vec::new();
            parse_tree(&chars, &mut j, Vec::new(), &mut paths);
            found.extend(paths.into_iter().map(|p| (p, line)));
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    found
}

fn skip_space(chars: &[char], at: &mut usize) {
    while *at < chars.len() && chars[*at].is_whitespace() {
        *at += 1;
    }
}

/// Parses a use tree (or a plain path) at `at`, after `prefix`, adding each full path.
fn parse_tree(chars: &[char], at: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        skip_space(chars, at);
        if chars.get(*at) == Some(&'{') {
            *at += 1;
            loop {
                skip_space(chars, at);
                match chars.get(*at) {
                    Some('}') => {
                        *at += 1;
                        return;
                    }
                    Some(',') => *at += 1,
                    None => return,
                    _ => {
                        let before = *at;
                        parse_tree(chars, at, path.clone(), out);
                        if *at == before {
                            *at += 1;
                        }
                    }
                }
            }
        }
        let start = *at;
        while *at < chars.len() && is_ident_char(chars[*at]) {
            *at += 1;
        }
        if *at == start {
            if !path.is_empty() {
                out.push(path);
            }
            return;
        }
        let segment: String = chars[start..*at].iter().collect();
        if segment != "self" {
            path.push(segment);
        }
        skip_space(chars, at);
        if chars.get(*at) == Some(&':') && chars.get(*at + 1) == Some(&':') {
            *at += 2;
            continue;
        }
        if !path.is_empty() {
            out.push(path);
        }
        return;
    }
}

/// The module a file defines: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().map(String::as_str) == Some("mod") {
        parts.pop();
    }
    parts
}

/// The unit a module path belongs to: its top-level module, or the second-level one for
/// [`SPLIT`] modules that have it.
fn unit(path: &[String], modules: &BTreeSet<String>) -> String {
    let top = path[0].clone();
    if SPLIT.contains(&top.as_str()) && path.len() > 1 {
        let second = format!("{top}::{}", path[1]);
        if modules.contains(&second) {
            return second;
        }
    }
    top
}

fn top(unit: &str) -> &str {
    unit.split("::").next().unwrap()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every dependency edge between units in `src`.
fn edges(src: &Path) -> Vec<Edge> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f).join("::")).collect();
    let mut edges = Vec::new();
    for file in &files {
        let module = module_of(src, file);
        if module.is_empty() || module == ["lib"] || module == ["main"] {
            continue;
        }
        let from = unit(&module, &modules);
        let code = without_unit_tests(&code_only(&std::fs::read_to_string(file).unwrap()));
        for (path, line) in crate_paths(&code) {
            let to = unit(&path, &modules);
            let seen = edges
                .last()
                .is_some_and(|e: &Edge| e.to == to && e.line == line && e.from == from);
            if to != from && !seen {
                edges.push(Edge {
                    from: from.clone(),
                    to,
                    file: Path::new("src").join(file.strip_prefix(src).unwrap()),
                    line,
                });
            }
        }
    }
    edges
}

fn layer(unit: &str) -> Option<Layer> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, layer)| *layer)
}

fn allowed(edge: &Edge) -> bool {
    ALLOWED
        .iter()
        .any(|(from, to, _)| edge.from == *from && edge.to == *to)
}

/// The layer rule's violations among `edges` (allow-listed edges excluded).
fn rule_violations(edges: &[Edge]) -> Vec<String> {
    let mut problems = Vec::new();
    for edge in edges {
        match (layer(&edge.from), layer(&edge.to)) {
            (None, _) => problems.push(format!(
                "module {} has no layer: add it to LAYERS ({})",
                edge.from, edge
            )),
            (_, None) => problems.push(format!(
                "module {} has no layer: add it to LAYERS ({})",
                edge.to, edge
            )),
            (Some(from), Some(to)) if !may_depend(from, to) && !allowed(edge) => {
                problems.push(format!("{from:?} may not depend on {to:?}: {edge}"))
            }
            _ => {}
        }
    }
    problems
}

/// The cycles between top-level modules: each strongly connected component of more than one
/// module, with the edges inside it.
fn cycles(edges: &[Edge]) -> Vec<Vec<Edge>> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for edge in edges.iter().filter(|e| !allowed(e)) {
        let (from, to) = (top(&edge.from), top(&edge.to));
        if from != to {
            graph.entry(from).or_default().insert(to);
            graph.entry(to).or_default();
        }
    }
    // Tarjan's strongly connected components.
    struct Tarjan<'a> {
        graph: &'a BTreeMap<&'a str, BTreeSet<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<BTreeSet<&'a str>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for &w in &self.graph[v] {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = BTreeSet::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(w);
                    component.insert(w);
                    if w == v {
                        break;
                    }
                }
                self.components.push(component);
            }
        }
    }
    let mut tarjan = Tarjan {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for &v in graph.keys() {
        if !tarjan.index.contains_key(v) {
            tarjan.visit(v);
        }
    }
    tarjan
        .components
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|component| {
            edges
                .iter()
                .filter(|e| {
                    !allowed(e)
                        && top(&e.from) != top(&e.to)
                        && component.contains(top(&e.from))
                        && component.contains(top(&e.to))
                })
                .cloned()
                .collect()
        })
        .collect()
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_module_follows_the_layer_rule() {
    let problems = rule_violations(&edges(&src_dir()));
    assert!(
        problems.is_empty(),
        "dependency rule broken (src/lib.rs, docs/architecture.md):\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_cycle_between_top_level_modules() {
    let cycles = cycles(&edges(&src_dir()));
    let text: Vec<String> = cycles
        .iter()
        .map(|edges| {
            let lines: Vec<String> = edges.iter().map(|e| format!("  {e}")).collect();
            format!("cycle:\n{}", lines.join("\n"))
        })
        .collect();
    assert!(cycles.is_empty(), "{}", text.join("\n"));
}

#[test]
fn every_allowed_exception_is_still_needed() {
    let edges = edges(&src_dir());
    for (from, to, why) in ALLOWED {
        assert!(
            edges.iter().any(|e| e.from == *from && e.to == *to),
            "{from} -> {to} no longer exists: remove it from ALLOWED ({why})"
        );
    }
}

#[test]
fn every_layer_entry_names_a_module() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(&src, f).join("::"))
        .collect();
    for (module, layer) in LAYERS {
        // `model` arrives with the store port; `test_support` lives inside lib.rs.
        if matches!(*module, "model" | "test_support") {
            continue;
        }
        assert!(
            modules.contains(*module),
            "LAYERS places {module} in {layer:?}, but src/ has no such module"
        );
    }
}

// The checker itself: it must see what it claims to see.

#[test]
fn grouped_imports_and_plain_paths_are_found_but_comments_and_strings_are_not() {
    let source = r##"
use crate::{legacy::{server::X, wire}, store::Store, self};
// use crate::daemon::Hidden;
/* crate::cli::Hidden */
let s = "crate::bench::Hidden";
let c = '"';
fn f<'a>(x: &'a str) { crate::metrics::Metrics::new(); }
let r = r#"crate::node::Hidden"#;
"##;
    let found: Vec<(String, usize)> = crate_paths(&code_only(source))
        .into_iter()
        .map(|(p, line)| (p.join("::"), line))
        .collect();
    let names: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "legacy::server::X",
            "legacy::wire",
            "store::Store",
            "metrics::Metrics::new"
        ]
    );
    assert_eq!(found[3].1, 7, "line numbers survive comment removal");
}

#[test]
fn a_loop_of_three_modules_is_a_cycle_and_a_chain_is_not() {
    let edge = |from: &str, to: &str| Edge {
        from: from.into(),
        to: to.into(),
        file: PathBuf::from("src/x.rs"),
        line: 1,
    };
    let chain = [edge("cli", "daemon"), edge("daemon", "server")];
    assert!(cycles(&chain).is_empty());
    let ring = [
        edge("daemon", "server"),
        edge("server", "metrics"),
        edge("metrics", "daemon"),
        edge("cli", "daemon"),
    ];
    let found = cycles(&ring);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].len(), 3, "{:?}", found[0]);
}

#[test]
fn the_core_may_not_depend_on_the_glue() {
    let edge = Edge {
        from: "handlers".into(),
        to: "server".into(),
        file: PathBuf::from("src/handlers/mod.rs"),
        line: 3,
    };
    let problems = rule_violations(&[edge]);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].contains("handlers -> server (src/handlers/mod.rs:3)"),
        "{}",
        problems[0]
    );
}
