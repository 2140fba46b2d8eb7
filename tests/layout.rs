//! The shape of the source tree, read the way a reviewer reads imports: no
//! two files of the library lean on each other (directly or around a
//! circle, `super::` and re-exports included), and no file holds more than
//! about 800 lines of code outside its tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lines of code (not blank, not comments) a file may hold outside tests.
const MAX_CODE_LINES: usize = 800;

/// One library source file: its module path (`["proxy", "h1"]`) and text
/// without its `#[cfg(test)]` items.
struct Source {
    module: Vec<String>,
    path: PathBuf,
    code: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(&root).expect("under src");
            let mut module: Vec<String> = relative
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            match module.last().map(String::as_str) {
                Some("main") => continue, // the binary, a client of the library
                Some("lib") | Some("mod") => {
                    module.pop();
                }
                _ => {}
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            out.push(Source {
                module,
                path: relative.to_path_buf(),
                code: without_tests(&text),
            });
        }
    }
    out
}

/// The text with every `#[cfg(test)]` item (a `mod tests { ... }` block or
/// a single item) and every comment line removed.
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            // Skip the next item: up to its matching closing brace, or its `;`.
            let mut depth = 0i32;
            let mut opened = false;
            for line in lines.by_ref() {
                for c in line.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if (opened && depth <= 0) || (!opened && line.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every path the code names through `crate::`, `super::` or `self::`, in
/// `use` trees (expanded) and inline, as absolute module paths.
fn named_paths(source: &Source) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let code = &source.code;
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &code[i..];
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|p| rest.starts_with(**p))
            .copied();
        let boundary = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        let Some(prefix) = starts.filter(|_| boundary) else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        // The whole path expression, braces included.
        let mut depth = 0;
        let mut end = 0;
        for (j, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth > 0 => depth -= 1,
                c if depth > 0 || c.is_ascii_alphanumeric() || c == '_' || c == ':' => {
                    if depth == 0
                        && c == ':'
                        && !rest[j..].starts_with("::")
                        && !rest[..j].ends_with(':')
                    {
                        end = j;
                        break;
                    }
                }
                c if depth > 0 && (c.is_whitespace() || c == ',' || c == '*') => {}
                _ => {
                    end = j;
                    break;
                }
            }
            end = j + c.len_utf8();
        }
        let expr = &rest[..end];
        for tree in expand(expr) {
            let mut segments: Vec<String> = tree.split("::").map(str::to_owned).collect();
            let mut base = match prefix {
                "crate::" => Vec::new(),
                "super::" => {
                    // A file's module is its path (a directory's for mod.rs).
                    let mut base = source.module.clone();
                    base.pop();
                    base
                }
                _ => source.module.clone(),
            };
            segments.remove(0);
            // Further `super::` segments climb on.
            while segments.first().map(String::as_str) == Some("super") {
                segments.remove(0);
                base.pop();
            }
            base.extend(
                segments
                    .into_iter()
                    .filter(|s| !s.is_empty() && s != "self"),
            );
            paths.push(base);
        }
        i += end.max(1);
    }
    paths
}

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e`.
fn expand(expr: &str) -> Vec<String> {
    let expr: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = expr.find('{') else {
        return vec![expr.trim_end_matches("::").to_owned()];
    };
    let head = &expr[..open];
    let inner = &expr[open + 1..expr.rfind('}').unwrap_or(expr.len())];
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (j, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..j]);
                start = j + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |t| format!("{head}{t}")))
        .collect()
}

/// Which file a module path lands in: the deepest module that exists,
/// following `pub use` re-exports of the item named after it.
fn resolve(
    path: &[String],
    modules: &BTreeMap<Vec<String>, usize>,
    sources: &[Source],
    hops: usize,
) -> Option<usize> {
    let mut depth = path.len();
    while depth > 0 && !modules.contains_key(&path[..depth]) {
        depth -= 1;
    }
    let file = *modules.get(&path[..depth])?;
    let Some(item) = path.get(depth) else {
        return Some(file);
    };
    if hops > 4 {
        return Some(file);
    }
    // A re-export (`pub use child::Item`, `pub use self::child::{Item, ..}`).
    let source = &sources[file];
    for line in source.code.split(';') {
        let line = line.trim();
        let Some(tree) = line
            .strip_prefix("pub use ")
            .or_else(|| line.strip_prefix("pub(crate) use "))
        else {
            continue;
        };
        for target in expand(tree) {
            let target = target.split(" as ").next().unwrap_or("").to_owned();
            if target.rsplit("::").next() != Some(item.as_str()) {
                continue;
            }
            let mut segments: Vec<String> = target.split("::").map(str::to_owned).collect();
            let mut full = match segments.first().map(String::as_str) {
                Some("crate") => {
                    segments.remove(0);
                    Vec::new()
                }
                Some("self") => {
                    segments.remove(0);
                    source.module.clone()
                }
                Some("super") => {
                    segments.remove(0);
                    let mut m = source.module.clone();
                    m.pop();
                    m
                }
                _ => source.module.clone(),
            };
            full.extend(segments);
            if let Some(target) = resolve(&full, modules, sources, hops + 1) {
                return Some(target);
            }
        }
    }
    Some(file)
}

#[test]
fn no_two_library_files_lean_on_each_other() {
    let sources = sources();
    let modules: BTreeMap<Vec<String>, usize> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.module.clone(), i))
        .collect();
    let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); sources.len()];
    for (from, source) in sources.iter().enumerate() {
        for path in named_paths(source) {
            if let Some(to) = resolve(&path, &modules, &sources, 0) {
                if to != from {
                    edges[from].insert(to);
                }
            }
        }
    }
    // A module's declaration of its children (`mod x;`) is not a use of
    // them; its re-exports are, and paths through them were resolved above
    // to the file that defines the item.
    let cycles = strongly_connected(&edges);
    let named: Vec<Vec<String>> = cycles
        .iter()
        .map(|c| {
            c.iter()
                .map(|&i| sources[i].path.display().to_string())
                .collect()
        })
        .collect();
    assert!(
        named.is_empty(),
        "files that lean on each other: {named:#?}"
    );
}

#[test]
fn no_library_file_holds_more_than_800_lines_of_code_outside_tests() {
    let mut long = Vec::new();
    for source in sources() {
        let lines = source.code.lines().filter(|l| !l.trim().is_empty()).count();
        if lines > MAX_CODE_LINES {
            long.push(format!("{}: {lines}", source.path.display()));
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_CODE_LINES} lines of code: {long:?}"
    );
}

/// Tarjan's algorithm: the strongly connected components with more than one
/// file.
fn strongly_connected(edges: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a [BTreeSet<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in s.edges[v].clone().iter() {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let n = edges.len();
    let mut state = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if state.index[v].is_none() {
            visit(&mut state, v);
        }
    }
    state.out
}
