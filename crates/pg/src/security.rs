//! What applications rely on beyond the rows: who owns each object, who may
//! do what (object, column and default privileges, the database's CONNECT and
//! friends), row-level security policies' roles, and the settings of the
//! database (`ALTER DATABASE … SET`, `ALTER ROLE … IN DATABASE … SET`).
//!
//! Read the same way on both servers, with names rendered independently of
//! any search_path, so that they compare as text: the plan lists the roles
//! the source names, discover refuses when the target lacks one, verify-data
//! compares owners and privileges, and the copy carries the database's
//! settings and privileges (pg_dump leaves them out without `--create`).

use std::collections::{BTreeMap, BTreeSet};

use cutover_core::Result;
use sqlx::{PgPool, Row};

use crate::inventory::{SYSTEM_SCHEMAS, quote_ident, quote_literal};

/// One database's owners, privileges, policies and settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// "table public.users" → "owner app_owner; app_ro=SELECT; app_rw=INSERT,SELECT"
    pub objects: BTreeMap<String, String>,
    /// Every role an owner, a privilege, a default privilege, a policy or a
    /// per-role setting names (PUBLIC left out).
    pub roles: BTreeSet<String>,
    /// `ALTER DATABASE … SET` settings (`name=value`), in order.
    pub database_settings: Vec<String>,
    /// Per-role settings in this database: role → `name=value`s.
    pub role_settings: BTreeMap<String, Vec<String>>,
    /// The database's privileges: (grantee or PUBLIC, privilege, grantable).
    pub database_acl: Vec<(String, String, bool)>,
    pub database_owner: String,
}

/// Objects of the application: not system, not the journal's, not an extension's.
fn object_filter(journal_schema: &str) -> String {
    format!(
        "n.nspname NOT IN ({SYSTEM_SCHEMAS}, {}) AND n.nspname NOT LIKE 'pg\\_%'",
        quote_literal(journal_schema)
    )
}

const NOT_EXTENSION: &str = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {cat}::regclass \
     AND d.objid = {oid} AND d.deptype = 'e')";

/// Not made by PostgreSQL itself for another object (a range type's
/// constructor functions and multirange type, owned by the bootstrap
/// superuser; absent before PostgreSQL 14).
fn not_internal(cat: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{cat}'::regclass AND d.objid = {oid} \
         AND d.deptype = 'i')"
    )
}

fn not_extension(cat: &str, oid: &str) -> String {
    NOT_EXTENSION
        .replace("{cat}", &format!("'{cat}'"))
        .replace("{oid}", oid)
}

/// An ACL as sorted `grantee=PRIV,PRIV*` entries (`*`: with grant option);
/// "default" where it gives what the owner's defaults give (NULL, or an
/// explicit owner-only ACL left by a GRANT and a REVOKE: the same
/// privileges, and pg_dump emits nothing for either). `default` is the SQL
/// of the object's default ACL (`acldefault(kind, owner)`), or None where
/// there is none to compare with.
fn acl_sql(acl: &str, default: Option<&str>) -> String {
    // An empty ACL (every privilege revoked, the owner's too) gives none;
    // aclexplode refuses an array of no dimension.
    let explode = |a: &str| {
        format!(
            "CASE WHEN cardinality({a}) = 0 THEN 'none' ELSE coalesce((SELECT string_agg(g, '; ' ORDER BY g) FROM ( \
               SELECT coalesce(r.rolname::text, 'PUBLIC') || '=' || string_agg(x.privilege_type || \
                      CASE WHEN x.is_grantable THEN '*' ELSE '' END, ',' ORDER BY x.privilege_type) AS g \
               FROM aclexplode({a}) x LEFT JOIN pg_roles r ON r.oid = x.grantee \
               GROUP BY coalesce(r.rolname::text, 'PUBLIC')) e), 'none') END"
        )
    };
    let same = match default {
        Some(d) => format!(" OR {} = {}", explode(acl), explode(d)),
        None => String::new(),
    };
    format!(
        "CASE WHEN {acl} IS NULL{same} THEN 'default' ELSE {} END",
        explode(acl)
    )
}

