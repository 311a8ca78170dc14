//! The crates' module graphs have no cycles: a module may use what lies
//! below it, never what uses it. Read from the source with `syn`; test
//! code (`#[cfg(test)]`, `tests.rs`) is left out, and so are paths inside
//! macro calls (`syn` does not parse those).
//!
//! A unit is a top-level module with everything below it, except that a
//! module holding only `mod` and `use` items (a folder such as
//! `dataplane`) is a namespace: each of its children is a unit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A module path inside one crate: `["dataplane", "inbound"]`.
type ModPath = Vec<String>;

struct Crate {
    /// Every module, with its file (`None` for an inline `mod x { .. }`).
    modules: BTreeMap<ModPath, Option<PathBuf>>,
    /// Modules that only hold `mod` and `use` items.
    namespaces: BTreeSet<ModPath>,
    /// unit -> unit it uses -> a file where it does.
    edges: BTreeMap<ModPath, BTreeMap<ModPath, PathBuf>>,
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.parse_args::<syn::Meta>().is_ok_and(|m| m.path().is_ident("test")))
}

fn parse(file: &Path) -> syn::File {
    let text = std::fs::read_to_string(file).unwrap();
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The file of module `name` declared in `parent_file` (Rust 2018 layout).
fn child_file(parent_file: &Path, parent_is_root: bool, name: &str) -> PathBuf {
    let dir = if parent_is_root || parent_file.file_name().is_some_and(|n| n == "mod.rs") {
        parent_file.parent().unwrap().to_path_buf()
    } else {
        parent_file.with_extension("")
    };
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() { flat } else { dir.join(name).join("mod.rs") }
}

fn collect(krate: &mut Crate, path: ModPath, file: &Path, items: &[syn::Item], is_root: bool) {
    let namespace = !path.is_empty() && items.iter().all(|i| matches!(i, syn::Item::Mod(_) | syn::Item::Use(_)));
    if namespace {
        krate.namespaces.insert(path.clone());
    }
    for item in items {
        let syn::Item::Mod(m) = item else { continue };
        if is_test_only(&m.attrs) {
            continue;
        }
        let mut child = path.clone();
        child.push(m.ident.to_string());
        match &m.content {
            Some((_, inline)) => {
                krate.modules.insert(child.clone(), None);
                collect(krate, child, file, inline, false);
            }
            None => {
                let child_file = child_file(file, is_root, &m.ident.to_string());
                let parsed = parse(&child_file);
                krate.modules.insert(child.clone(), Some(child_file.clone()));
                collect(krate, child, &child_file, &parsed.items, false);
            }
        }
    }
}

impl Crate {
    fn read(lib: &Path) -> Self {
        let mut krate = Self { modules: BTreeMap::new(), namespaces: BTreeSet::new(), edges: BTreeMap::new() };
        krate.modules.insert(vec![], Some(lib.to_path_buf()));
        let root = parse(lib);
        collect(&mut krate, vec![], lib, &root.items, true);
        let files: Vec<(ModPath, PathBuf)> =
            krate.modules.iter().filter_map(|(m, f)| Some((m.clone(), f.clone()?))).collect();
        for (module, file) in files {
            let parsed = parse(&file);
            let mut refs = Refs { module: &module, found: Vec::new(), inline: Vec::new() };
            refs.visit_file(&parsed);
            let from = krate.unit(&module);
            for target in refs.found {
                let Some(target) = krate.resolve(&target) else { continue };
                let to = krate.unit(&target);
                if to != from && !to.is_empty() && !from.is_empty() {
                    krate.edges.entry(from.clone()).or_default().entry(to).or_insert_with(|| file.clone());
                }
            }
        }
        krate
    }

    /// The longest known module that `path` starts with.
    fn resolve(&self, path: &[String]) -> Option<ModPath> {
        (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| self.modules.contains_key(p))
    }

    fn unit(&self, module: &[String]) -> ModPath {
        let mut unit = Vec::new();
        for segment in module {
            unit.push(segment.clone());
            if !self.namespaces.contains(&unit) {
                break;
            }
        }
        unit
    }

    /// Cycles between units: each strongly connected component of more than one.
    fn cycles(&self) -> Vec<Vec<ModPath>> {
        let nodes: BTreeSet<&ModPath> = self.edges.keys().chain(self.edges.values().flat_map(|e| e.keys())).collect();
        let reach = |from: &ModPath| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from.clone()];
            while let Some(n) = todo.pop() {
                for next in self.edges.get(&n).into_iter().flat_map(|e| e.keys()) {
                    if seen.insert(next.clone()) {
                        todo.push(next.clone());
                    }
                }
            }
            seen
        };
        let reachable: BTreeMap<&ModPath, BTreeSet<ModPath>> = nodes.iter().map(|n| (*n, reach(n))).collect();
        let mut components: BTreeSet<Vec<ModPath>> = BTreeSet::new();
        for n in &nodes {
            let component: Vec<ModPath> = nodes
                .iter()
                .filter(|m| reachable[*n].contains(**m) && reachable[**m].contains(*n))
                .map(|m| (*m).clone())
                .collect();
            if component.len() > 1 {
                components.insert(component);
            }
        }
        components.into_iter().collect()
    }

    fn describe(&self, component: &[ModPath], root: &Path) -> String {
        let name = |m: &ModPath| if m.is_empty() { "crate".to_string() } else { m.join("::") };
        let mut lines = vec![format!("cycle: {}", component.iter().map(name).collect::<Vec<_>>().join(", "))];
        for from in component {
            for (to, file) in self.edges.get(from).into_iter().flatten() {
                if component.contains(to) {
                    let file = file.strip_prefix(root).unwrap_or(file);
                    lines.push(format!("  {} -> {}  ({})", name(from), name(to), file.display()));
                }
            }
        }
        lines.join("\n")
    }
}

