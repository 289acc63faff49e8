//! Finding connection values inside configuration files without parsing and
//! re-serialising them: each finder returns byte spans, and a rewrite replaces
//! only those bytes. Comments, quoting, order, anchors and line endings stay.

use std::sync::LazyLock;

use regex::Regex;

/// How the value is written where it was found; a new value is written the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    Bare,
    Double,
    Single,
    /// YAML single quotes (`''` escapes a quote).
    YamlSingle,
    /// Free text: replaced as is (the surrounding script does its own quoting).
    Raw,
}

/// One connection value inside a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    /// 1-based line of the value.
    pub line: usize,
    /// Byte range of the value's text (inside the quotes, after `KEY=`).
    pub start: usize,
    pub end: usize,
    /// The value, unquoted.
    pub value: String,
    pub quoting: Quoting,
    /// A `.pgpass` line: `host:port:database:user:password`.
    pub pgpass: bool,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].matches('\n').count() + 1
}

/// Encodes `value` for the place `occ` was found; `Err` when it cannot hold it.
pub fn encode(occ: &Occurrence, value: &str) -> Result<String, String> {
    match occ.quoting {
        Quoting::Bare => {
            if value.contains([' ', '\t', '#', '"', '\'', '\n']) {
                Err("the new value needs quoting but the old one was bare".into())
            } else {
                Ok(value.to_string())
            }
        }
        Quoting::Double => Ok(value.replace('\\', "\\\\").replace('"', "\\\"")),
        Quoting::Single if value.contains('\'') => {
            Err("the new value holds a single quote, which a single-quoted value cannot".into())
        }
        Quoting::Single => Ok(value.to_string()),
        Quoting::YamlSingle => Ok(value.replace('\'', "''")),
        Quoting::Raw => Ok(value.to_string()),
    }
}

/// The text with each occurrence's value replaced (occurrences must not overlap).
pub fn splice(text: &str, replacements: &[(Occurrence, String)]) -> String {
    let mut sorted: Vec<&(Occurrence, String)> = replacements.iter().collect();
    sorted.sort_by_key(|(o, _)| o.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (occ, new) in sorted {
        out.push_str(&text[at..occ.start]);
        out.push_str(new);
        at = occ.end;
    }
    out.push_str(&text[at..]);
    out
}

/// The one occurrence found, none, or an error listing the lines of several.
fn at_most_one(mut found: Vec<Occurrence>, what: &str, fix: &str) -> Result<Option<Occurrence>, String> {
    if found.len() <= 1 {
        return Ok(found.pop());
    }
    let lines: Vec<String> = found.iter().map(|o| o.line.to_string()).collect();
    Err(format!(
        "{what} {} times (lines {}): {fix}",
        found.len(),
        lines.join(", ")
    ))
}

// ---------------------------------------------------------------- env files

/// `KEY=value` in a dotenv / `--env-file` / EnvironmentFile file. `export`
/// prefixes, quotes and trailing comments are understood; a key set twice is
/// an error (tools disagree about which one wins).
pub fn env(text: &str, key: &str) -> Result<Option<Occurrence>, String> {
    let mut found: Vec<Occurrence> = vec![];
    let mut offset = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line_start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let trimmed = line.trim_start();
        let mut rest = trimmed;
        if let Some(r) = rest.strip_prefix("export ") {
            rest = r.trim_start();
        }
        let Some(r) = rest.strip_prefix(key) else { continue };
        let r2 = r.trim_start();
        let Some(after_eq) = r2.strip_prefix('=') else {
            continue;
        };
        let value_text = after_eq.trim_start();
        let value_at = line_start + (line.len() - value_text.len());
        let (start, end, value, quoting) = match value_text.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let body = &value_text[1..];
                let close = if q == '"' {
                    let mut escaped = false;
                    body.char_indices().find_map(|(j, c)| {
                        if escaped {
                            escaped = false;
                            None
                        } else if c == '\\' {
                            escaped = true;
                            None
                        } else {
                            (c == '"').then_some(j)
                        }
                    })
                } else {
                    body.find('\'')
                };
                let Some(close) = close else {
                    return Err(format!("line {}: the value of {key} has no closing quote", i + 1));
                };
                let inner = &body[..close];
                let value = if q == '"' {
                    inner.replace("\\\"", "\"").replace("\\\\", "\\")
                } else {
                    inner.to_string()
                };
                let quoting = if q == '"' {
                    Quoting::Double
                } else {
                    Quoting::Single
                };
                (value_at + 1, value_at + 1 + close, value, quoting)
            }
            _ => {
                // Bare: up to a ` #` comment, trailing blanks trimmed.
                let cut = value_text.find(" #").unwrap_or(value_text.len());
                let v = value_text[..cut].trim_end();
                (value_at, value_at + v.len(), v.to_string(), Quoting::Bare)
            }
        };
        found.push(Occurrence {
            line: i + 1,
            start,
            end,
            value,
            quoting,
            pgpass: false,
        });
    }
    at_most_one(found, &format!("{key} is set"), "remove all but one")
}

