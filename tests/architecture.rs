//! The shape of the code, checked: the rules `docs/architecture.md` states
//! about which file may use which, and which crates may depend on which.
//!
//! 1. **No import cycle of more than one file in any crate.** Each crate's
//!    files form a graph: file A depends on file B when A names an item of
//!    B through a `crate::`, `super::` or `self::` path (in a `use` or
//!    inline), or through a name the crate root re-exports from B. The graph
//!    must be acyclic, so every file can be read after the files it uses.
//!    Test-only code (`#[cfg(test)]`) and the crate root's own table of
//!    contents are left out: they may reach anywhere.
//! 2. **Decisions carry no I/O.** `pepper-router` and `pepper-query` depend,
//!    even transitively, on none of tokio, axum, hyper, reqwest, rocksdb or
//!    rand: their state machines read no clock and touch no socket.
//!
//! The graph is built from the syntax tree (`syn`), not by matching text,
//! and cycles are found as strongly connected components (`petgraph`).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The crates whose `src/` folders are checked, with their crate roots.
const CRATES: &[(&str, &str)] =
    &[("storage", "lib.rs"), ("router", "lib.rs"), ("query", "lib.rs"), ("adapters", "lib.rs"), (".", "main.rs")];

/// Crates that put I/O, a runtime or randomness in reach.
const IO_CRATES: &[&str] = &["tokio", "axum", "hyper", "reqwest", "rocksdb", "librocksdb-sys", "rand"];

/// One source file: its module path (`["api", "events"]`) and its syntax.
struct File {
    module: Vec<String>,
    path: PathBuf,
    syntax: syn::File,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of `file` under `src`: `a/b.rs` and `a/b/mod.rs` are
/// `a::b`; the root is the empty path. The binary's `src/` holds only its
/// own modules (the other crates have their own folders).
fn module_of(src: &Path, root: &str, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    if last != root && last != "mod.rs" {
        parts.push(last.trim_end_matches(".rs").to_string());
    }
    parts
}

fn load(krate: &str, root: &str) -> Vec<File> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(krate).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter(|p| krate != "." || !p.starts_with(src.join("bin")))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let syntax = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            File { module: module_of(&src, root, &path), path, syntax }
        })
        .collect()
}

/// A path as shown in a report: relative to the workspace.
fn shown(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(path).display().to_string()
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.parse_args::<syn::Meta>().is_ok_and(|m| m.path().is_ident("test")))
}

/// Collects every path a file names, made absolute within its crate
/// (`crate::a::b::Item` → `["a", "b", "Item"]`), skipping test-only items.
struct Paths {
    module: Vec<String>,
    found: Vec<Vec<String>>,
}