impl Security {
    pub async fn read(pool: &PgPool, journal_schema: &str) -> Result<Security> {
        let filter = object_filter(journal_schema);
        let pro_ext = format!(
            "{} AND {}",
            not_extension("pg_proc", "p.oid"),
            not_internal("pg_proc", "p.oid")
        );
        let typ_ext = format!(
            "{} AND {}",
            not_extension("pg_type", "t.oid"),
            not_internal("pg_type", "t.oid")
        );
        let mut tx = pool.begin().await?;
        // Every name outside pg_catalog schema-qualified, on both sides alike.
        sqlx::query("SET LOCAL search_path = pg_catalog")
            .execute(&mut *tx)
            .await?;
        let sql = format!(
            "SELECT 'schema ' || quote_ident(n.nspname), pg_get_userbyid(n.nspowner)::text, {nspacl} \
               FROM pg_namespace n WHERE {filter} AND {ns_ext} \
             UNION ALL \
             SELECT CASE c.relkind WHEN 'S' THEN 'sequence ' WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized view ' \
                      WHEN 'f' THEN 'foreign table ' ELSE 'table ' END || c.oid::regclass::text, \
                    pg_get_userbyid(c.relowner)::text, {relacl} \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {filter} AND {rel_ext} \
             UNION ALL \
             SELECT 'column ' || c.oid::regclass::text || '.' || quote_ident(a.attname), NULL, {attacl} \
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE a.attacl IS NOT NULL AND cardinality(a.attacl) > 0 AND a.attnum > 0 AND NOT a.attisdropped AND {filter} AND {rel_ext} \
             UNION ALL \
             SELECT CASE p.prokind WHEN 'p' THEN 'procedure ' WHEN 'a' THEN 'aggregate ' ELSE 'function ' END \
                      || p.oid::regprocedure::text, pg_get_userbyid(p.proowner)::text, {proacl} \
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {filter} AND {pro_ext} \
             UNION ALL \
             SELECT 'type ' || format_type(t.oid, NULL), pg_get_userbyid(t.typowner)::text, {typacl} \
               FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
              WHERE {filter} AND {typ_ext} AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c') \
                AND NOT (t.typlen = -1 AND t.typelem <> 0 AND EXISTS (SELECT 1 FROM pg_type e WHERE e.oid = t.typelem AND e.typarray = t.oid)) \
             UNION ALL \
             SELECT 'default privileges of ' || pg_get_userbyid(d.defaclrole) || \
                    coalesce(' in schema ' || quote_ident(n.nspname), '') || ' on ' || \
                    CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions' \
                      WHEN 'T' THEN 'types' WHEN 'n' THEN 'schemas' WHEN 'L' THEN 'large objects' \
                      ELSE d.defaclobjtype::text END, NULL, {defacl} \
               FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace \
             UNION ALL \
             SELECT 'large object ' || m.oid, pg_get_userbyid(m.lomowner)::text, {lomacl} \
               FROM pg_largeobject_metadata m \
             UNION ALL \
             SELECT 'policy ' || quote_ident(p.polname) || ' on ' || c.oid::regclass::text, NULL, \
                    'to ' || (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r)::text END, ',' \
                              ORDER BY 1) FROM unnest(p.polroles) r) \
               FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE {filter}",
            nspacl = acl_sql("n.nspacl", Some("acldefault('n', n.nspowner)")),
            relacl = acl_sql(
                "c.relacl",
                Some("acldefault((CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END)::\"char\", c.relowner)")
            ),
            attacl = acl_sql("a.attacl", Some("'{}'::aclitem[]")),
            proacl = acl_sql("p.proacl", Some("acldefault('f', p.proowner)")),
            typacl = acl_sql("t.typacl", Some("acldefault('T', t.typowner)")),
            defacl = acl_sql("d.defaclacl", None),
            lomacl = acl_sql("m.lomacl", Some("acldefault('L', m.lomowner)")),
            ns_ext = not_extension("pg_namespace", "n.oid"),
            rel_ext = not_extension("pg_class", "c.oid"),
            pro_ext = pro_ext,
            typ_ext = typ_ext,
        );
        let rows = sqlx::query(&sql).fetch_all(&mut *tx).await?;
        let mut sec = Security::default();
        for r in rows {
            let (what, owner, acl): (String, Option<String>, Option<String>) = (r.get(0), r.get(1), r.get(2));
            let mut text = String::new();
            if let Some(o) = &owner {
                sec.roles.insert(o.clone());
                text.push_str(&format!("owner {o}"));
            }
            if let Some(acl) = &acl {
                for entry in acl.split("; ") {
                    let who = entry
                        .split('=')
                        .next()
                        .unwrap_or_default()
                        .trim_start_matches("to ");
                    for who in who.split(',') {
                        if !matches!(who, "PUBLIC" | "default" | "none" | "") {
                            sec.roles.insert(who.to_string());
                        }
                    }
                }
                if !text.is_empty() {
                    text.push_str("; ");
                }
                text.push_str(acl);
            }
            if let Some(role) = what
                .strip_prefix("default privileges of ")
                .and_then(|r| r.split(" on ").next())
                .map(|r| r.split(" in schema ").next().unwrap_or(r))
            {
                sec.roles.insert(role.to_string());
            }
            sec.objects.insert(what, text);
        }
        let settings = sqlx::query(
            "SELECT s.setrole, CASE WHEN s.setrole = 0 THEN '' ELSE pg_get_userbyid(s.setrole)::text END, s.setconfig \
             FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE d.datname = current_database() ORDER BY 2",
        )
        .fetch_all(&mut *tx)
        .await?;
        for r in settings {
            let (setrole, role, config): (sqlx::postgres::types::Oid, String, Vec<String>) =
                (r.get(0), r.get(1), r.get(2));
            if setrole.0 == 0 {
                // The freeze's own switch and the fence's saved privileges
                // (set on the source): never carried, never compared.
                sec.database_settings = config
                    .into_iter()
                    .filter(|c| {
                        !c.starts_with("default_transaction_read_only=") && !c.starts_with("cutover.")
                    })
                    .collect();
            } else {
                // The online switch's fence (marked by cutover.fenced):
                // never carried, never compared.
                let fenced = config.iter().any(|c| c == "cutover.fenced=on");
                let config: Vec<String> = config
                    .into_iter()
                    .filter(|c| {
                        !fenced || (c != "cutover.fenced=on" && c != "default_transaction_read_only=on")
                    })
                    .collect();
                if config.is_empty() {
                    continue;
                }
                sec.roles.insert(role.clone());
                sec.role_settings.insert(role, config);
            }
        }
        let (owner, acl): (String, Vec<(String, String, bool)>) = {
            let owner: String = sqlx::query_scalar(
                "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()",
            )
            .fetch_one(&mut *tx)
            .await?;
            // Under the fence (crate::fence), the privileges it saved.
            let saved = crate::fence::is_up_on(&mut tx, journal_schema).await?;
            let acl = sqlx::query_as(&format!(
                "SELECT coalesce(r.rolname::text, 'PUBLIC'), x.privilege_type, x.is_grantable \
                 FROM pg_database d CROSS JOIN LATERAL aclexplode({}) x \
                 LEFT JOIN pg_roles r ON r.oid = x.grantee \
                 WHERE d.datname = current_database() AND x.grantee <> d.datdba ORDER BY 1, 2",
                crate::fence::acl_sql(journal_schema, saved)
            ))
            .fetch_all(&mut *tx)
            .await?;
            (owner, acl)
        };
        tx.commit().await?;
        for (who, _, _) in &acl {
            if who != "PUBLIC" {
                sec.roles.insert(who.clone());
            }
        }
        sec.database_owner = owner;
        sec.database_acl = acl;
        Ok(sec)
    }

    /// The database's privileges and settings as comparable lines.
    fn database_lines(&self) -> BTreeMap<String, String> {
        let mut lines = BTreeMap::new();
        let acl: Vec<String> = self
            .database_acl
            .iter()
            .map(|(who, p, g)| format!("{who}={p}{}", if *g { "*" } else { "" }))
            .collect();
        lines.insert("privileges on the database".to_string(), acl.join("; "));
        lines.insert(
            "settings of the database".to_string(),
            self.database_settings.join(", "),
        );
        for (role, config) in &self.role_settings {
            lines.insert(
                format!("settings of role {role} in the database"),
                config.join(", "),
            );
        }
        lines
    }

    /// What differs between the source's (`self`) and the target's
    /// (`other`) owners, privileges, policies and database settings, one
    /// line each, at most `limit`.
    /// Leaves out the MAINTAIN privilege (PostgreSQL 17 and later), which an
    /// owner holds implicitly there and no older source can have granted:
    /// for comparing a 17 target with an older source.
    pub fn without_maintain(&mut self) {
        for text in self.objects.values_mut() {
            *text = text
                .split("; ")
                .filter_map(|entry| match entry.split_once('=') {
                    Some((grantee, privs)) => {
                        let kept: Vec<&str> = privs
                            .split(',')
                            .filter(|p| p.trim_end_matches('*') != "MAINTAIN")
                            .collect();
                        (!kept.is_empty()).then(|| format!("{grantee}={}", kept.join(",")))
                    }
                    None => Some(entry.to_string()),
                })
                .collect::<Vec<_>>()
                .join("; ");
        }
    }

    pub fn differences(&self, other: &Security, limit: usize) -> Vec<String> {
        let mut out = vec![];
        let (mut a, mut b) = (self.objects.clone(), other.objects.clone());
        a.extend(self.database_lines());
        b.extend(other.database_lines());
        for (what, mine) in &a {
            match b.get(what) {
                Some(theirs) if theirs == mine => {}
                Some(theirs) => out.push(format!(
                    "{what}: {} on the source, {} on the target",
                    show(mine),
                    show(theirs)
                )),
                None => out.push(format!(
                    "{what}: {} on the source, absent on the target",
                    show(mine)
                )),
            }
        }
        for (what, theirs) in &b {
            if !a.contains_key(what) {
                out.push(format!("{what}: only on the target ({})", show(theirs)));
            }
        }
        out.truncate(limit);
        out
    }

    /// The statements that give `target` (a database on the target server)
    /// the source's database-level privileges and settings, after the
    /// target's own were reset (`previous`).
    pub fn database_statements(&self, target: &str, previous: &Security) -> Vec<String> {
        let db = quote_ident(target);
        let mut sql = vec![];
        for (who, p, _) in &previous.database_acl {
            sql.push(format!("REVOKE {p} ON DATABASE {db} FROM {}", grantee(who)));
        }
        for (who, p, g) in &self.database_acl {
            let with = if *g { " WITH GRANT OPTION" } else { "" };
            sql.push(format!("GRANT {p} ON DATABASE {db} TO {}{with}", grantee(who)));
        }
        sql.push(format!("ALTER DATABASE {db} RESET ALL"));
        for s in &self.database_settings {
            if let Some((k, v)) = s.split_once('=') {
                sql.push(format!(
                    "ALTER DATABASE {db} SET {} TO {}",
                    quote_ident(k),
                    setting_value(k, v)
                ));
            }
        }
        for role in previous.role_settings.keys() {
            sql.push(format!(
                "ALTER ROLE {} IN DATABASE {db} RESET ALL",
                quote_ident(role)
            ));
        }
        for (role, config) in &self.role_settings {
            for s in config {
                if let Some((k, v)) = s.split_once('=') {
                    sql.push(format!(
                        "ALTER ROLE {} IN DATABASE {db} SET {} TO {}",
                        quote_ident(role),
                        quote_ident(k),
                        setting_value(k, v)
                    ));
                }
            }
        }
        sql
    }
}

