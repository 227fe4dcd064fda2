//! The direction of dependency among peapod's own modules, checked from the source: no
//! module imports a module of a higher layer, peers of the domain layer do not import each
//! other (but for what the table below allows), and no two files import each other, however
//! indirectly. A new top-level module must be given its layer here.
//!
//! `cargo test --test layers -- --nocapture` prints the module graph.
//!
//! The imports are read from the text: `use` trees and `crate::`/`super::`/`self::` paths,
//! and paths through names a `use` brought in. `#[cfg(test)]` modules are left out (tests
//! may reach anywhere), and so are `mod` declarations: a parent declaring its children is
//! not a dependency, but a parent re-exporting (`pub use`) one is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Layers, top first. A module may import modules of its own layer or below; see [`PEERS`]
/// for the domain layer.
const LAYERS: &[(&str, &[&str])] = &[
    // `peapod check` asks the same modules the daemon does; only main.rs calls it.
    ("commands", &["check"]),
    ("gRPC server", &["server"]),
    ("pod orchestration", &["pod"]),
    ("domain", &["sandbox", "container", "image", "streaming"]),
    ("network, spec, task", &["network", "spec", "task"]),
    ("shared context", &["runtime"]),
    (
        "foundations",
        &[
            "lib",
            "store",
            "stdio",
            "safe_fs",
            "containerd",
            "containerd_caps",
            "config",
            "metrics",
            "cgroup",
            "signal",
            "keys",
            "error",
            "id",
            "uds",
        ],
    ),
];

/// The only imports allowed between different modules of one layer, besides the foundations
/// (which may use each other as long as no cycle forms): sandboxes and containers are made
/// from images, and never call each other; the streaming back-ends (exec, attach,
/// port-forward) run processes in containers the way ExecSync does.
const PEERS: &[(&str, &str)] = &[
    ("sandbox", "image"),
    ("container", "image"),
    ("streaming", "container"),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file, as a path relative to `src/`.
fn library_files() -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, base, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(&src_dir(), &src_dir(), &mut out);
    // The binaries are crates of their own, above the library.
    out.retain(|f| f != "main.rs" && !f.starts_with("bin/"));
    out.sort();
    out
}

