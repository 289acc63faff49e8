//! create-roles: the roles the source's owners, privileges, policies and
//! settings name that the target server lacks, created from the source's
//! attributes (`[roles] create_missing = true`), with the memberships among
//! them; passwords only with `copy_passwords = true`. Undo drops them.

use async_trait::async_trait;
use cutover_core::artefacts::Artefacts;
use cutover_core::journal::{Item, ItemKey};
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, Result};
use sqlx::PgPool;

use crate::inventory::{quote_ident, quote_literal};

const STAGE: &str = cutover_core::stage::names::CREATE_ROLES;

/// create-roles: the roles it created.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RolesResult {
    pub summary: String,
    pub created: Vec<String>,
}

cutover_core::artefacts!(RolesResult);

pub struct CreateRoles {
    pub description: Description,
    roles: Vec<String>,
    copy_passwords: bool,
}

/// A role's attributes on the source.
#[derive(Debug, Clone, sqlx::FromRow)]
struct RoleAttrs {
    rolname: String,
    rolsuper: bool,
    rolinherit: bool,
    rolcreaterole: bool,
    rolcreatedb: bool,
    rolcanlogin: bool,
    rolreplication: bool,
    rolbypassrls: bool,
    rolconnlimit: i32,
    rolvaliduntil: Option<String>,
}

impl RoleAttrs {
    fn clause(&self) -> String {
        let flag = |on: bool, yes: &str, no: &str| if on { yes.to_string() } else { no.to_string() };
        let mut c = vec![
            flag(self.rolsuper, "SUPERUSER", "NOSUPERUSER"),
            flag(self.rolinherit, "INHERIT", "NOINHERIT"),
            flag(self.rolcreaterole, "CREATEROLE", "NOCREATEROLE"),
            flag(self.rolcreatedb, "CREATEDB", "NOCREATEDB"),
            flag(self.rolcanlogin, "LOGIN", "NOLOGIN"),
            flag(self.rolreplication, "REPLICATION", "NOREPLICATION"),
            flag(self.rolbypassrls, "BYPASSRLS", "NOBYPASSRLS"),
            format!("CONNECTION LIMIT {}", self.rolconnlimit),
        ];
        if let Some(v) = &self.rolvaliduntil {
            c.push(format!("VALID UNTIL {}", quote_literal(v)));
        }
        c.join(" ")
    }

    fn describe(&self) -> String {
        format!("{} ({})", self.rolname, self.clause())
    }
}

async fn attributes(source: &PgPool, roles: &[String]) -> Result<Vec<RoleAttrs>> {
    Ok(sqlx::query_as(
        "SELECT rolname::text, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, \
                rolbypassrls, rolconnlimit, rolvaliduntil::text FROM pg_roles WHERE rolname = ANY($1) ORDER BY 1",
    )
    .bind(roles)
    .fetch_all(source)
    .await?)
}

impl CreateRoles {
    /// The stage for `missing` roles (named on the source, absent on the target).
    pub async fn new(source: &PgPool, missing: &[String], copy_passwords: bool) -> Result<CreateRoles> {
        let attrs = attributes(source, missing).await?;
        if attrs.is_empty() {
            return Ok(CreateRoles {
                description: Description {
                    summary: "no role to create: the target server has every role the source's objects name"
                        .into(),
                    ..Default::default()
                },
                roles: vec![],
                copy_passwords,
            });
        }
        Ok(CreateRoles {
            description: Description {
                summary: format!(
                    "create {} role(s) on the target server that the source's objects name, as on the source{}",
                    attrs.len(),
                    if copy_passwords {
                        ", with their password hashes"
                    } else {
                        ", without passwords"
                    }
                ),
                details: attrs
                    .iter()
                    .map(|a| format!("creates role {}", a.describe()))
                    .collect(),
                warnings: vec![],
                destructive: false,
            },
            roles: missing.to_vec(),
            copy_passwords,
        })
    }
}

async fn existing(pool: &PgPool, roles: &[String]) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)")
            .bind(roles)
            .fetch_all(pool)
            .await?,
    )
}

