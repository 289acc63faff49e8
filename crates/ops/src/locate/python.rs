//! Literal values in a Python settings module (Django's `settings.py`):
//! `DATABASES = {'default': {'HOST': 'db', 'PORT': 5432, …}}` gives
//! `DATABASES.default.HOST`. Only literals can be repointed; a value computed
//! at start-up (`os.environ[…]`, an f-string) is reported as such.

use super::{Leaf, Occurrence, Quoting, leaf, line_of};
use cutover_core::Error;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A string literal: its value, the byte span inside its quotes, the
    /// quote, and why it is not a plain literal (f-string, bytes, triple quotes).
    Str {
        value: String,
        start: usize,
        end: usize,
        quote: char,
        not_plain: Option<&'static str>,
    },
    Num {
        start: usize,
        end: usize,
    },
    Name(String),
    Op(char),
    /// The end of a logical line.
    Newline,
}

fn tokenize(text: &str) -> Vec<(Token, usize)> {
    let b = text.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    let mut depth = 0usize;
    while i < b.len() {
        let c = b[i];
        match c {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'\n' => {
                if depth == 0 {
                    out.push((Token::Newline, i));
                }
                i += 1;
            }
            b'\\' if b.get(i + 1) == Some(&b'\n') => i += 2,
            c if c.is_ascii_whitespace() => i += 1,
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &text[s..i];
                if word.len() <= 2
                    && word.chars().all(|c| "rRbBuUfF".contains(c))
                    && matches!(b.get(i), Some(b'\'' | b'"'))
                {
                    let (tok, next) = string(text, i, Some(word));
                    out.push((tok, s));
                    i = next;
                } else {
                    out.push((Token::Name(word.to_string()), s));
                }
            }
            c if c.is_ascii_digit() => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                    i += 1;
                }
                out.push((Token::Num { start: s, end: i }, s));
            }
            b'\'' | b'"' => {
                let (tok, next) = string(text, i, None);
                out.push((tok, i));
                i = next;
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or(' ');
                match ch {
                    '{' | '[' | '(' => depth += 1,
                    '}' | ']' | ')' => depth = depth.saturating_sub(1),
                    _ => {}
                }
                out.push((Token::Op(ch), i));
                i += ch.len_utf8();
            }
        }
    }
    out
}

/// The string literal starting at `at` (its opening quote).
fn string(text: &str, at: usize, prefix: Option<&str>) -> (Token, usize) {
    let q = text[at..].chars().next().unwrap_or('\'');
    let triple: String = std::iter::repeat_n(q, 3).collect();
    let raw = prefix.is_some_and(|p| p.contains(['r', 'R']));
    let not_plain = match prefix.map(|p| p.to_lowercase()) {
        Some(p) if p.contains('f') => Some("is an f-string (computed at start-up)"),
        Some(p) if p.contains('b') => Some("is a bytes literal"),
        _ => None,
    };
    if text[at..].starts_with(&triple) {
        let body = at + 3;
        let end = text[body..].find(&triple).map(|e| body + e).unwrap_or(text.len());
        return (
            Token::Str {
                value: text[body..end].to_string(),
                start: body,
                end,
                quote: q,
                not_plain: Some("is a triple-quoted string; write it in single quotes"),
            },
            (end + 3).min(text.len()),
        );
    }
    let mut value = String::new();
    let mut i = at + 1;
    let mut chars = text[i..].chars();
    while let Some(c) = chars.next() {
        if c == q || c == '\n' {
            break;
        }
        i += c.len_utf8();
        if c == '\\' && !raw {
            let Some(n) = chars.next() else { break };
            i += n.len_utf8();
            match n {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                '\\' | '\'' | '"' => value.push(n),
                other => {
                    value.push('\\');
                    value.push(other);
                }
            }
        } else {
            value.push(c);
        }
    }
    (
        Token::Str {
            value,
            start: at + 1,
            end: i,
            quote: q,
            not_plain: if raw && not_plain.is_none() {
                Some("is a raw string")
            } else {
                not_plain
            },
        },
        (i + 1).min(text.len()),
    )
}