/// The module path of a file: `container/lifecycle.rs` → `[container, lifecycle]`.
fn module_path(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The top-level module a file belongs to (`lib` for the crate root).
fn top_module(file: &str) -> String {
    module_path(file)
        .first()
        .cloned()
        .unwrap_or_else(|| "lib".to_string())
}

/// Comments and the contents of string and character literals removed.
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (i == 0 || !ident(c[i - 1]))
            && matches!(c.get(i + 1), Some('"' | '#'))
        {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime, which is kept.
            if c.get(i + 1) == Some(&'\\') {
                let mut j = i + 2;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c[i]);
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The end (exclusive) of the item starting at `from`: its matching closing brace, or a `;`
/// before any brace.
fn item_end(t: &[u8], from: usize) -> usize {
    let mut i = from;
    let mut depth = 0;
    while i < t.len() {
        match t[i] {
            b';' if depth == 0 => return i + 1,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    t.len()
}

/// `#[cfg(test)]` items removed.
fn without_tests(text: &str) -> String {
    let mut t = text.to_string();
    while let Some(at) = t.find("#[cfg(test)]") {
        let end = item_end(t.as_bytes(), at + "#[cfg(test)]".len());
        t.replace_range(at..end, "");
    }
    t
}

/// The paths a `use` tree names: `a::{b, c::{self, d}}` → `a::b`, `a::c`, `a::c::d`, each
/// with the name it is known by here (its last segment, or an `as` name).
fn expand_use(tree: &str) -> Vec<(Vec<String>, Option<String>)> {
    fn split_top(s: &str) -> Vec<&str> {
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, ch) in s.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        parts
    }
    fn go(s: &str, prefix: &[String], out: &mut Vec<(Vec<String>, Option<String>)>) {
        for item in split_top(s) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            if let Some(brace) = item.find('{') {
                let head: Vec<String> = item[..brace]
                    .split("::")
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect();
                let inner = &item[brace + 1..item.rfind('}').unwrap_or(item.len())];
                let mut p = prefix.to_vec();
                p.extend(head);
                go(inner, &p, out);
            } else {
                let (path, alias) = match item.split_once(" as ") {
                    Some((p, a)) => (p, Some(a.trim().to_string())),
                    None => (item, None),
                };
                let mut segs = prefix.to_vec();
                segs.extend(path.split("::").map(|x| x.trim().to_string()));
                if segs.last().is_some_and(|l| l == "self") {
                    segs.pop();
                }
                let alias = match segs.last().map(String::as_str) {
                    Some("*") => {
                        segs.pop();
                        None
                    }
                    Some(last) => alias.or(Some(last.to_string())),
                    None => None,
                };
                out.push((segs, alias));
            }
        }
    }
    let mut out = Vec::new();
    go(
        &tree.split_whitespace().collect::<Vec<_>>().join(" "),
        &[],
        &mut out,
    );
    out
}

struct Crate {
    /// Module paths of every file, joined with `/`, to the file.
    modules: HashMap<String, String>,
}

impl Crate {
    /// The file defining the longest prefix of `segs` that is a module.
    fn file_of(&self, segs: &[String]) -> String {
        for k in (1..=segs.len()).rev() {
            if let Some(f) = self.modules.get(&segs[..k].join("/")) {
                return f.clone();
            }
        }
        // `crate::cri` (generated into lib.rs), `crate::RUNTIME_NAME`.
        "lib.rs".to_string()
    }

    fn is_module(&self, segs: &[String]) -> bool {
        self.modules.contains_key(&segs.join("/"))
    }

    /// The files `file` imports.
    fn imports(&self, file: &str) -> BTreeSet<String> {
        let text = std::fs::read_to_string(src_dir().join(file)).unwrap();
        let text = without_tests(&strip(&text));
        let me = module_path(file);
        let absolute = |segs: &[String], aliases: &HashMap<String, Vec<String>>| {
            let first = segs.first()?;
            let rest = &segs[1..];
            let mut base = match first.as_str() {
                "crate" => Vec::new(),
                "self" => me.clone(),
                "super" => {
                    let mut b = me.clone();
                    b.pop();
                    let mut r = rest;
                    while r.first().is_some_and(|s| s == "super") {
                        b.pop();
                        r = &r[1..];
                    }
                    b.extend(r.iter().cloned());
                    return Some(b);
                }
                name => {
                    let mut child = me.clone();
                    child.push(name.to_string());
                    if self.is_module(&child) {
                        child
                    } else {
                        aliases.get(name)?.clone()
                    }
                }
            };
            base.extend(rest.iter().cloned());
            Some(base)
        };
        let mut deps = BTreeSet::new();
        let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
        // `use` declarations, in order (a later one may go through an earlier alias).
        let mut rest = text.as_str();
        while let Some(at) = find_word(rest, "use") {
            let after = &rest[at + 3..];
            let Some(semi) = after.find(';') else { break };
            for (segs, alias) in expand_use(&after[..semi]) {
                if let Some(abs) = absolute(&segs, &aliases) {
                    deps.insert(self.file_of(&abs));
                    if let Some(a) = alias {
                        aliases.insert(a, abs);
                    }
                }
            }
            rest = &after[semi..];
        }
        // Paths in code: `crate::a::b`, `super::x`, `alias::y`, `child::z`.
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let start_ok = i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b':');
            if start_ok && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
                let mut j = i;
                while j < bytes.len()
                    && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b':')
                {
                    j += 1;
                }
                let path = &text[i..j];
                // `a::{…}` is a use tree, read above.
                if path.contains("::") && !path.ends_with("::") {
                    let segs: Vec<String> = path
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                    if let Some(abs) = absolute(&segs, &aliases) {
                        deps.insert(self.file_of(&abs));
                    }
                }
                i = j;
            } else {
                i += 1;
            }
        }
        deps.remove(file);
        deps
    }
}