/// The statements that give the target's `public` schema the source's owner
/// and privileges: pg_dump leaves that schema out (it exists in every
/// database) and its defaults differ between majors (PUBLIC may CREATE in it
/// before PostgreSQL 15), so applications would find other rights there.
pub async fn public_schema_statements(
    source: &PgPool,
    target: &PgPool,
    map: &RoleMap,
) -> Result<Vec<String>> {
    const SQL: &str = "SELECT pg_get_userbyid(n.nspowner)::text, \
          coalesce((SELECT array_agg(coalesce(r.rolname::text, 'PUBLIC') || '=' || x.privilege_type || \
                    CASE WHEN x.is_grantable THEN '*' ELSE '' END) \
                    FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) x \
                    LEFT JOIN pg_roles r ON r.oid = x.grantee WHERE x.grantee <> n.nspowner), '{}') \
        FROM pg_namespace n WHERE n.nspname = 'public'";
    let src: Option<(String, Vec<String>)> = sqlx::query_as(SQL).fetch_optional(source).await?;
    let tgt: Option<(String, Vec<String>)> = sqlx::query_as(SQL).fetch_optional(target).await?;
    let (Some((owner, acl)), Some((t_owner, t_acl))) = (src, tgt) else {
        return Ok(vec![]);
    };
    let owner = map.target(&owner).to_string();
    let mut acl: Vec<String> = acl
        .iter()
        .map(|e| match e.split_once('=') {
            Some((w, p)) if w != "PUBLIC" => format!("{}={p}", map.target(w)),
            _ => e.clone(),
        })
        .filter(|e| !e.starts_with(&format!("{owner}=")))
        .collect();
    acl.sort();
    acl.dedup();
    let mut t_acl = t_acl;
    t_acl.sort();
    let mut sql = vec![];
    if owner != t_owner {
        sql.push(format!("ALTER SCHEMA public OWNER TO {}", quote_ident(&owner)));
    }
    if acl != t_acl {
        for entry in &t_acl {
            let (who, _) = entry.split_once('=').unwrap_or((entry, ""));
            sql.push(format!("REVOKE ALL ON SCHEMA public FROM {}", grantee(who)));
        }
        for entry in &acl {
            let (who, p) = entry.split_once('=').unwrap_or((entry, ""));
            let (p, with) = match p.strip_suffix('*') {
                Some(p) => (p, " WITH GRANT OPTION"),
                None => (p, ""),
            };
            sql.push(format!("GRANT {p} ON SCHEMA public TO {}{with}", grantee(who)));
        }
    }
    Ok(sql)
}

