//! Large objects: moved in 1 MiB slices (memory stays flat however large
//! one is), small ones batched up to 1,000 to a transaction, several
//! transactions at once, each with its journal item; owners and grants kept
//! (through the role map).

use cutover_core::Result;
use cutover_core::journal::{Item, ItemKey};
use cutover_core::stage::RunContext;
use futures::StreamExt;

use super::{Pass, STAGE, on_source};
use crate::inventory::quote_ident;

const LO_CHUNK: i64 = 1 << 20;
/// Objects up to one slice share a transaction, up to this many bytes or
/// [`LO_BATCH_COUNT`] objects (100,000 small ones were 100,000 transactions).
const LO_BATCH_BYTES: i64 = 8 << 20;
const LO_BATCH_COUNT: usize = 1000;

/// One large object of the source: its oid, size, owner and ACL grants.
#[derive(Debug, Clone)]
struct LargeObject {
    oid: u32,
    size: i64,
    owner: String,
    grants: Vec<(String, String)>,
}

/// What one transaction on the target copies: a batch of small objects, or
/// one large object slice by slice.
enum LoWork {
    Batch(Vec<LargeObject>),
    Big(LargeObject),
}

impl LoWork {
    fn item(&self) -> ItemKey {
        match self {
            LoWork::Batch(b) => ItemKey::LargeObjects {
                first: b[0].oid,
                last: b[b.len() - 1].oid,
            },
            LoWork::Big(o) => ItemKey::LargeObject(o.oid),
        }
    }
}

/// STEP: copies the large objects (pre-data created them empty), several
/// transactions at once; returns how many the source has.
pub(super) async fn copy(pass: &Pass<'_>) -> Result<usize> {
    let ctx = pass.ctx;
    let rows: Vec<(sqlx::postgres::types::Oid, i64, String, Vec<String>)> = sqlx::query_as(
        "SELECT m.oid, lo_lseek64(lo_open(m.oid, x'40000'::int), 0, 2), pg_get_userbyid(m.lomowner)::text, \
                coalesce((SELECT array_agg(coalesce(r.rolname::text, 'PUBLIC') || '=' || x.privilege_type || \
                                 CASE WHEN x.is_grantable THEN '*' ELSE '' END) \
                          FROM aclexplode(m.lomacl) x LEFT JOIN pg_roles r ON r.oid = x.grantee \
                          WHERE x.grantee <> m.lomowner), '{}') \
         FROM pg_largeobject_metadata m ORDER BY m.oid",
    )
    .fetch_all(&ctx.source)
    .await
    .map_err(on_source)?;
    let objects: Vec<LargeObject> = rows
        .into_iter()
        .map(|(oid, size, owner, grants)| LargeObject {
            oid: oid.0,
            size,
            owner,
            grants: grants
                .iter()
                .filter_map(|g| g.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())))
                .collect(),
        })
        .collect();
    let count = objects.len();
    let mut work = vec![];
    let mut batch: Vec<LargeObject> = vec![];
    let mut batch_bytes = 0;
    for o in objects {
        if o.size > LO_CHUNK {
            work.push(LoWork::Big(o));
            continue;
        }
        if !batch.is_empty() && (batch_bytes + o.size > LO_BATCH_BYTES || batch.len() >= LO_BATCH_COUNT) {
            work.push(LoWork::Batch(std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
        batch_bytes += o.size;
        batch.push(o);
    }
    if !batch.is_empty() {
        work.push(LoWork::Batch(batch));
    }
    let done = ctx.journal.items_done(ctx.run_id, STAGE).await?;
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&ctx.target)
        .await?;
    let map = &pass.settings.role_map;
    let jobs = pass.settings.large_object_jobs;
    let mut results = futures::stream::iter(work.into_iter().filter(|w| !done.contains(&w.item())))
        .map(|w| copy_lo_work(ctx, w, &me, map))
        .buffer_unordered(jobs);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(count)
}

/// Copies one unit of large objects in one target transaction with its
/// journal item: after a crash they exist on the target if and only if the
/// item is there (what an earlier attempt left is unlinked first).
async fn copy_lo_work(
    ctx: &RunContext,
    work: LoWork,
    me: &str,
    map: &crate::security::RoleMap,
) -> Result<()> {
    let item = work.item();
    let objects: Vec<&LargeObject> = match &work {
        LoWork::Batch(b) => b.iter().collect(),
        LoWork::Big(o) => vec![o],
    };
    let oids: Vec<sqlx::postgres::types::Oid> = objects
        .iter()
        .map(|o| sqlx::postgres::types::Oid(o.oid))
        .collect();
    let mut tx = ctx.target.begin().await?;
    sqlx::query("SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid = ANY($1)")
        .bind(&oids)
        .execute(&mut *tx)
        .await?;
    let bytes = match &work {
        LoWork::Batch(_) => {
            let (got, data): (Vec<sqlx::postgres::types::Oid>, Vec<Vec<u8>>) = sqlx::query_as(
                "SELECT array_agg(o ORDER BY o), array_agg(lo_get(o) ORDER BY o) FROM unnest($1::oid[]) o",
            )
            .bind(&oids)
            .fetch_one(&ctx.source)
            .await
            .map_err(on_source)?;
            sqlx::query("SELECT lo_from_bytea(o, d) FROM unnest($1::oid[], $2::bytea[]) AS t(o, d)")
                .bind(&got)
                .bind(&data)
                .execute(&mut *tx)
                .await?;
            data.iter().map(|d| d.len() as i64).sum()
        }
        LoWork::Big(o) => {
            sqlx::query("SELECT lo_create($1)")
                .bind(sqlx::postgres::types::Oid(o.oid))
                .execute(&mut *tx)
                .await?;
            let mut offset = 0i64;
            while offset < o.size {
                let slice: Vec<u8> = sqlx::query_scalar("SELECT lo_get($1, $2, $3)")
                    .bind(sqlx::postgres::types::Oid(o.oid))
                    .bind(offset)
                    .bind(LO_CHUNK as i32)
                    .fetch_one(&ctx.source)
                    .await
                    .map_err(on_source)?;
                if slice.is_empty() {
                    break;
                }
                sqlx::query("SELECT lo_put($1, $2, $3)")
                    .bind(sqlx::postgres::types::Oid(o.oid))
                    .bind(offset)
                    .bind(&slice)
                    .execute(&mut *tx)
                    .await?;
                offset += slice.len() as i64;
                ctx.cancel.check()?;
            }
            offset
        }
    };
    // Owners and grants as on the source.
    for o in &objects {
        let owner = map.target(&o.owner);
        if owner != me {
            sqlx::query(&format!(
                "ALTER LARGE OBJECT {} OWNER TO {}",
                o.oid,
                quote_ident(owner)
            ))
            .execute(&mut *tx)
            .await?;
        }
        for (who, privilege) in &o.grants {
            let who = if who == "PUBLIC" {
                "PUBLIC".to_string()
            } else {
                quote_ident(map.target(who))
            };
            let (privilege, with) = match privilege.strip_suffix('*') {
                Some(p) => (p, " WITH GRANT OPTION"),
                None => (privilege.as_str(), ""),
            };
            sqlx::query(&format!(
                "GRANT {privilege} ON LARGE OBJECT {} TO {who}{with}",
                o.oid
            ))
            .execute(&mut *tx)
            .await?;
        }
    }
    ctx.journal
        .item_done_in(
            &mut tx,
            ctx.run_id,
            &Item {
                bytes: Some(bytes),
                rows: Some(objects.len() as i64),
                ..Item::new(STAGE, &item)
            },
        )
        .await?;
    tx.commit().await?;
    Ok(())
}
