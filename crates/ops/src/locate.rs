//! Finding connection values inside configuration files without parsing and
//! re-serialising them: each finder returns byte spans, and a rewrite replaces
//! only those bytes. Comments, quoting, order, anchors and line endings stay.

use std::sync::LazyLock;

use cutover_core::plan_file::ConsumerKind;
use cutover_core::{Error, Result};
use regex::Regex;

mod ini;
mod php;
mod python;
mod toml;
use ini::ini_app_leaves;
use php::php_leaves;
use python::python_leaves;
use toml::toml_leaves;

/// How the value is written where it was found; a new value is written the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    Bare,
    Double,
    Single,
    /// YAML single quotes (`''` escapes a quote).
    YamlSingle,
    /// In this quote, with backslash escapes (a Python or JSON5 string).
    Escaped(char),
    /// A `.properties` value: backslashes escaped, and `:` and `=` too where
    /// the file wrote them so (as `Properties.store` does).
    Properties {
        escaped_separators: bool,
    },
    /// Free text: replaced as is (the surrounding script does its own quoting).
    Raw,
    /// Between these delimiters with no escapes (go-ini's `"""…"""` and
    /// backquotes, an INI file's quotes, a TOML literal string).
    Delimited(&'static str),
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
pub fn encode(occ: &Occurrence, value: &str) -> Result<String> {
    match occ.quoting {
        Quoting::Bare => {
            if value.contains([' ', '\t', '#', '"', '\'', '\n']) {
                Err(Error::bad_input(
                    "the new value needs quoting but the old one was bare",
                ))
            } else {
                Ok(value.to_string())
            }
        }
        Quoting::Double => Ok(value.replace('\\', "\\\\").replace('"', "\\\"")),
        Quoting::Single if value.contains('\'') => Err(Error::bad_input(
            "the new value holds a single quote, which a single-quoted value cannot",
        )),
        Quoting::Single => Ok(value.to_string()),
        Quoting::YamlSingle => Ok(value.replace('\'', "''")),
        Quoting::Escaped(q) => Ok(value.replace('\\', "\\\\").replace(q, &format!("\\{q}"))),
        Quoting::Properties { escaped_separators } => {
            let v = value.replace('\\', "\\\\");
            Ok(if escaped_separators {
                v.replace(':', "\\:").replace('=', "\\=")
            } else {
                v
            })
        }
        Quoting::Raw => Ok(value.to_string()),
        Quoting::Delimited(d) if value.contains(d) || value.contains('\n') => Err(Error::bad_input(format!(
            "the new value holds {d} or a line break, which a value written between {d} cannot"
        ))),
        Quoting::Delimited(_) => Ok(value.to_string()),
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

// ---------------------------------------------------------------- keyed files

/// One value of a keyed file (env, YAML, JSON, properties, Python settings,
/// pg_service.conf) and the key path it sits at: `DATABASE_URL`,
/// `services.backend.environment.DATABASE_URL`, `DATABASES.default.HOST`,
/// `spring.datasource.url`, `app.host` (service `app`).
#[derive(Debug, Clone)]
pub struct Leaf {
    pub path: String,
    pub line: usize,
    /// The value, or why it cannot be repointed where it is (an alias, a
    /// block scalar, a computed Python expression).
    pub value: Result<Occurrence>,
}

/// Every value of `text` read as a file of `kind` (not text or command).
pub fn leaves(kind: ConsumerKind, text: &str) -> Result<Vec<Leaf>> {
    match kind {
        ConsumerKind::Env => Ok(env_leaves(text)),
        ConsumerKind::Yaml => yaml_leaves(text),
        ConsumerKind::Json => json_leaves(text),
        ConsumerKind::Properties => Ok(properties_leaves(text)),
        ConsumerKind::Python => Ok(python_leaves(text)),
        ConsumerKind::Ini => Ok(ini_app_leaves(text)),
        ConsumerKind::Toml => toml_leaves(text),
        ConsumerKind::Php => Ok(php_leaves(text)),
        // pgbouncer.ini: `[databases]` entries are `name = connection`.
        ConsumerKind::PgService => Ok(ini_leaves(text, Quoting::Bare)),
        // The rest of the line is the value: a connection string with blanks.
        ConsumerKind::Pgbouncer => Ok(ini_leaves(text, Quoting::Raw)),
        ConsumerKind::Text | ConsumerKind::Command => Err(Error::bad_input("not a keyed file")),
    }
}

/// The one value at `path`, none, or an error naming the lines of several
/// (tools disagree about which one wins) or why it cannot be repointed.
pub fn find(leaves: &[Leaf], path: &str) -> Result<Option<Occurrence>> {
    let at: Vec<&Leaf> = leaves.iter().filter(|l| l.path == path).collect();
    if at.len() > 1 {
        let lines: Vec<String> = at.iter().map(|l| l.line.to_string()).collect();
        return Err(Error::bad_input(format!(
            "{path} is set {} times (lines {}): remove all but one",
            at.len(),
            lines.join(", ")
        )));
    }
    match at.first() {
        None => Ok(None),
        Some(l) => l
            .value
            .clone()
            .map(Some)
            .map_err(|e| Error::bad_input(format!("line {}: {path} {}", l.line, e.message))),
    }
}

fn leaf(path: String, occurrence: Occurrence) -> Leaf {
    Leaf {
        path,
        line: occurrence.line,
        value: Ok(occurrence),
    }
}

/// `KEY=value` in a dotenv / `--env-file` / EnvironmentFile file. `export`
/// prefixes, quotes and trailing comments are understood.
#[cfg(test)]
fn env(text: &str, key: &str) -> Result<Option<Occurrence>> {
    find(&env_leaves(text), key)
}

fn env_leaves(text: &str) -> Vec<Leaf> {
    let mut found = vec![];
    let mut offset = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line_start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let mut rest = line.trim_start();
        if let Some(r) = rest.strip_prefix("export ") {
            rest = r.trim_start();
        }
        let Some((key, after)) = rest.split_once('=') else {
            continue;
        };
        let key = key.trim_end();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            continue;
        }
        let value_text = after.trim_start();
        let value_at = line_start + (line.len() - value_text.len());
        let path = key.to_string();
        let occurrence = match value_text.chars().next() {
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
                    found.push(Leaf {
                        path,
                        line: i + 1,
                        value: Err(Error::bad_input("has no closing quote")),
                    });
                    continue;
                };
                let inner = &body[..close];
                let (value, quoting) = if q == '"' {
                    (inner.replace("\\\"", "\"").replace("\\\\", "\\"), Quoting::Double)
                } else {
                    (inner.to_string(), Quoting::Single)
                };
                Occurrence {
                    line: i + 1,
                    start: value_at + 1,
                    end: value_at + 1 + close,
                    value,
                    quoting,
                    pgpass: false,
                }
            }
            _ => {
                // Bare: up to a ` #` comment, trailing blanks trimmed.
                let cut = value_text.find(" #").unwrap_or(value_text.len());
                let v = value_text[..cut].trim_end();
                Occurrence {
                    line: i + 1,
                    start: value_at,
                    end: value_at + v.len(),
                    value: v.to_string(),
                    quoting: Quoting::Bare,
                    pgpass: false,
                }
            }
        };
        found.push(leaf(path, occurrence));
    }
    found
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
#[cfg(test)]
fn yaml(text: &str, path: &str) -> Result<Option<Occurrence>> {
    find(&yaml_leaves(text)?, path)
}