struct Parser<'t> {
    text: &'t str,
    tokens: Vec<(Token, usize)>,
    at: usize,
    found: Vec<Leaf>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn offset(&self) -> usize {
        self.tokens
            .get(self.at)
            .map(|(_, o)| *o)
            .unwrap_or(self.text.len())
    }

    /// Skips to the end of the current value: a ',' or closing bracket at
    /// this depth, or the end of the logical line.
    fn skip_value(&mut self) {
        let mut depth = 0usize;
        while let Some(t) = self.peek() {
            match t {
                Token::Op('{' | '[' | '(') => depth += 1,
                Token::Op('}' | ']' | ')') if depth == 0 => return,
                Token::Op('}' | ']' | ')') => depth -= 1,
                Token::Op(',') if depth == 0 => return,
                Token::Newline if depth == 0 => return,
                _ => {}
            }
            self.at += 1;
        }
    }

    fn value(&mut self, path: &mut Vec<String>) {
        let line = line_of(self.text, self.offset());
        match self.peek().cloned() {
            Some(Token::Op('{')) => {
                self.at += 1;
                self.dict(path);
            }
            Some(Token::Str {
                value,
                start,
                end,
                quote,
                not_plain,
            }) => {
                self.at += 1;
                let concatenated =
                    matches!(self.peek(), Some(Token::Str { .. }) | Some(Token::Op('+' | '%')))
                        || matches!(self.peek(), Some(Token::Op('.')));
                let problem = not_plain.map(str::to_string).or(concatenated.then(|| {
                    "is computed from several parts; cutover repoints literal values only".to_string()
                }));
                self.found.push(match problem {
                    None => leaf(
                        path.join("."),
                        Occurrence {
                            line,
                            start,
                            end,
                            value,
                            quoting: Quoting::Escaped(quote),
                            pgpass: false,
                        },
                    ),
                    Some(p) => Leaf {
                        path: path.join("."),
                        line,
                        value: Err(Error::bad_input(p)),
                    },
                });
                self.skip_value();
            }
            Some(Token::Num { start, end }) => {
                self.at += 1;
                self.found.push(leaf(
                    path.join("."),
                    Occurrence {
                        line,
                        start,
                        end,
                        value: self.text[start..end].to_string(),
                        quoting: Quoting::Bare,
                        pgpass: false,
                    },
                ));
                self.skip_value();
            }
            Some(Token::Name(n)) if matches!(n.as_str(), "True" | "False" | "None") => {
                self.at += 1;
                self.skip_value();
            }
            Some(_) => {
                let s = self.offset();
                self.skip_value();
                let e = self.offset();
                let expr = self.text[s..e].trim();
                self.found.push(Leaf {
                    path: path.join("."),
                    line,
                    value: Err(Error::bad_input(format!(
                        "is computed at start-up (`{expr}`); cutover repoints literal values only: repoint where \
                         the value comes from (an env file, for instance) as its own consumer"
                    ))),
                });
            }
            None => {}
        }
    }

    /// After `{`: `key: value` pairs up to `}`.
    fn dict(&mut self, path: &mut Vec<String>) {
        loop {
            match self.peek().cloned() {
                None => return,
                Some(Token::Op('}')) => {
                    self.at += 1;
                    return;
                }
                Some(Token::Op(',')) | Some(Token::Newline) => self.at += 1,
                Some(Token::Str { value, .. })
                    if self.tokens.get(self.at + 1).map(|t| &t.0) == Some(&Token::Op(':')) =>
                {
                    self.at += 2;
                    path.push(value);
                    self.value(path);
                    path.pop();
                }
                Some(_) => {
                    // A computed key or `**other`: not a path cutover can name.
                    self.skip_value();
                    if self.peek() == Some(&Token::Op(':')) {
                        self.at += 1;
                        self.skip_value();
                    }
                    if matches!(self.peek(), Some(Token::Op(']' | ')'))) {
                        self.at += 1;
                    }
                }
            }
        }
    }
}

/// Every literal in the module's top-level `NAME = …` assignments.
pub(super) fn python_leaves(text: &str) -> Vec<Leaf> {
    let mut p = Parser {
        text,
        tokens: tokenize(text),
        at: 0,
        found: vec![],
    };
    while p.at < p.tokens.len() {
        let start_of_line = p.at == 0 || p.tokens[p.at - 1].0 == Token::Newline;
        match (&p.tokens[p.at].0, p.tokens.get(p.at + 1).map(|t| &t.0)) {
            (Token::Name(n), Some(Token::Op('=')))
                if start_of_line && p.tokens.get(p.at + 2).map(|t| &t.0) != Some(&Token::Op('=')) =>
            {
                let mut path = vec![n.clone()];
                p.at += 2;
                p.value(&mut path);
            }
            _ => p.at += 1,
        }
    }
    p.found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn django_databases_literals_and_computed_values() {
        let t = "import os\n# settings\nDEBUG = False\nDATABASES = {\n    'default': {\n        'ENGINE': \
                 'django.db.backends.postgresql',\n        \"NAME\": \"app\",  # the db\n        'USER': 'app',\n        \
                 'PASSWORD': 'it\\'s',\n        'HOST': 'db.internal',\n        'PORT': 5432,\n        'OPTIONS': \
                 {'sslmode': 'require'},\n    },\n    'replica': {'HOST': os.environ['REPLICA_HOST'], 'NAME': f'{x}'},\n}\n";
        let leaves = python_leaves(t);
        let get = |p: &str| leaves.iter().find(|l| l.path == p).unwrap().value.clone();
        let host = get("DATABASES.default.HOST").unwrap();
        assert_eq!(&t[host.start..host.end], "db.internal");
        assert_eq!(host.line, 10);
        let name = get("DATABASES.default.NAME").unwrap();
        assert_eq!(
            (name.value.as_str(), name.quoting),
            ("app", Quoting::Escaped('"'))
        );
        assert_eq!(get("DATABASES.default.PASSWORD").unwrap().value, "it's");
        assert_eq!(get("DATABASES.default.PORT").unwrap().value, "5432");
        assert_eq!(get("DATABASES.default.OPTIONS.sslmode").unwrap().value, "require");
        assert!(
            get("DATABASES.replica.HOST")
                .unwrap_err()
                .message
                .contains("os.environ['REPLICA_HOST']")
        );
        assert!(
            get("DATABASES.replica.NAME")
                .unwrap_err()
                .message
                .contains("f-string")
        );
        assert!(
            !leaves.iter().any(|l| l.path == "DEBUG"),
            "a constant is neither a value nor computed"
        );
    }
}
