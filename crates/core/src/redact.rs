//! Passwords out of every text cutover shows or keeps: errors, logs, the
//! journal, reports. Its own module, so that `error` and `endpoint` (which
//! both redact) need not import each other.

/// Replaces the password of every `scheme://user:password@` in a text with `***`,
/// and the value of every `password=` keyword.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '/')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    redact_keyword_passwords(&out)
}

/// `password=…` (libpq, JDBC), `Password=…;`, `PWD=…`, `PSW=…` (Npgsql,
/// any case, blanks around `=`): the value becomes `***`.
fn redact_keyword_passwords(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut i = 0;
    while i < text.len() {
        let key = ["password", "pwd", "psw"]
            .into_iter()
            .find(|k| lower[i..].starts_with(k));
        let boundary = i == 0 || !lower.as_bytes()[i - 1].is_ascii_alphanumeric();
        let Some(key) = key.filter(|_| boundary) else {
            i += text[i..].chars().next().map(char::len_utf8).unwrap_or(1);
            continue;
        };
        let after_key = i + key.len();
        let eq = after_key + (text[after_key..].len() - text[after_key..].trim_start_matches(' ').len());
        if !text[eq..].starts_with('=') {
            i = after_key;
            continue;
        }
        let mut v = eq + 1;
        while text[v..].starts_with(' ') {
            v += 1;
        }
        let tail = &text[v..];
        let (start, end) = match tail.chars().next() {
            // Quoted: the quotes stay.
            Some(q @ ('\'' | '"')) => (1, tail[1..].find(q).map(|e| e + 1).unwrap_or(tail.len())),
            _ => (
                0,
                tail.find(|c: char| c.is_whitespace() || c == '&' || c == ';' || c == '"' || c == '\'')
                    .unwrap_or(tail.len()),
            ),
        };
        if end <= start {
            i = v + end.max(1);
            continue;
        }
        out.push_str(&text[at..v + start]);
        out.push_str("***");
        at = v + end;
        i = at;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_urls_and_keywords() {
        assert_eq!(
            redact_text("connect postgresql://u:p4ss@h:1/db failed; host=h password=p4ss dbname=x"),
            "connect postgresql://u:***@h:1/db failed; host=h password=*** dbname=x"
        );
        assert_eq!(redact_text("password='a b' x"), "password='***' x");
        assert_eq!(
            redact_text("Host=h;User Id=u;Password = s3;PWD=s4;Pooling=true"),
            "Host=h;User Id=u;Password = ***;PWD=***;Pooling=true"
        );
        assert_eq!(redact_text("DB_PASSWORD=\"s e\" # x"), "DB_PASSWORD=\"***\" # x");
        assert_eq!(
            redact_text("nopassword=1 passwords=2"),
            "nopassword=1 passwords=2"
        );
        assert_eq!(redact_text("postgresql://u@h/db"), "postgresql://u@h/db");
    }
}
