//! PHP configuration arrays (Nextcloud's `config/config.php`):
//! `$CONFIG = array ('dbhost' => 'localhost:5432', 'redis' => ['host' =>
//! 'r'], …);` gives `dbhost` and `redis.host`. A small tokenizer for PHP's
//! string literals and comments; a value computed by PHP code (`getenv()`,
//! a concatenation, a double-quoted string with `$`) is reported as such.

use super::{Leaf, Occurrence, Quoting, leaf, line_of};
use cutover_core::Error;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str {
        value: String,
        start: usize,
        end: usize,
        quote: char,
        interpolated: bool,
    },
    Num {
        start: usize,
        end: usize,
    },
    Arrow,
    Open,
    Close,
    Comma,
    /// Anything else (a name, an operator, `;`).
    Other,
}

fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let b = text.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'#' => i = text[i..].find('\n').map_or(b.len(), |e| i + e),
            b'/' if b.get(i + 1) == Some(&b'/') => i = text[i..].find('\n').map_or(b.len(), |e| i + e),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = text[i + 2..].find("*/").map_or(b.len(), |e| i + e + 4)
            }
            b'\'' | b'"' => {
                let q = c as char;
                let mut j = i + 1;
                let mut value = String::new();
                let mut interpolated = false;
                while j < b.len() && b[j] != c {
                    if b[j] == b'\\' && j + 1 < b.len() {
                        let n = b[j + 1] as char;
                        if n == q || n == '\\' {
                            value.push(n);
                            j += 2;
                            continue;
                        }
                    }
                    if q == '"' && b[j] == b'$' {
                        interpolated = true;
                    }
                    let ch = text[j..].chars().next().unwrap();
                    value.push(ch);
                    j += ch.len_utf8();
                }
                out.push((
                    Tok::Str {
                        value,
                        start: i + 1,
                        end: j,
                        quote: q,
                        interpolated,
                    },
                    i,
                ));
                i = j + 1;
            }
            b'=' if b.get(i + 1) == Some(&b'>') => {
                out.push((Tok::Arrow, i));
                i += 2;
            }
            b'(' | b'[' => {
                out.push((Tok::Open, i));
                i += 1;
            }
            b')' | b']' => {
                out.push((Tok::Close, i));
                i += 1;
            }
            b',' => {
                out.push((Tok::Comma, i));
                i += 1;
            }
            c if c.is_ascii_digit() => {
                let s = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push((Tok::Num { start: s, end: i }, s));
            }
            c if c.is_ascii_whitespace() => i += 1,
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                    i += 1;
                }
                out.push((Tok::Other, s));
            }
            _ => {
                let ch = text[i..].chars().next().unwrap();
                out.push((Tok::Other, i));
                i += ch.len_utf8();
            }
        }
    }
    out
}

pub fn php_leaves(text: &str) -> Vec<Leaf> {
    let toks = tokens(text);
    let mut found = vec![];
    // The keys of the arrays we are in (None: a list's element).
    let mut path: Vec<Option<String>> = vec![];
    let mut k = 0;
    while k < toks.len() {
        match &toks[k].0 {
            Tok::Open => path.push(None),
            Tok::Close => {
                path.pop();
            }
            Tok::Str { value: key, .. }
                if toks.get(k + 1).map(|t| &t.0) == Some(&Tok::Arrow) && !path.is_empty() =>
            {
                let mut keys: Vec<&str> = path.iter().flatten().map(String::as_str).collect();
                keys.push(key);
                let joined = keys.join(".");
                let at = toks[k].1;
                k += 2;
                // `array(` or `[` opens a nested array under this key.
                let opens = matches!(toks.get(k), Some((Tok::Open, _)))
                    || matches!(toks.get(k), Some((Tok::Other, _)))
                        && matches!(toks.get(k + 1), Some((Tok::Open, _)))
                        && text[toks[k].1..].to_ascii_lowercase().starts_with("array");
                if opens {
                    if !matches!(toks[k].0, Tok::Open) {
                        k += 1;
                    }
                    path.push(Some(key.clone()));
                    k += 1;
                    continue;
                }
                let ends = |t: Option<&(Tok, usize)>| matches!(t, None | Some((Tok::Comma | Tok::Close, _)));
                let value = match toks.get(k) {
                    Some((
                        Tok::Str {
                            value,
                            start,
                            end,
                            quote,
                            interpolated,
                        },
                        _,
                    )) if ends(toks.get(k + 1)) => {
                        if *interpolated {
                            Err(Error::bad_input(
                                "is a double-quoted PHP string with a variable in it (computed at run time)",
                            ))
                        } else {
                            Ok(Occurrence {
                                line: line_of(text, *start),
                                start: *start,
                                end: *end,
                                value: value.clone(),
                                quoting: Quoting::Escaped(*quote),
                                pgpass: false,
                            })
                        }
                    }
                    Some((Tok::Num { start, end }, _)) if ends(toks.get(k + 1)) => Ok(Occurrence {
                        line: line_of(text, *start),
                        start: *start,
                        end: *end,
                        value: text[*start..*end].to_string(),
                        quoting: Quoting::Bare,
                        pgpass: false,
                    }),
                    _ => Err(Error::bad_input(
                        "is computed by PHP code (not a literal string or number)",
                    )),
                };
                // Skip the rest of this value (up to its comma or its array's end).
                let mut depth = 0usize;
                while let Some((t, _)) = toks.get(k) {
                    match t {
                        Tok::Open => depth += 1,
                        Tok::Close if depth == 0 => break,
                        Tok::Close => depth -= 1,
                        Tok::Comma if depth == 0 => break,
                        _ => {}
                    }
                    k += 1;
                }
                found.push(match value {
                    Ok(o) => leaf(joined, o),
                    Err(e) => Leaf {
                        path: joined,
                        line: line_of(text, at),
                        value: Err(e),
                    },
                });
                continue;
            }
            _ => {}
        }
        k += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nextclouds_config_gives_each_key_and_names_computed_values() {
        let t = "<?php\n$CONFIG = array (\n  'instanceid' => 'oc1',\n  // the database\n  'dbtype' => 'pgsql',\n  \
                 'dbhost' => 'localhost:5432',\n  'dbname' => \"nextcloud\",\n  'dbuser' => 'oc_admin',\n  \
                 'dbpassword' => 'it\\'s',\n  'dbport' => 5432,\n  'trusted_domains' => array (0 => 'cloud.example'),\n  \
                 'redis' => ['host' => getenv('REDIS_HOST'), 'port' => 6379],\n  'secret' => \"x$y\",\n);\n";
        let l = php_leaves(t);
        let get = |p: &str| {
            l.iter()
                .find(|l| l.path == p)
                .unwrap_or_else(|| panic!("{p}: {l:?}"))
                .value
                .clone()
        };
        let host = get("dbhost").unwrap();
        assert_eq!(&t[host.start..host.end], "localhost:5432");
        assert_eq!(host.line, 6);
        assert_eq!(get("dbname").unwrap().quoting, Quoting::Escaped('"'));
        let pw = get("dbpassword").unwrap();
        assert_eq!((pw.value.as_str(), &t[pw.start..pw.end]), ("it's", "it\\'s"));
        assert_eq!(get("dbport").unwrap().value, "5432");
        assert!(get("redis.host").unwrap_err().message.contains("computed"));
        assert_eq!(get("redis.port").unwrap().value, "6379");
        assert!(get("secret").unwrap_err().message.contains("variable"));
        assert!(!l.iter().any(|l| l.path.starts_with("trusted_domains.cloud")));
    }
}
