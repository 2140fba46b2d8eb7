//! The configuration reference cannot drift from the code: every key that
//! `proxy.toml` accepts (read from the file format's own types) is documented
//! in docs/configuration.md, and every key documented there is accepted.

use std::collections::{BTreeMap, BTreeSet};

/// The keys documented per table: the first cell of each reference table row
/// (`| \`key\` | default | meaning |`) under a `## \`[table]\`` heading
/// (subsections included), and the rows' whole text for nested tables.
fn documented() -> BTreeMap<String, BTreeMap<String, String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let text = std::fs::read_to_string(path).expect("docs/configuration.md");
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut table: Option<String> = None;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            table = heading
                .split('`')
                .nth(1)
                .map(|t| t.trim_matches(['[', ']']).to_owned());
            continue;
        }
        let (Some(table), Some(row)) = (&table, line.strip_prefix("| `")) else {
            continue;
        };
        let key = row.split('`').next().unwrap_or_default().to_owned();
        out.entry(table.clone())
            .or_default()
            .insert(key, line.to_owned());
    }
    out
}

#[test]
fn every_accepted_key_is_documented_and_every_documented_key_is_accepted() {
    let docs = documented();
    let mut problems = Vec::new();
    for (table, fields) in sessiongate::config::accepted_keys() {
        let fields: BTreeSet<&str> = fields.iter().copied().collect();
        assert!(!fields.is_empty(), "{table}: no fields read from its type");
        match table.rsplit_once('.') {
            // Top level: each table has its own section.
            None if table.is_empty() => {
                for f in &fields {
                    if !docs
                        .keys()
                        .any(|t| t == f || t.starts_with(&format!("{f}.")))
                    {
                        problems.push(format!("[{f}] has no section"));
                    }
                }
            }
            // `[identity]` holds only `headers`, documented as its own section.
            None if table == "identity" => {}
            None => {
                let rows = docs.get(table).cloned().unwrap_or_default();
                for f in &fields {
                    if !rows.contains_key(*f) {
                        problems.push(format!("{table}.{f} is not documented"));
                    }
                }
                for key in rows.keys() {
                    if !fields.contains(key.as_str()) {
                        problems.push(format!("{table}.{key} is documented but not accepted"));
                    }
                }
            }
            // An inline table: its row in the parent section names every field.
            Some((parent, key)) => {
                if let Some(rows) = docs.get(table) {
                    for f in &fields {
                        if !rows.contains_key(*f) {
                            problems.push(format!("{table}.{f} is not documented"));
                        }
                    }
                    continue;
                }
                let row = docs.get(parent).and_then(|rows| rows.get(key));
                let Some(row) = row else {
                    problems.push(format!("{parent}.{key} is not documented"));
                    continue;
                };
                for f in &fields {
                    if !row.contains(f) {
                        problems.push(format!("{table}.{f} is not mentioned in {parent}.{key}"));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md:\n{}",
        problems.join("\n")
    );
}