fn grantee(who: &str) -> String {
    if who == "PUBLIC" {
        "PUBLIC".into()
    } else {
        quote_ident(who)
    }
}

/// The settings PostgreSQL marks GUC_LIST_QUOTE: `setconfig` holds their
/// elements quoted as identifiers where needed (`public, """abc"""`).
const LIST_QUOTE: &[&str] = &[
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "shared_preload_libraries",
    "local_preload_libraries",
    "unix_socket_directories",
];

/// A GUC_LIST_QUOTE value split into its elements, each dequoted (as
/// PostgreSQL's SplitGUCList does: `"a""b"` is `a"b`, commas inside quotes
/// are the element's).
fn split_guc_list(v: &str) -> Vec<String> {
    let mut out = vec![];
    let mut chars = v.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut e = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        e.push('"');
                    } else {
                        break;
                    }
                } else {
                    e.push(c);
                }
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                e.push(c);
                chars.next();
            }
            e = e.trim_end().to_string();
        }
        out.push(e);
        if chars.next().is_none() {
            break;
        }
    }
    out
}

/// A setting's value as `setconfig` holds it back into SQL, as pg_dump
/// writes it: a GUC_LIST_QUOTE setting's elements one literal each
/// (dequoted: the server quotes them again), any other one literal.
fn setting_value(name: &str, v: &str) -> String {
    if LIST_QUOTE.contains(&name.to_lowercase().as_str()) {
        let elements = split_guc_list(v);
        if elements.is_empty() {
            return "''".into();
        }
        elements
            .iter()
            .map(|e| quote_literal(e))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        quote_literal(v)
    }
}

