//! INI files as applications write them (Airflow's `airflow.cfg` for
//! Python's configparser, Grafana's `grafana.ini` and Gitea's `app.ini` for
//! go-ini): `[section]` headers, `key = value` or `key: value`, whole-line
//! comments with `;` or `#`, and go-ini's quoting (`"""…"""`, backquotes,
//! quotes). A value at `section.key` (a key before any section at `key`).
//! A bare value ends at a comment started by blank-then-`;`/`#`; an
//! indented line with no separator continues the value above it
//! (configparser), which then cannot be repointed in place.

use super::{Leaf, Occurrence, Quoting, leaf};
use cutover_core::Error;

pub fn ini_app_leaves(text: &str) -> Vec<Leaf> {
    let mut found: Vec<Leaf> = vec![];
    let mut section: Option<String> = None;
    let mut offset = 0;
    let mut last_key_line: Option<usize> = None;
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
            last_key_line = None;
            continue;
        }
        let sep = body.find(['=', ':']);
        let indented = line.starts_with([' ', '\t']);
        if indented && sep.is_none() {
            // configparser: the value above goes on here.
            if let Some(prev) = found.last_mut()
                && last_key_line.is_some()
            {
                prev.value = Err(Error::bad_input(
                    "spans several lines (an indented continuation): write it on one line",
                ));
            }
            continue;
        }
        let Some(sep) = sep else { continue };
        let key = body[..sep].trim();
        if key.is_empty() {
            continue;
        }
        let lead = line.len() - line.trim_start().len();
        let after = &line[lead + sep + 1..];
        let value_text = after.trim_start();
        let value_at = line_start + line.len() - after.len() + (after.len() - value_text.len());
        let path = match &section {
            Some(s) => format!("{s}.{key}"),
            None => key.to_string(),
        };
        last_key_line = Some(i);
        let quoted = ["\"\"\"", "`", "\"", "'"]
            .into_iter()
            .find(|q| value_text.starts_with(q) && value_text.len() >= 2 * q.len());
        let occurrence = match quoted {
            Some(q) => {
                let inner_text = &value_text[q.len()..];
                let Some(close) = inner_text.find(q) else {
                    found.push(Leaf {
                        path,
                        line: i + 1,
                        value: Err(Error::bad_input(format!("has no closing {q} on its line"))),
                    });
                    continue;
                };
                Occurrence {
                    line: i + 1,
                    start: value_at + q.len(),
                    end: value_at + q.len() + close,
                    value: inner_text[..close].to_string(),
                    quoting: Quoting::Delimited(q),
                    pgpass: false,
                }
            }
            None => {
                // A comment after a blank ends a bare value.
                let mut end = value_text.len();
                for (j, c) in value_text.char_indices() {
                    if (c == ';' || c == '#') && j > 0 && value_text[..j].ends_with([' ', '\t']) {
                        end = j;
                        break;
                    }
                }
                let value = value_text[..end].trim_end();
                Occurrence {
                    line: i + 1,
                    start: value_at,
                    end: value_at + value.len(),
                    value: value.to_string(),
                    quoting: Quoting::Bare,
                    pgpass: false,
                }
            }
        };
        found.push(leaf(path, occurrence));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<'a>(leaves: &'a [Leaf], path: &str) -> &'a Occurrence {
        leaves
            .iter()
            .find(|l| l.path == path)
            .unwrap_or_else(|| panic!("{path}"))
            .value
            .as_ref()
            .unwrap()
    }

    #[test]
    fn grafana_gitea_and_airflow_files_give_their_values_in_place() {
        let t = "; Grafana\r\n[server]\r\nhttp_port = 3000\r\n[database]\r\ntype = postgres\r\nhost = 127.0.0.1:5432\r\n\
                 name = grafana\r\nuser = grafana\r\n;password =\r\npassword = \"\"\"p#w;1\"\"\"\r\n";
        let l = ini_app_leaves(t);
        let host = at(&l, "database.host");
        assert_eq!(&t[host.start..host.end], "127.0.0.1:5432");
        let pw = at(&l, "database.password");
        assert_eq!(
            (pw.value.as_str(), pw.quoting),
            ("p#w;1", Quoting::Delimited("\"\"\""))
        );
        assert_eq!(&t[pw.start..pw.end], "p#w;1");
        assert_eq!(l.iter().filter(|l| l.path == "database.password").count(), 1);

        let t = "[database]\nDB_TYPE  = postgres\nHOST     = 127.0.0.1:5432\nPASSWD   = `se;cr#t`\nSSL_MODE = disable ; or require\n";
        let l = ini_app_leaves(t);
        assert_eq!(at(&l, "database.PASSWD").value, "se;cr#t");
        assert_eq!(at(&l, "database.SSL_MODE").value, "disable");
        assert_eq!(at(&l, "database.HOST").value, "127.0.0.1:5432");

        let t = "[core]\ndags_folder = /opt/dags\n[database]\nsql_alchemy_conn = postgresql+psycopg2://a:pw@h:5432/air\n\
                 sql_alchemy_pool_size: 5\n[logging]\nlog_format = [%%(asctime)s]\n    and more\n";
        let l = ini_app_leaves(t);
        assert_eq!(
            at(&l, "database.sql_alchemy_conn").value,
            "postgresql+psycopg2://a:pw@h:5432/air"
        );
        assert_eq!(at(&l, "database.sql_alchemy_pool_size").value, "5");
        assert!(
            l.iter()
                .find(|l| l.path == "logging.log_format")
                .unwrap()
                .value
                .is_err()
        );
    }
}