/// The byte offset of the next `word` standing alone.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(off) = text[from..].find(word) {
        let at = from + off;
        let before = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_');
        let end = at + word.len();
        let after = end >= b.len() || !(b[end].is_ascii_alphanumeric() || b[end] == b'_');
        if before && after {
            return Some(at);
        }
        from = end;
    }
    None
}

/// The file-level import graph of the library.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = library_files();
    let krate = Crate {
        modules: files
            .iter()
            .map(|f| (module_path(f).join("/"), f.clone()))
            .collect(),
    };
    files
        .iter()
        .map(|f| (f.clone(), krate.imports(f)))
        .collect()
}

/// Strongly connected components of more than one file (Tarjan's algorithm).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        for w in s.g[v].iter().filter(|w| s.g.contains_key(*w)) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        g,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

/// The module-level graph, layer by layer, as the README's architecture section shows it.
fn module_graph(g: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (f, deps) in g {
        let from = top_module(f);
        let e = edges.entry(from.clone()).or_default();
        for d in deps {
            let to = top_module(d);
            if to != from {
                e.insert(to);
            }
        }
    }
    let mut out = String::new();
    for (name, modules) in LAYERS {
        out.push_str(&format!("{name}\n"));
        for m in *modules {
            let deps: Vec<&str> = edges
                .get(*m)
                .map(|d| d.iter().map(String::as_str).collect())
                .unwrap_or_default();
            out.push_str(&format!("  {m} -> {}\n", deps.join(", ")));
        }
    }
    out
}

#[test]
fn no_module_imports_a_higher_layer_and_no_files_import_each_other() {
    let g = graph();
    println!("{}", module_graph(&g));
    let mut problems = Vec::new();
    for f in g.keys() {
        if layer_of(&top_module(f)).is_none() {
            problems.push(format!(
                "{f}: module {} has no layer in tests/layers.rs",
                top_module(f)
            ));
        }
    }
    for (f, deps) in &g {
        let from = top_module(f);
        let Some(lf) = layer_of(&from) else { continue };
        for d in deps {
            let to = top_module(d);
            let Some(lt) = layer_of(&to) else { continue };
            if to == from {
                continue;
            }
            let foundations = lf == LAYERS.len() - 1;
            if lt < lf {
                problems.push(format!(
                    "{f} imports {d}: {to} ({}) is above {from} ({})",
                    LAYERS[lt].0, LAYERS[lf].0
                ));
            } else if lt == lf && !foundations && !PEERS.contains(&(from.as_str(), to.as_str())) {
                problems.push(format!(
                    "{f} imports {d}: {from} and {to} are peers in {}",
                    LAYERS[lf].0
                ));
            }
        }
    }
    for c in cycles(&g) {
        problems.push(format!("import cycle among {}", c.join(", ")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reader_sees_imports_in_every_form() {
    let t = "use crate::a::{b, c::{self, d as e}};\nuse super::*;\n";
    let paths: Vec<String> = find_word(t, "use")
        .map(|at| {
            let semi = t[at..].find(';').unwrap();
            expand_use(&t[at + 3..at + semi])
                .into_iter()
                .map(|(p, a)| format!("{}={}", p.join("::"), a.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        paths,
        ["crate::a::b=b", "crate::a::c=c", "crate::a::c::d=e"]
    );
    assert_eq!(
        strip("let s = \"crate::x\"; // crate::y\nlet c = '\"'; crate::z"),
        "let s = \"\"; \nlet c = ' '; crate::z"
    );
    assert_eq!(
        without_tests("a\n#[cfg(test)]\nmod tests { use crate::x; }\nb"),
        "a\n\nb"
    );
    // The crate's own graph has edges where the code has them.
    let g = graph();
    assert!(g["pod/lifecycle.rs"].contains("sandbox/lifecycle.rs"));
    assert!(g["server/mod.rs"].contains("pod/mod.rs"));
}