fn show(s: &str) -> String {
    if s.is_empty() {
        "(none)".into()
    } else {
        s.to_string()
    }
}

impl Security {
    /// One line for the plan: what the copy applies.
    pub fn summary(&self) -> String {
        let mut owners: BTreeMap<&str, usize> = BTreeMap::new();
        for text in self.objects.values() {
            if let Some(o) = text
                .strip_prefix("owner ")
                .map(|t| t.split(';').next().unwrap_or(t))
            {
                *owners.entry(o).or_default() += 1;
            }
        }
        let owners: Vec<String> = owners.iter().map(|(o, n)| format!("{o} ({n})")).collect();
        let grants = self.objects.values().filter(|t| t.contains('=')).count();
        let policies = self.objects.keys().filter(|k| k.starts_with("policy ")).count();
        format!(
            "keeps owners and privileges as on the source: objects owned by {}; {grants} object(s) with privileges \
             granted; {policies} row-level security polic(ies); database settings: {}; roles named: {}",
            if owners.is_empty() {
                "nobody".into()
            } else {
                owners.join(", ")
            },
            if self.database_settings.is_empty() {
                "none".into()
            } else {
                self.database_settings.join(", ")
            },
            self.roles.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    }
}

/// The owner roles of `sec` (not among `created`, which the target user
/// will create and so may use) that the target's user may not give objects
/// to: it must be a superuser or a member of each.
pub async fn owners_not_settable(target: &PgPool, sec: &Security, created: &[String]) -> Result<Vec<String>> {
    let owners: BTreeSet<String> = sec
        .objects
        .values()
        .filter_map(|t| {
            t.strip_prefix("owner ")
                .map(|t| t.split(';').next().unwrap_or(t).to_string())
        })
        .filter(|o| !created.contains(o))
        .collect();
    let owners: Vec<String> = owners.into_iter().collect();
    Ok(sqlx::query_scalar(
        "SELECT r FROM unnest($1::text[]) r WHERE NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
           AND NOT pg_has_role(current_user, r, 'MEMBER') ORDER BY 1",
    )
    .bind(&owners)
    .fetch_all(target)
    .await?)
}

/// Every privilege `role` has on the application's tables, views,
/// sequences, schemas, functions and columns (a column's only where the
/// table's is lacking), as "SELECT on table shop.users" lines, read on the
/// connection given (the consumer's own on the target, the operator's on
/// the source).
pub async fn privileges_of(
    conn: &mut sqlx::PgConnection,
    role: &str,
    journal_schema: &str,
) -> Result<BTreeSet<String>> {
    let filter = object_filter(journal_schema);
    let rel_ext = not_extension("pg_class", "c.oid");
    let pro_ext = format!(
        "{} AND {}",
        not_extension("pg_proc", "p.oid"),
        not_internal("pg_proc", "p.oid")
    );
    let ns_ext = not_extension("pg_namespace", "n.oid");
    let sql = format!(
        "SELECT x.p || ' on table ' || c.oid::regclass::text FROM pg_class c \
           JOIN pg_namespace n ON n.oid = c.relnamespace \
           CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) x(p) \
          WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {filter} AND {rel_ext} AND has_table_privilege($1, c.oid, x.p) \
         UNION ALL \
         SELECT x.p || ' on column ' || c.oid::regclass::text || '.' || quote_ident(a.attname) FROM pg_class c \
           JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid \
           CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) x(p) \
          WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped AND {filter} \
            AND {rel_ext} AND NOT has_table_privilege($1, c.oid, x.p) AND has_column_privilege($1, c.oid, a.attnum, x.p) \
         UNION ALL \
         SELECT x.p || ' on sequence ' || c.oid::regclass::text FROM pg_class c \
           JOIN pg_namespace n ON n.oid = c.relnamespace CROSS JOIN unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) x(p) \
          WHERE c.relkind = 'S' AND {filter} AND {rel_ext} AND has_sequence_privilege($1, c.oid, x.p) \
         UNION ALL \
         SELECT x.p || ' on schema ' || quote_ident(n.nspname) FROM pg_namespace n \
           CROSS JOIN unnest(ARRAY['USAGE', 'CREATE']) x(p) \
          WHERE {filter} AND {ns_ext} AND has_schema_privilege($1, n.oid, x.p) \
         UNION ALL \
         SELECT 'EXECUTE on function ' || p.oid::regprocedure::text FROM pg_proc p \
           JOIN pg_namespace n ON n.oid = p.pronamespace \
          WHERE {filter} AND {pro_ext} AND has_function_privilege($1, p.oid, 'EXECUTE')"
    );
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL search_path = pg_catalog")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<String> = sqlx::query_scalar(&sql).bind(role).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows.into_iter().collect())
}

/// One role's privileges on the target against the source's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parity {
    /// The same set on both sides.
    pub same: bool,
    /// "N privilege(s) as on the source", or what is missing and extra.
    pub said: String,
}