// ---------------------------------------------------------------- YAML

#[derive(Debug)]
enum Frame {
    Map {
        key: Option<String>,
        awaiting_value: bool,
    },
    Seq,
}

/// The scalar at a dotted key path (`services.backend.environment.DATABASE_URL`),
/// also in the list form (`environment: ["DATABASE_URL=…"]`).
pub fn yaml(text: &str, path: &str) -> Result<Option<Occurrence>, String> {
    use saphyr_parser::{Event, Parser, ScalarStyle};
    let segments: Vec<&str> = path.split('.').collect();
    // Char index -> byte offset (spans are in characters).
    let byte_at: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .collect();
    let mut frames: Vec<Frame> = vec![];
    let mut found: Vec<Occurrence> = vec![];
    let current_path = |frames: &[Frame]| -> Vec<String> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Map { key: Some(k), .. } => Some(k.clone()),
                Frame::Map { key: None, .. } => Some(String::new()),
                Frame::Seq => None,
            })
            .collect()
    };
    // After a value node ends inside a map, the next scalar is a key.
    fn value_done(frames: &mut [Frame]) {
        if let Some(Frame::Map { awaiting_value, .. }) = frames.last_mut() {
            *awaiting_value = false;
        }
    }
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| format!("not valid YAML: {e}"))?;
        match event {
            Event::MappingStart(..) => frames.push(Frame::Map {
                key: None,
                awaiting_value: false,
            }),
            Event::SequenceStart(..) => frames.push(Frame::Seq),
            Event::MappingEnd | Event::SequenceEnd => {
                frames.pop();
                value_done(&mut frames);
            }
            Event::Alias(_) => {
                if matches!(
                    frames.last(),
                    Some(Frame::Map {
                        awaiting_value: true,
                        ..
                    })
                ) && current_path(&frames) == segments
                {
                    return Err(format!(
                        "line {}: {path} is an alias (*name); set `key` to the path of the anchor's definition",
                        span.start.line()
                    ));
                }
                value_done(&mut frames);
            }
            Event::Scalar(value, style, ..) => {
                let (s, e) = (byte_at[span.start.index()], byte_at[span.end.index()]);
                let quoting = match style {
                    ScalarStyle::Plain => Quoting::Bare,
                    ScalarStyle::DoubleQuoted => Quoting::Double,
                    ScalarStyle::SingleQuoted => Quoting::YamlSingle,
                    _ => Quoting::Bare,
                };
                let block = matches!(style, ScalarStyle::Literal | ScalarStyle::Folded);
                // The span may start at an anchor or a tag (`&url 'postgres://…'`)
                // and includes the quotes: keep only the value's text.
                let (s, e) = match quoting {
                    Quoting::Bare => {
                        let raw = &text[s..e];
                        match raw.rfind(value.as_ref()) {
                            Some(at) if at + value.len() == raw.len() => (s + at, e),
                            _ => (s, e),
                        }
                    }
                    _ => {
                        let q = if quoting == Quoting::Double { '"' } else { '\'' };
                        (s + text[s..e].find(q).unwrap_or(0) + 1, e - 1)
                    }
                };
                match frames.last_mut() {
                    Some(Frame::Map {
                        key, awaiting_value, ..
                    }) if !*awaiting_value => {
                        *key = Some(value.to_string());
                        *awaiting_value = true;
                    }
                    Some(Frame::Map { .. }) => {
                        if current_path(&frames) == segments {
                            if block {
                                return Err(format!(
                                    "line {}: {path} is a block scalar (| or >); write it on one line",
                                    span.start.line()
                                ));
                            }
                            found.push(Occurrence {
                                line: line_of(text, s),
                                start: s,
                                end: e,
                                value: value.to_string(),
                                quoting,
                                pgpass: false,
                            });
                        }
                        value_done(&mut frames);
                    }
                    Some(Frame::Seq) => {
                        let (parent, last) = segments.split_at(segments.len() - 1);
                        let prefix = format!("{}=", last[0]);
                        if current_path(&frames) == parent && value.starts_with(&prefix) && !block {
                            // The raw text of the item holds `KEY=` before the value.
                            let raw = &text[s..e];
                            if let Some(at) = raw.find('=') {
                                found.push(Occurrence {
                                    line: line_of(text, s),
                                    start: s + at + 1,
                                    end: e,
                                    value: value[prefix.len()..].to_string(),
                                    quoting,
                                    pgpass: false,
                                });
                            }
                        }
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }
    at_most_one(found, &format!("{path} is found"), "it must be unique")
}

// ---------------------------------------------------------------- free text

static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"(?:jdbc:)?postgres(?:ql)?://[^\s'"`<>]+"#).unwrap());
static KEYWORDS: LazyLock<Regex> = LazyLock::new(|| {
    let kw = "host|hostaddr|port|dbname|user|password|sslmode|connect_timeout|application_name";
    Regex::new(&format!(
        r#"\b(?:(?:{kw})\s*=\s*(?:'(?:[^'\\]|\\.)*'|[^\s'"`]+)[ \t]*)+"#
    ))
    .unwrap()
});
static PGPASS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?m)^([^:#\s][^:\s]*):(\d+|\*):([^:\s]+):([^:\s]+):([^\r\n]*)$").unwrap());

/// Every connection in a script or config: URLs, libpq keyword strings with
/// a host or a database, and `.pgpass` lines.
pub fn text(text: &str) -> Vec<Occurrence> {
    let mut found = vec![];
    let mut taken: Vec<(usize, usize)> = vec![];
    for m in URL.find_iter(text) {
        taken.push((m.start(), m.end()));
        found.push(Occurrence {
            line: line_of(text, m.start()),
            start: m.start(),
            end: m.end(),
            value: m.as_str().to_string(),
            quoting: Quoting::Raw,
            pgpass: false,
        });
    }
    for m in KEYWORDS.find_iter(text) {
        let s = m.as_str().trim_end();
        if !(s.contains("host") || s.contains("dbname")) || !s.contains(' ') {
            continue;
        }
        if taken
            .iter()
            .any(|&(a, b)| m.start() < b && a < m.start() + s.len())
        {
            continue;
        }
        taken.push((m.start(), m.start() + s.len()));
        found.push(Occurrence {
            line: line_of(text, m.start()),
            start: m.start(),
            end: m.start() + s.len(),
            value: s.to_string(),
            quoting: Quoting::Raw,
            pgpass: false,
        });
    }
    for c in PGPASS.captures_iter(text) {
        let m = c.get(0).unwrap();
        if taken.iter().any(|&(a, b)| m.start() < b && a < m.end()) {
            continue;
        }
        found.push(Occurrence {
            line: line_of(text, m.start()),
            start: m.start(),
            end: m.end(),
            value: m.as_str().to_string(),
            quoting: Quoting::Raw,
            pgpass: true,
        });
    }
    found.sort_by_key(|o| o.start);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_finds_quoted_bare_exported_and_refuses_duplicates() {
        let t = "# c\r\nexport DATABASE_URL=\"postgresql://a@h/d\" # prod\r\nOTHER=1\r\n";
        let o = env(t, "DATABASE_URL").unwrap().unwrap();
        assert_eq!(
            (o.line, o.quoting, o.value.as_str()),
            (2, Quoting::Double, "postgresql://a@h/d")
        );
        assert_eq!(&t[o.start..o.end], "postgresql://a@h/d");
        let t = "DATABASE_URL = postgresql://a@h/d   # comment\nDATABASE_URL_RO=x\n";
        let o = env(t, "DATABASE_URL").unwrap().unwrap();
        assert_eq!(&t[o.start..o.end], "postgresql://a@h/d");
        assert!(env("A=1\nA=2\n", "A").unwrap_err().contains("lines 1, 2"));
        assert!(env("B=1\n", "A").unwrap().is_none());
    }

    #[test]
    fn yaml_finds_map_and_list_forms_and_refuses_aliases() {
        let t = "x: &u 'postgresql://a@h/d'\nservices:\n  backend:\n    environment:\n      DATABASE_URL: postgres://b@h/d # c\n  web:\n    environment:\n      - PORT=80\n      - \"DATABASE_URL=postgres://c@h/d\"\n  alias:\n    url: *u\n";
        let o = yaml(t, "services.backend.environment.DATABASE_URL")
            .unwrap()
            .unwrap();
        assert_eq!(&t[o.start..o.end], "postgres://b@h/d");
        assert_eq!(o.line, 5);
        let o = yaml(t, "services.web.environment.DATABASE_URL").unwrap().unwrap();
        assert_eq!(&t[o.start..o.end], "postgres://c@h/d");
        assert_eq!(o.quoting, Quoting::Double);
        let o = yaml(t, "x").unwrap().unwrap();
        assert_eq!(
            (&t[o.start..o.end], o.quoting),
            ("postgresql://a@h/d", Quoting::YamlSingle)
        );
        assert!(yaml(t, "services.alias.url").unwrap_err().contains("alias"));
        assert!(yaml(t, "services.none").unwrap().is_none());
    }

    #[test]
    fn text_finds_urls_keywords_and_pgpass_lines() {
        let t = "pg_dump \"postgresql://u:p@db:5432/app\" > x\npsql 'host=db port=5432 dbname=app' -c 1\ndb:5432:app:u:secret\nport=5 alone\n";
        let found = text(t);
        let values: Vec<&str> = found.iter().map(|o| &t[o.start..o.end]).collect();
        assert_eq!(
            values,
            vec![
                "postgresql://u:p@db:5432/app",
                "host=db port=5432 dbname=app",
                "db:5432:app:u:secret"
            ]
        );
        assert!(found[2].pgpass);
    }
}
