//! The modules of `src/` depend on each other one way only: a cycle fails this test.
//!
//! It reads the `crate::…` paths of every file (comments and `#[cfg(test)]` modules
//! left out: tests may reach anywhere), maps each to a top-level module (names the root
//! re-exports count as their module), and looks for a cycle. `.ci/run` runs it as a
//! step of its own; `cargo test --test module_graph -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None`: the root or a binary).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?;
    let name = name.strip_suffix(".rs").unwrap_or(name);
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_owned())
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests`.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("//"))
}

/// The first segments of the paths in `crate::a::X`, `crate::{a::X, b::{Y, Z}}`.
fn crate_paths(line: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The names at the top level of the braces.
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        names.push(first_segment(&group[start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(first_segment(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(first_segment(rest));
        }
    }
    names
}

fn first_segment(path: &str) -> &str {
    let path = path.trim();
    let end = path
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(path.len());
    &path[..end]
}

/// Which module each name that the root re-exports comes from.
fn root_exports(lib: &str) -> BTreeMap<String, String> {
    let mut exports = BTreeMap::new();
    for line in code_lines(lib) {
        let Some(used) = line.strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = used.split_once("::") else {
            continue;
        };
        for name in names.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if !name.is_empty() {
                exports.insert(name.to_owned(), module.to_owned());
            }
        }
    }
    exports
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let lib = fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs is readable");
    let exports = root_exports(&lib);
    let mut graph = Graph::new();
    for file in &files {
        if let Some(module) = module_of(&src, file) {
            graph.entry(module).or_default();
        }
    }
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let text = fs::read_to_string(file).expect("a source file is readable");
        for line in code_lines(&text) {
            for name in crate_paths(line) {
                let target = if graph.contains_key(name) {
                    Some(name.to_owned())
                } else {
                    exports.get(name).cloned()
                };
                if let Some(target) = target.filter(|target| *target != module) {
                    graph.get_mut(&module).expect("known").insert(target);
                }
            }
        }
    }
    graph
}

/// A cycle, as the modules along it, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|seen| seen == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in &graph[node] {
            if let Some(cycle) = visit(graph, next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_of_src_have_no_cycle() {
    let graph = graph();
    for (module, uses) in &graph {
        let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
        println!("{module} -> {}", uses.join(" "));
    }
    assert!(graph.len() > 10, "the modules of src/ were found");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("a module cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_checker_sees_grouped_paths_and_cycles() {
    assert_eq!(
        crate_paths("use crate::{key::{KeyId, KeyHash}, store, AuthError};"),
        ["key", "store", "AuthError"]
    );
    assert_eq!(
        crate_paths("let x = crate::cache::f(crate::key::g());"),
        ["cache", "key"]
    );
    let mut graph = Graph::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        graph.entry(from.into()).or_default().insert(to.into());
    }
    assert_eq!(
        find_cycle(&graph).unwrap(),
        ["a", "b", "c", "a"].map(String::from)
    );
    graph.get_mut("c").unwrap().clear();
    graph.entry("c".into()).or_default();
    assert_eq!(find_cycle(&graph), None);
}