/// "as on the source" or what is missing and extra, for one role.
pub fn parity(source: &BTreeSet<String>, target: &BTreeSet<String>) -> Parity {
    let missing: Vec<&String> = source.difference(target).collect();
    let extra: Vec<&String> = target.difference(source).collect();
    if missing.is_empty() && extra.is_empty() {
        return Parity {
            same: true,
            said: format!("{} privilege(s) as on the source", source.len()),
        };
    }
    let list = |v: &[&String]| {
        let shown: Vec<&str> = v.iter().take(10).map(|s| s.as_str()).collect();
        let more = if v.len() > 10 {
            format!(" and {} more", v.len() - 10)
        } else {
            String::new()
        };
        format!("{}{more}", shown.join(", "))
    };
    let mut parts = vec![];
    if !missing.is_empty() {
        parts.push(format!("missing on the target: {}", list(&missing)));
    }
    if !extra.is_empty() {
        parts.push(format!("not had on the source: {}", list(&extra)));
    }
    Parity {
        same: false,
        said: parts.join("; "),
    }
}

/// `[roles] map`: source role names → target role names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleMap(pub BTreeMap<String, String>);

impl RoleMap {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The target's name for a source role.
    pub fn target<'a>(&'a self, role: &'a str) -> &'a str {
        self.0.get(role).map(String::as_str).unwrap_or(role)
    }

    /// The source role a target role stands for (the first mapped to it, or itself).
    pub fn source<'a>(&'a self, role: &'a str) -> &'a str {
        self.0
            .iter()
            .find(|(_, t)| t.as_str() == role)
            .map(|(s, _)| s.as_str())
            .unwrap_or(role)
    }