fn yaml_leaves(text: &str) -> Result<Vec<Leaf>> {
    use saphyr_parser::{Event, Parser, ScalarStyle};
    // Char index -> byte offset (spans are in characters).
    let byte_at: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .collect();
    let mut frames: Vec<Frame> = vec![];
    let mut found: Vec<Leaf> = vec![];
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
        let (event, span) = event.map_err(|e| Error::bad_input(format!("not valid YAML: {e}")))?;
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
                ) {
                    found.push(Leaf {
                        path: current_path(&frames).join("."),
                        line: span.start.line(),
                        value: Err(Error::bad_input(
                            "is an alias (*name); set the key to the path of the anchor's definition",
                        )),
                    });
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
                        let path = current_path(&frames).join(".");
                        let line = line_of(text, s);
                        found.push(Leaf {
                            path,
                            line,
                            value: if block {
                                Err(Error::bad_input(
                                    "is a block scalar (| or >); write it on one line",
                                ))
                            } else {
                                Ok(Occurrence {
                                    line,
                                    start: s,
                                    end: e,
                                    value: value.to_string(),
                                    quoting,
                                    pgpass: false,
                                })
                            },
                        });
                        value_done(&mut frames);
                    }
                    Some(Frame::Seq) => {
                        // The list form: `- KEY=value` (compose's environment).
                        let raw = &text[s..e];
                        if let Some((k, v)) = value.split_once('=')
                            && !block
                            && !k.is_empty()
                            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                            && let Some(at) = raw.find('=')
                        {
                            let mut path = current_path(&frames);
                            path.push(k.to_string());
                            found.push(leaf(
                                path.join("."),
                                Occurrence {
                                    line: line_of(text, s),
                                    start: s + at + 1,
                                    end: e,
                                    value: v.to_string(),
                                    quoting,
                                    pgpass: false,
                                },
                            ));
                        }
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

// ---------------------------------------------------------------- JSON

/// Every string and number of a JSON document (comments and trailing commas
/// allowed, as in appsettings.json), at its key path (`ConnectionStrings.Default`).
fn json_leaves(text: &str) -> Result<Vec<Leaf>> {
    use jsonc_parser::ast::{ObjectPropName, Value};
    let parsed = jsonc_parser::parse_to_ast(text, &Default::default(), &Default::default())
        .map_err(|e| Error::bad_input(format!("not valid JSON: {e}")))?;
    let mut found = vec![];
    fn walk(text: &str, v: &Value, path: &mut Vec<String>, found: &mut Vec<Leaf>) {
        match v {
            Value::Object(o) => {
                for p in &o.properties {
                    let name = match &p.name {
                        ObjectPropName::String(s) => s.value.to_string(),
                        ObjectPropName::Word(w) => w.value.to_string(),
                    };
                    path.push(name);
                    walk(text, &p.value, path, found);
                    path.pop();
                }
            }
            Value::Array(a) => {
                for e in &a.elements {
                    walk(text, e, path, found);
                }
            }
            Value::StringLit(s) => {
                let (start, end) = (s.range.start, s.range.end);
                let q = text[start..].chars().next().unwrap_or('"');
                found.push(leaf(
                    path.join("."),
                    Occurrence {
                        line: line_of(text, start),
                        start: start + 1,
                        end: end - 1,
                        value: s.value.to_string(),
                        quoting: if q == '"' {
                            Quoting::Double
                        } else {
                            Quoting::Escaped('\'')
                        },
                        pgpass: false,
                    },
                ));
            }
            Value::NumberLit(n) => found.push(leaf(
                path.join("."),
                Occurrence {
                    line: line_of(text, n.range.start),
                    start: n.range.start,
                    end: n.range.end,
                    value: n.value.to_string(),
                    quoting: Quoting::Bare,
                    pgpass: false,
                },
            )),
            _ => {}
        }
    }
    if let Some(v) = &parsed.value {
        walk(text, v, &mut vec![], &mut found);
    }
    Ok(found)
}

// ---------------------------------------------------------------- Java properties

/// `key=value`, `key: value` or `key value` lines of a `.properties` file
/// (`#`/`!` comments; a value continued over lines is refused).
fn properties_leaves(text: &str) -> Vec<Leaf> {
    let mut found = vec![];
    let mut offset = 0;
    let mut continued = false;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line_start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let was_continued = continued;
        continued = line.chars().rev().take_while(|c| *c == '\\').count() % 2 == 1;
        let body = line.trim_start();
        if was_continued || body.is_empty() || body.starts_with(['#', '!']) {
            continue;
        }
        let body_at = line_start + (line.len() - body.len());
        // The key ends at an unescaped '=', ':' or blank.
        let mut key = String::new();
        let mut chars = body.char_indices().peekable();
        let mut key_end = body.len();
        while let Some((j, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        key.push(n);
                    }
                }
                '=' | ':' | ' ' | '\t' => {
                    key_end = j;
                    break;
                }
                c => key.push(c),
            }
        }
        let mut rest = body[key_end..].trim_start_matches([' ', '\t']);
        if let Some(r) = rest.strip_prefix(['=', ':']) {
            rest = r.trim_start_matches([' ', '\t']);
        }
        let start = body_at + (body.len() - rest.len());
        let line_no = i + 1;
        if continued {
            found.push(Leaf {
                path: key,
                line: line_no,
                value: Err(Error::bad_input(
                    "is continued over several lines (a trailing \\); write it on one line",
                )),
            });
            continue;
        }
        let mut value = String::new();
        let mut cs = rest.chars();
        while let Some(c) = cs.next() {
            if c != '\\' {
                value.push(c);
                continue;
            }
            match cs.next() {
                Some('t') => value.push('\t'),
                Some('n') => value.push('\n'),
                Some('r') => value.push('\r'),
                Some('f') => value.push('\u{c}'),
                Some('u') => {
                    let hex: String = cs.by_ref().take(4).collect();
                    if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        value.push(ch);
                    }
                }
                Some(o) => value.push(o),
                None => {}
            }
        }
        found.push(leaf(
            key,
            Occurrence {
                line: line_no,
                start,
                end: start + rest.len(),
                value,
                quoting: Quoting::Properties {
                    escaped_separators: rest.contains("\\:") || rest.contains("\\="),
                },
                pgpass: false,
            },
        ));
    }
    found
}