impl Paths {
    fn absolute(&self, segments: &[String]) -> Option<Vec<String>> {
        let first = segments.first()?;
        let mut out = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.module.clone(),
            "super" => {
                let mut m = self.module.clone();
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    m.pop();
                    rest = &rest[1..];
                }
                m.extend(rest.iter().cloned());
                return Some(m);
            }
            _ => return None,
        };
        out.extend(segments[1..].iter().cloned());
        Some(out)
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.record(prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.record(prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.record(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    fn record(&mut self, segments: Vec<String>) {
        if let Some(p) = self.absolute(&segments) {
            self.found.push(p);
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(i) => &i.attrs,
            _ => &Vec::new(),
        };
        if is_cfg_test(attrs) {
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.record(segments);
        syn::visit::visit_path(self, path);
    }

    // Doc links (`[x](crate::a)`) are attributes, not paths: never visited.
}

/// The file that holds `path`: the longest module path that is a file,
/// following the crate root's re-exports for names it lifts (`crate::Item`).
fn owner(path: &[String], modules: &BTreeSet<Vec<String>>, reexports: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    for len in (1..=path.len()).rev() {
        if modules.contains(&path[..len]) {
            return path[..len].to_vec();
        }
    }
    match path.first().and_then(|name| reexports.get(name)) {
        Some(target) => owner(target, modules, &BTreeMap::new()),
        None => Vec::new(),
    }
}

/// The crate root's `pub use` lines: lifted name → its absolute path.
fn reexports(root: &File) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for item in &root.syntax.items {
        if let syn::Item::Use(u) = item {
            let mut paths = Paths { module: Vec::new(), found: Vec::new() };
            paths.use_tree(&mut vec!["crate".to_string()], &u.tree);
            for p in paths.found {
                if let Some(name) = p.last() {
                    out.insert(name.clone(), p);
                }
            }
        }
    }
    out
}

/// The cycles (strongly connected components of more than one file) of a
/// crate, each as its files with the edges between them.
fn cycles(files: &[File]) -> Vec<String> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let lifted = files.iter().find(|f| f.module.is_empty()).map(reexports).unwrap_or_default();
    let mut graph = petgraph::graph::DiGraph::<String, ()>::new();
    let nodes: BTreeMap<Vec<String>, _> =
        files.iter().map(|f| (f.module.clone(), graph.add_node(shown(&f.path)))).collect();
    let mut edges = BTreeSet::new();
    for file in files.iter().filter(|f| !f.module.is_empty()) {
        let mut paths = Paths { module: file.module.clone(), found: Vec::new() };
        paths.visit_file(&file.syntax);
        for p in paths.found {
            let to = owner(&p, &modules, &lifted);
            // Uses of the crate root (its re-exports resolved above) and of
            // the file's own items are not edges between files.
            if to.is_empty() || to == file.module || file.module.starts_with(&to) {
                continue;
            }
            edges.insert((file.module.clone(), to));
        }
    }
    for (from, to) in &edges {
        graph.add_edge(nodes[from], nodes[to], ());
    }
    petgraph::algo::tarjan_scc(&graph)
        .into_iter()
        .filter(|scc| scc.len() > 1)
        .map(|scc| {
            let names: BTreeSet<&String> = scc.iter().map(|n| &graph[*n]).collect();
            let inner: Vec<String> = graph
                .edge_indices()
                .filter_map(|e| graph.edge_endpoints(e))
                .filter(|(a, b)| scc.contains(a) && scc.contains(b))
                .map(|(a, b)| format!("    {} -> {}", graph[a], graph[b]))
                .collect();
            format!("{} files: {:?}\n{}", names.len(), names, inner.join("\n"))
        })
        .collect()
}

#[test]
fn no_crate_has_an_import_cycle_between_files() {
    let mut report = Vec::new();
    for (krate, root) in CRATES {
        for cycle in cycles(&load(krate, root)) {
            report.push(format!("crate {krate}: a cycle of {cycle}"));
        }
    }
    assert!(report.is_empty(), "import cycles between files:\n{}", report.join("\n"));
}

#[test]
fn router_and_query_depend_on_no_io_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    for krate in ["pepper-router", "pepper-query"] {
        let out = std::process::Command::new(&cargo)
            .args(["tree", "--offline", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
        let tree = String::from_utf8_lossy(&out.stdout);
        let names: BTreeSet<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
        let bad: Vec<&&str> = IO_CRATES.iter().filter(|c| names.contains(**c)).collect();
        assert!(bad.is_empty(), "{krate} depends on {bad:?}:\n{tree}");
        assert!(names.contains(krate), "cargo tree did not list {krate} itself:\n{tree}");
    }
}

/// The checker finds a cycle when there is one: two files that use each
/// other, one by a `use` group and one inline through `super::`.
#[test]
fn the_cycle_check_finds_a_two_file_cycle() {
    let file = |module: &[&str], text: &str| File {
        module: module.iter().map(|m| m.to_string()).collect(),
        path: PathBuf::from(module.join("/")),
        syntax: syn::parse_file(text).unwrap(),
    };
    let acyclic = [
        file(&[], "mod a; mod b;"),
        file(&["a"], "use crate::{b::B}; pub struct A(B);"),
        file(&["b"], "pub struct B;"),
    ];
    assert!(cycles(&acyclic).is_empty());
    let cyclic = [
        file(&[], "mod a; mod b;"),
        file(&["a"], "use crate::{b::B}; pub struct A(B);"),
        file(&["b"], "pub struct B; fn f(_: super::a::A) {}"),
    ];
    let found = cycles(&cyclic);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("2 files"), "{found:?}");
}