    /// A comma-separated role list as pg_dump writes it, mapped.
    fn list(&self, text: &str) -> String {
        text.split(", ")
            .map(|r| {
                let name = unquote(r.trim());
                if name == "PUBLIC" && !r.trim().starts_with('"') {
                    return "PUBLIC".to_string();
                }
                match self.0.get(&name) {
                    Some(t) => quote_ident(t),
                    None => r.trim().to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One line of pg_restore's script with the role names it gives owners,
    /// grants, default privileges and policies mapped; every other line as
    /// it is. pg_dump writes each of these statements on one line.
    pub fn rewrite_line(&self, line: &str) -> String {
        if self.is_empty() {
            return line.to_string();
        }
        let mapped_after = |line: &str, key: &str, ends: &[&str]| -> Option<String> {
            let at = line.find(key)? + key.len();
            let rest = &line[at..];
            let end = ends
                .iter()
                .filter_map(|e| rest.find(e))
                .min()
                .unwrap_or(rest.len());
            Some(format!(
                "{}{}{}",
                &line[..at],
                self.list(&rest[..end]),
                &rest[end..]
            ))
        };
        if line.starts_with("ALTER ")
            && line.contains(" OWNER TO ")
            && !line.starts_with("ALTER DEFAULT PRIVILEGES")
        {
            let at = line.rfind(" OWNER TO ").unwrap() + " OWNER TO ".len();
            let rest = line[at..].trim_end_matches(';');
            return format!("{}{};", &line[..at], self.list(rest));
        }
        if line.starts_with("ALTER DEFAULT PRIVILEGES FOR ROLE ") {
            let line =
                mapped_after(line, "FOR ROLE ", &[" IN SCHEMA ", " GRANT ", " REVOKE "]).unwrap_or_default();
            let key = if line.contains(" REVOKE ") {
                " FROM "
            } else {
                " TO "
            };
            return mapped_after(&line, key, &[";", " WITH GRANT OPTION"]).unwrap_or(line);
        }
        if line.starts_with("GRANT ") {
            return mapped_after(line, " TO ", &[";", " WITH GRANT OPTION", " GRANTED BY"])
                .unwrap_or(line.into());
        }
        if line.starts_with("REVOKE ") {
            return mapped_after(line, " FROM ", &[";", " CASCADE", " GRANTED BY"]).unwrap_or(line.into());
        }
        if line.starts_with("CREATE POLICY ") && line.contains(" TO ") {
            return mapped_after(line, " TO ", &[" USING ", " WITH CHECK ", ";"]).unwrap_or(line.into());
        }
        line.to_string()
    }
}

fn unquote(id: &str) -> String {
    match id.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => id.to_string(),
    }
}

impl Security {
    /// The source's security as the target should have it under `map`:
    /// every role name mapped, entries that now name one role merged.
    pub fn mapped(&self, map: &RoleMap) -> Security {
        if map.is_empty() {
            return self.clone();
        }
        let role = |r: &str| map.target(r).to_string();
        let acl = |text: &str| -> String {
            let mut merged: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let mut other = vec![];
            for part in text.split("; ") {
                if let Some(owner) = part.strip_prefix("owner ") {
                    other.push(format!("owner {}", role(owner)));
                } else if let Some(list) = part.strip_prefix("to ") {
                    let mut roles: Vec<String> = list.split(',').map(role).collect();
                    roles.sort();
                    roles.dedup();
                    other.push(format!("to {}", roles.join(",")));
                } else if let Some((who, privs)) = part.split_once('=') {
                    merged
                        .entry(role(who))
                        .or_default()
                        .extend(privs.split(',').map(str::to_string));
                } else {
                    other.push(part.to_string());
                }
            }
            let mut entries: Vec<String> = merged
                .into_iter()
                .map(|(w, p)| format!("{w}={}", p.into_iter().collect::<Vec<_>>().join(",")))
                .collect();
            entries.sort();
            other.into_iter().chain(entries).collect::<Vec<_>>().join("; ")
        };
        let mut out = Security {
            database_settings: self.database_settings.clone(),
            database_owner: self.database_owner.clone(),
            ..Default::default()
        };
        for (what, text) in &self.objects {
            let what = match what.strip_prefix("default privileges of ") {
                Some(rest) => {
                    let (r, tail) = rest.split_at(
                        rest.find(" in schema ")
                            .or_else(|| rest.find(" on "))
                            .unwrap_or(rest.len()),
                    );
                    format!("default privileges of {}{tail}", role(r))
                }
                None => what.clone(),
            };
            out.objects.insert(what, acl(text));
        }
        out.roles = self.roles.iter().map(|r| role(r)).collect();
        for (r, config) in &self.role_settings {
            out.role_settings.insert(role(r), config.clone());
        }
        let mut dacl: Vec<(String, String, bool)> = self
            .database_acl
            .iter()
            .map(|(w, p, g)| (if w == "PUBLIC" { w.clone() } else { role(w) }, p.clone(), *g))
            .collect();
        dacl.sort();
        dacl.dedup();
        out.database_acl = dacl;
        out
    }
}

/// What the session's own user may do on its server (its role's
/// attributes): the privilege checks of the plan read these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Attributes {
    pub superuser: bool,
    pub createrole: bool,
    pub createdb: bool,
}

impl Attributes {
    /// The current user's attributes on `pool`'s server.
    pub async fn of_current_user(pool: &PgPool) -> Result<Attributes> {
        Ok(sqlx::query_as(
            "SELECT rolsuper AS superuser, rolcreaterole AS createrole, rolcreatedb AS createdb \
             FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(pool)
        .await?)
    }
}

/// Whether `role` may log in on `pool`'s server (None: no such role).
pub async fn can_login(pool: &PgPool, role: &str) -> Result<Option<bool>> {
    Ok(
        sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_optional(pool)
            .await?,
    )
}

/// Roles of the target server.
pub async fn roles_of(pool: &PgPool) -> Result<BTreeSet<String>> {
    let names: Vec<String> = sqlx::query_scalar("SELECT rolname::text FROM pg_roles")
        .fetch_all(pool)
        .await?;
    Ok(names.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_names_what_is_missing_and_extra_and_at_most_ten_of_each() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        let same = parity(&set(&["a", "b"]), &set(&["b", "a"]));
        assert_eq!(
            same,
            Parity {
                same: true,
                said: "2 privilege(s) as on the source".into()
            }
        );
        let differs = parity(&set(&["a", "b"]), &set(&["b", "c"]));
        assert!(!differs.same);
        assert_eq!(differs.said, "missing on the target: a; not had on the source: c");
        let many: Vec<String> = (0..12).map(|i| format!("p{i:02}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let long = parity(&set(&many), &set(&[]));
        assert!(long.said.ends_with("p09 and 2 more"), "{}", long.said);
    }

    #[test]
    fn maintain_is_left_out_for_an_older_source() {
        let mut sec = Security::default();
        sec.objects.insert(
            "table public.users".into(),
            "owner kit_admin; app_rw=DELETE,INSERT,SELECT,UPDATE; kit_admin=DELETE,INSERT,MAINTAIN,REFERENCES,SELECT; \
             ops=MAINTAIN*"
                .into(),
        );
        sec.without_maintain();
        assert_eq!(
            sec.objects["table public.users"],
            "owner kit_admin; app_rw=DELETE,INSERT,SELECT,UPDATE; kit_admin=DELETE,INSERT,REFERENCES,SELECT"
        );
    }

    #[test]
    fn a_role_map_rewrites_owners_grants_default_privileges_and_policies() {
        let map = RoleMap(
            [("app_owner", "shop_owner"), ("app_ro", "shop ro")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .into(),
        );
        for (line, want) in [
            (
                "ALTER TABLE shop.accounts OWNER TO app_owner;",
                "ALTER TABLE shop.accounts OWNER TO \"shop_owner\";",
            ),
            (
                "GRANT SELECT(id) ON TABLE shop.accounts TO app_ro;",
                "GRANT SELECT(id) ON TABLE shop.accounts TO \"shop ro\";",
            ),
            (
                "GRANT ALL ON TABLE t TO app_rw, app_ro WITH GRANT OPTION;",
                "GRANT ALL ON TABLE t TO app_rw, \"shop ro\" WITH GRANT OPTION;",
            ),
            (
                "REVOKE ALL ON FUNCTION f() FROM PUBLIC;",
                "REVOKE ALL ON FUNCTION f() FROM PUBLIC;",
            ),
            (
                "ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA shop GRANT SELECT ON TABLES TO app_ro;",
                "ALTER DEFAULT PRIVILEGES FOR ROLE \"shop_owner\" IN SCHEMA shop GRANT SELECT ON TABLES TO \"shop ro\";",
            ),
            (
                "CREATE POLICY p ON shop.orders FOR SELECT TO app_ro USING ((total < (100)::numeric));",
                "CREATE POLICY p ON shop.orders FOR SELECT TO \"shop ro\" USING ((total < (100)::numeric));",
            ),
            (
                "INSERT INTO x VALUES ('OWNER TO app_owner');",
                "INSERT INTO x VALUES ('OWNER TO app_owner');",
            ),
        ] {
            assert_eq!(map.rewrite_line(line), want);
        }
    }

    #[test]
    fn a_mapped_security_merges_what_now_names_one_role() {
        let mut a = Security::default();
        a.objects.insert(
            "table t".into(),
            "owner app_owner; app_ro=SELECT; app_rw=INSERT,SELECT".into(),
        );
        a.objects.insert(
            "default privileges of app_owner in schema s on tables".into(),
            "app_ro=SELECT".into(),
        );
        let map = RoleMap(
            [("app_ro", "op"), ("app_rw", "op")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .into(),
        );
        let m = a.mapped(&map);
        assert_eq!(m.objects["table t"], "owner app_owner; op=INSERT,SELECT");
        assert!(
            m.objects
                .contains_key("default privileges of app_owner in schema s on tables")
        );
    }

    #[test]
    fn list_settings_keep_their_elements() {
        assert_eq!(
            setting_value("search_path", "public, \"MySchema\""),
            "'public', 'MySchema'"
        );
        // A schema whose name holds quotes (pgcopydb's fixture): kept.
        assert_eq!(
            setting_value("search_path", "public, \"\"\"abc\"\"\""),
            "'public', '\"abc\"'"
        );
        assert_eq!(setting_value("search_path", "\"a,b\", c"), "'a,b', 'c'");
        assert_eq!(setting_value("temp_tablespaces", ""), "''");
        // Not a quoted list: one literal, as pg_dump writes it.
        assert_eq!(setting_value("DateStyle", "ISO, MDY"), "'ISO, MDY'");
        assert_eq!(setting_value("application_name", "a, b"), "'a, b'");
        assert_eq!(setting_value("work_mem", "64MB"), "'64MB'");
    }

    #[test]
    fn differences_name_the_object_and_both_sides() {
        let mut a = Security::default();
        a.objects.insert(
            "table public.users".into(),
            "owner app_owner; app_ro=SELECT".into(),
        );
        let mut b = a.clone();
        b.objects
            .insert("table public.users".into(), "owner kit_admin".into());
        b.database_settings = vec!["search_path=public".into()];
        let d = a.differences(&b, 10);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d.iter()
                .any(|l| l
                    .contains("owner app_owner; app_ro=SELECT on the source, owner kit_admin on the target")),
            "{d:?}"
        );
        assert!(
            d.iter()
                .any(|l| l.contains("settings of the database: (none) on the source")),
            "{d:?}"
        );
    }
}