// ---------------------------------------------------------------- pg_service.conf

/// `[service]` sections of a connection service file, each `key=value`
/// line at `service.key`.
fn ini_leaves(text: &str, quoting: Quoting) -> Vec<Leaf> {
    let mut found = vec![];
    let mut section: Option<String> = None;
    let mut offset = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line_start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let body = line.trim();
        if body.is_empty() || body.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = body.strip_prefix('[').and_then(|b| b.strip_suffix(']')) {
            section = Some(name.trim().to_string());
            continue;
        }
        let (Some(s), Some((key, value))) = (&section, body.split_once('=')) else {
            continue;
        };
        let value = value.trim();
        let end_in_line = line.trim_end().len();
        let start = line_start + end_in_line - value.len();
        found.push(leaf(
            format!("{s}.{}", key.trim()),
            Occurrence {
                line: i + 1,
                start,
                end: line_start + end_in_line,
                value: value.to_string(),
                quoting,
                pgpass: false,
            },
        ));
    }
    found
}

// ---------------------------------------------------------------- free text

static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"(?:jdbc:)?postgres(?:ql)?(?:\+[A-Za-z0-9_]+)?://[^\s'"`<>]+"#).unwrap());
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
        assert!(env("A=1\nA=2\n", "A").unwrap_err().message.contains("lines 1, 2"));
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
        assert!(
            yaml(t, "services.alias.url")
                .unwrap_err()
                .message
                .contains("alias")
        );
        assert!(yaml(t, "services.none").unwrap().is_none());
    }

    #[test]
    fn json_properties_and_service_files_give_values_at_their_paths() {
        let t = "{\n  // c\n  \"ConnectionStrings\": { \"Default\": \"Host=h;Password=a\\\"b\", \"Port\": 5432, },\n}\n";
        let l = leaves(ConsumerKind::Json, t).unwrap();
        let o = find(&l, "ConnectionStrings.Default").unwrap().unwrap();
        assert_eq!(
            (o.value.as_str(), o.quoting, o.line),
            ("Host=h;Password=a\"b", Quoting::Double, 3)
        );
        assert_eq!(&t[o.start..o.end], "Host=h;Password=a\\\"b");
        assert_eq!(find(&l, "ConnectionStrings.Port").unwrap().unwrap().value, "5432");

        let t = "# c\r\nspring.datasource.url = jdbc\\:postgresql\\://h/d\r\nspring.datasource.username: app\r\nlong=a\\\r\n  b\r\n";
        let l = leaves(ConsumerKind::Properties, t).unwrap();
        let o = find(&l, "spring.datasource.url").unwrap().unwrap();
        assert_eq!(o.value, "jdbc:postgresql://h/d");
        assert_eq!(
            encode(&o, "jdbc:postgresql://x/y").unwrap(),
            "jdbc\\:postgresql\\://x/y"
        );
        assert_eq!(
            find(&l, "spring.datasource.username").unwrap().unwrap().value,
            "app"
        );
        assert!(find(&l, "long").unwrap_err().message.contains("several lines"));

        let t = "[a]\nhost = h1\ndbname=d\n\n[b]\nhost=h2\n";
        let l = leaves(ConsumerKind::PgService, t).unwrap();
        let o = find(&l, "a.host").unwrap().unwrap();
        assert_eq!((&t[o.start..o.end], o.line), ("h1", 2));
        assert_eq!(find(&l, "b.host").unwrap().unwrap().value, "h2");
        assert!(find(&l, "b.dbname").unwrap().is_none());

        // pgbouncer.ini: ';' comments, the rest of the line is the value.
        let t = ";; deployed\n[databases]\napp = host=h port=5432 dbname=app pool_size=5\n[pgbouncer]\nlisten_port = 6432\n";
        let l = leaves(ConsumerKind::Pgbouncer, t).unwrap();
        let o = find(&l, "databases.app").unwrap().unwrap();
        assert_eq!(o.value, "host=h port=5432 dbname=app pool_size=5");
        assert_eq!(o.quoting, Quoting::Raw);
        assert_eq!(o.line, 3);
    }

    #[test]
    fn text_finds_urls_keywords_and_pgpass_lines() {
        let t = "pg_dump \"postgresql://u:p@db:5432/app\" > x\npsql 'host=db port=5432 dbname=app' -c 1\ndb:5432:app:u:secret\nport=5 alone\n\
                 engine = create_engine(\"postgresql+psycopg2://u:p@db/app\")\n<url>jdbc:postgresql://db:5432/app</url>\n";
        let found = text(t);
        let values: Vec<&str> = found.iter().map(|o| &t[o.start..o.end]).collect();
        assert_eq!(
            values,
            vec![
                "postgresql://u:p@db:5432/app",
                "host=db port=5432 dbname=app",
                "db:5432:app:u:secret",
                "postgresql+psycopg2://u:p@db/app",
                "jdbc:postgresql://db:5432/app"
            ]
        );
        assert!(found[2].pgpass);
    }
}