#[async_trait]
impl Stage for CreateRoles {
    fn name(&self) -> String {
        STAGE.into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Reversible("drop the roles this stage created".into())
    }
    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        let attrs = attributes(&ctx.source, &self.roles).await?;
        let present = existing(&ctx.target, &self.roles).await?;
        let mut created = vec![];
        for a in &attrs {
            if present.contains(&a.rolname) {
                continue;
            }
            let mut sql = format!("CREATE ROLE {} WITH {}", quote_ident(&a.rolname), a.clause());
            if self.copy_passwords {
                let hash: Option<String> =
                    sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
                        .bind(&a.rolname)
                        .fetch_one(&ctx.source)
                        .await
                        .map_err(|e| {
                            Error::from(e).context(
                                "reading a role's password hash on the source (roles.copy_passwords needs a \
                                 superuser there)",
                            )
                        })?;
                if let Some(h) = hash {
                    sql.push_str(&format!(" PASSWORD {}", quote_literal(&h)));
                }
            }
            // The role and its journal item in one transaction: after a
            // crash the role exists if and only if it is journaled.
            let mut tx = ctx.journal.pool().begin().await?;
            sqlx::query(&sql).execute(&mut *tx).await.map_err(|e| {
                Error::from(e).context(format!(
                    "creating role {} on the target (the target user needs CREATEROLE, or a superuser for \
                     SUPERUSER, REPLICATION and BYPASSRLS roles)",
                    a.rolname
                ))
            })?;
            let item = ItemKey::Role(a.rolname.clone());
            ctx.journal
                .item_done_in(&mut tx, ctx.run_id, &Item::new(STAGE, &item))
                .await?;
            tx.commit().await?;
            created.push(a.rolname.clone());
        }
        // Memberships among the roles the source's objects name, as there.
        let grants: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT r.rolname::text, m.rolname::text, a.admin_option FROM pg_auth_members a \
             JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member \
             WHERE r.rolname = ANY($1) OR m.rolname = ANY($1)",
        )
        .bind(&self.roles)
        .fetch_all(&ctx.source)
        .await?;
        let on_target = crate::security::roles_of(&ctx.target).await?;
        let mut memberships = 0;
        for (role, member, admin) in grants {
            if on_target.contains(&role) && on_target.contains(&member) {
                let admin = if admin { " WITH ADMIN OPTION" } else { "" };
                sqlx::query(&format!(
                    "GRANT {} TO {}{admin}",
                    quote_ident(&role),
                    quote_ident(&member)
                ))
                .execute(&ctx.target)
                .await
                .map_err(|e| {
                    Error::from(e).context(format!("granting role {role} to {member} on the target"))
                })?;
                memberships += 1;
            }
        }
        Ok(RolesResult {
            summary: format!(
                "{} role(s) created ({}), {memberships} membership(s) as on the source",
                created.len(),
                created.join(", ")
            ),
            created,
        }
        .to_value())
    }
    async fn check(&self, ctx: &RunContext) -> Result<Check> {
        let present = existing(&ctx.target, &self.roles).await?;
        let missing: Vec<&String> = self.roles.iter().filter(|r| !present.contains(r)).collect();
        Ok(if missing.is_empty() {
            Check::Holds
        } else {
            Check::Fails(format!(
                "role(s) missing on the target: {}",
                missing.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })
    }
    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        let done = ctx.journal.items_done(ctx.run_id, STAGE).await?;
        let mut dropped = vec![];
        for item in done.iter().rev() {
            let ItemKey::Role(role) = item else {
                continue;
            };
            sqlx::query(&format!("DROP ROLE IF EXISTS {}", quote_ident(role)))
                .execute(&ctx.target)
                .await
                .map_err(|e| {
                    Error::from(e).context(format!(
                        "dropping role {role} on the target (it may own objects or hold privileges elsewhere on \
                         that server: REASSIGN OWNED BY / DROP OWNED BY it first)"
                    ))
                })?;
            dropped.push(role.to_string());
        }
        ctx.journal.clear_items(ctx.run_id, STAGE).await?;
        Ok(format!("dropped role(s) {}", dropped.join(", ")))
    }
}
