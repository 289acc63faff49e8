//! TOML files (a Go or Rust service's `config.toml`): every string or
//! integer value at its dotted path (`[database]` then `dsn = "…"` gives
//! `database.dsn`; dotted keys and one level of inline tables too). The
//! document is checked with the `toml` crate first, so a file that is not
//! TOML is not read as one; the spans come from a scan of its lines.

use super::{Leaf, Occurrence, Quoting, leaf};
use cutover_core::{Error, Result};

/// A key: bare, or in quotes.
fn key_parts(key: &str) -> Option<Vec<String>> {
    let mut parts = vec![];
    let mut rest = key.trim();
    while !rest.is_empty() {
        let (part, after) = if let Some(r) = rest.strip_prefix('"') {
            let close = r.find('"')?;
            (r[..close].to_string(), &r[close + 1..])
        } else if let Some(r) = rest.strip_prefix('\'') {
            let close = r.find('\'')?;
            (r[..close].to_string(), &r[close + 1..])
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            (rest[..end].trim().to_string(), &rest[end..])
        };
        parts.push(part);
        rest = after.trim_start();
        rest = rest.strip_prefix('.').unwrap_or(rest).trim_start();
    }
    (!parts.is_empty()).then_some(parts)
}

/// A value starting at `at` of `text`: the occurrence (or why it cannot be
/// repointed) and where the value ends.
fn value(text: &str, at: usize, line: usize) -> (Result<Occurrence>, usize) {
    let v = &text[at..];
    let occ = |start: usize, end: usize, value: String, quoting| Occurrence {
        line,
        start,
        end,
        value,
        quoting,
        pgpass: false,
    };
    if v.starts_with("\"\"\"") || v.starts_with("'''") {
        let end = v[3..].find(&v[..3]).map_or(v.len(), |e| e + 6);
        return (
            Err(Error::bad_input("is a multi-line string: write it on one line")),
            at + end,
        );
    }
    if let Some(r) = v.strip_prefix('"') {
        let mut escaped = false;
        let mut out = String::new();
        for (j, c) in r.char_indices() {
            if escaped {
                out.push(match c {
                    'n' => '\n',
                    't' => '\t',
                    other => other,
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                return (
                    Ok(occ(at + 1, at + 1 + j, out, Quoting::Escaped('"'))),
                    at + j + 2,
                );
            } else {
                out.push(c);
            }
        }
        return (Err(Error::bad_input("has no closing quote")), text.len());
    }
    if let Some(r) = v.strip_prefix('\'') {
        return match r.find('\'') {
            Some(j) => (
                Ok(occ(
                    at + 1,
                    at + 1 + j,
                    r[..j].to_string(),
                    Quoting::Delimited("'"),
                )),
                at + j + 2,
            ),
            None => (Err(Error::bad_input("has no closing quote")), text.len()),
        };
    }
    let end = v.find([',', '}', '#', '\n', '\r', ']']).unwrap_or(v.len());
    let word = v[..end].trim_end();
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return (
            Ok(occ(at, at + word.len(), word.to_string(), Quoting::Bare)),
            at + end,
        );
    }
    (Err(Error::bad_input("is not a string or an integer")), at + end)
}

/// `key = value` pairs of one line (or of an inline table) from `at`,
/// under `prefix`; returns where they ended.
fn pairs(
    text: &str,
    mut at: usize,
    line: usize,
    prefix: &[String],
    found: &mut Vec<Leaf>,
    inline: bool,
) -> usize {
    loop {
        let rest = &text[at..];
        let skip = rest.len() - rest.trim_start_matches([' ', '\t', ',']).len();
        at += skip;
        let rest = &text[at..];
        if rest.is_empty() || rest.starts_with(['\n', '\r', '#']) || (inline && rest.starts_with('}')) {
            return at + usize::from(inline && rest.starts_with('}'));
        }
        let Some(eq) = rest.find('=') else {
            return text.len();
        };
        let Some(parts) = key_parts(&rest[..eq]) else {
            return text.len();
        };
        let mut path: Vec<String> = prefix.to_vec();
        path.extend(parts);
        let after = &rest[eq + 1..];
        let vat = at + eq + 1 + (after.len() - after.trim_start().len());
        if text[vat..].starts_with('{') {
            at = pairs(text, vat + 1, line, &path, found, true);
            if !inline {
                return at;
            }
            continue;
        }
        if text[vat..].starts_with('[') {
            // Arrays are not connection values; skip to the line's end.
            return text[vat..].find('\n').map_or(text.len(), |e| vat + e);
        }
        let (v, end) = value(text, vat, line);
        let joined = path.join(".");
        found.push(match v {
            Ok(o) => leaf(joined, o),
            Err(e) => Leaf {
                path: joined,
                line,
                value: Err(e),
            },
        });
        at = end;
        if !inline {
            return at;
        }
    }
}

pub fn toml_leaves(text: &str) -> Result<Vec<Leaf>> {
    text.parse::<::toml::Table>()
        .map_err(|e| Error::bad_input(format!("is not TOML: {}", e.message())))?;
    let mut found = vec![];
    let mut table: Vec<String> = vec![];
    let mut offset = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line_start = offset;
        offset += raw.len();
        let body = raw.trim();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if let Some(h) = body.strip_prefix("[[").and_then(|b| b.split_once("]]")) {
            table = key_parts(h.0).unwrap_or_default();
            continue;
        }
        if let Some(h) = body.strip_prefix('[').and_then(|b| b.split_once(']')) {
            table = key_parts(h.0).unwrap_or_default();
            continue;
        }
        if !body.contains('=') {
            continue;
        }
        let lead = raw.len() - raw.trim_start().len();
        pairs(text, line_start + lead, i + 1, &table, &mut found, false);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_dotted_keys_and_inline_tables_give_dotted_paths() {
        let t = "# service\r\ntitle = \"svc\"\r\n[database]\r\ndsn = \"host=127.0.0.1 port=5432 dbname=app\" # prod\r\n\
                 pool = { max = 10, url = 'postgres://a@h/d' }\r\n[server]\r\nports = [1, 2]\r\nlisten.port = 8080\r\n";
        let l = toml_leaves(t).unwrap();
        let get = |p: &str| l.iter().find(|l| l.path == p).unwrap().value.clone().unwrap();
        let dsn = get("database.dsn");
        assert_eq!(&t[dsn.start..dsn.end], "host=127.0.0.1 port=5432 dbname=app");
        assert_eq!(dsn.quoting, Quoting::Escaped('"'));
        let url = get("database.pool.url");
        assert_eq!(
            (url.value.as_str(), url.quoting),
            ("postgres://a@h/d", Quoting::Delimited("'"))
        );
        assert_eq!(get("database.pool.max").value, "10");
        assert_eq!(get("server.listen.port").value, "8080");
        assert!(!l.iter().any(|l| l.path == "server.ports"));
        assert!(toml_leaves("not = toml = at all").is_err());
    }
}
