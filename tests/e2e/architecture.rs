//! The workspace's shape, as docs/architecture.md states it: no two modules
//! of a crate import each other, directly or around a circle. Read from the
//! sources (a crate's top-level modules, their `crate::` and `super::`
//! paths outside `#[cfg(test)]`), so a new circle fails here, named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crate's top-level modules, each with its files.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut mods: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            let mut files = vec![];
            let mut stack = vec![path.clone()];
            while let Some(dir) = stack.pop() {
                for e in std::fs::read_dir(&dir).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "rs") {
                        files.push(p);
                    }
                }
            }
            mods.entry(name).or_default().extend(files);
        } else if path.extension().is_some_and(|x| x == "rs") && name != "lib" && name != "main" {
            mods.entry(name).or_default().push(path);
        }
    }
    mods
}

/// The modules named after `crate::` (or `super::` in a top-level file) in
/// `text`, grouped imports (`crate::{a, b}`) included.
fn named(text: &str, top_level: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let prefixes: &[&str] = if top_level {
        &["crate::", "super::"]
    } else {
        &["crate::"]
    };
    for prefix in prefixes {
        for (at, _) in text.match_indices(prefix) {
            let rest = &text[at + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let word: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    out.insert(word);
                }
            } else {
                out.insert(
                    rest.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect(),
                );
            }
        }
    }
    out
}

/// A circle through `start`, if one exists (depth-first).
fn circle(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let last = path.last().unwrap().clone();
        for next in graph.get(&last).into_iter().flatten() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    let mut circles = vec![];
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mods = modules(&src);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, files) in &mods {
            for file in files {
                let text = std::fs::read_to_string(file).unwrap();
                let text = text.split("#[cfg(test)]").next().unwrap_or_default();
                let top_level = file.parent() == Some(src.as_path());
                for dep in named(text, top_level) {
                    if &dep != name && mods.contains_key(&dep) {
                        graph.entry(name.clone()).or_default().insert(dep);
                    }
                }
            }
        }
        checked += graph.values().map(BTreeSet::len).sum::<usize>();
        for name in mods.keys() {
            if let Some(c) = circle(&graph, name) {
                circles.push(format!("{}: {} -> {name}", src.display(), c.join(" -> ")));
            }
        }
    }
    // The reader saw the workspace's imports (a broken reader finds none).
    assert!(checked > 50, "only {checked} imports between modules found");
    assert!(
        circles.is_empty(),
        "modules that import each other:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_reader_sees_a_circle() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    graph.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(circle(&graph, "a").unwrap(), ["a", "b", "c"]);
    assert_eq!(
        named("use crate::{files, hooks};\nlet x = super::tools::run();", true),
        BTreeSet::from(["files".to_string(), "hooks".to_string(), "tools".to_string()])
    );
    graph.get_mut("c").unwrap().clear();
    assert!(circle(&graph, "a").is_none());
}