/// Every `crate::`, `self::` and `super::` path in one module's file, made absolute.
struct Refs<'a> {
    module: &'a [String],
    found: Vec<ModPath>,
    /// Inline modules entered (their paths are relative to them).
    inline: Vec<String>,
}

impl Refs<'_> {
    fn here(&self) -> ModPath {
        self.module.iter().chain(&self.inline).cloned().collect()
    }

    fn absolute(&self, segments: &[String]) -> Option<ModPath> {
        let (first, rest) = segments.split_first()?;
        let mut base = match first.as_str() {
            "crate" => return Some(rest.to_vec()),
            "self" => self.here(),
            "super" => {
                let mut base = self.here();
                base.pop()?;
                base
            }
            _ => return None,
        };
        let mut rest = rest;
        while rest.first().is_some_and(|s| s == "super") {
            base.pop()?;
            rest = &rest[1..];
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.found_use(prefix, Some(n.ident.to_string())),
            syn::UseTree::Rename(r) => self.found_use(prefix, Some(r.ident.to_string())),
            syn::UseTree::Glob(_) => self.found_use(prefix, None),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.use_tree(prefix, t)),
        }
    }

    fn found_use(&mut self, prefix: &[String], last: Option<String>) {
        let mut segments = prefix.to_vec();
        segments.extend(last.filter(|l| l != "self"));
        if let Some(path) = self.absolute(&segments) {
            self.found.push(path);
        }
    }
}

impl<'ast> Visit<'ast> for Refs<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        // A file module's own items are read from its file.
        if m.content.is_some() {
            self.inline.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.inline.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(absolute) = self.absolute(&segments) {
            self.found.push(absolute);
        }
        syn::visit::visit_path(self, path);
    }
}

fn assert_acyclic(krate_dir: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(krate_dir).join("src");
    let krate = Crate::read(&root.join("lib.rs"));
    assert!(krate.modules.len() > 3, "{krate_dir}: read only {:?}", krate.modules.keys());
    let cycles: Vec<String> = krate.cycles().iter().map(|c| krate.describe(c, &root)).collect();
    assert!(cycles.is_empty(), "{krate_dir} has import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_proxy_crate_has_no_import_cycles() {
    assert_acyclic("proxy");
}

#[test]
fn the_certs_crate_has_no_import_cycles() {
    assert_acyclic("certs");
}

#[test]
fn the_policy_crate_has_no_import_cycles() {
    assert_acyclic("policy");
}
