//! Server identity: which database a connection really reached. Compared by
//! what the server says about itself, never by URL text (`localhost` and
//! `127.0.0.1` are the same server; a clone of a cluster shares its system
//! identifier but not its start time).

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgConnection;

use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerIdentity {
    /// `pg_control_system().system_identifier`: unique per initdb.
    pub system_identifier: String,
    /// `pg_postmaster_start_time()`: tells apart clones of one cluster.
    pub started_at: String,
    pub database: String,
    pub database_oid: u32,
    /// The server's own view of its address and port (may be empty on a socket).
    pub server_addr: String,
    pub server_port: i32,
    pub version: String,
    pub version_num: i32,
}

impl ServerIdentity {
    pub async fn of(pool: &PgPool) -> Result<ServerIdentity> {
        let row = sqlx::query_as(IDENTITY_SQL).fetch_one(pool).await?;
        Ok(ServerIdentity::from_row(row))
    }

    pub async fn of_connection(conn: &mut PgConnection) -> Result<ServerIdentity> {
        let row = sqlx::query_as(IDENTITY_SQL).fetch_one(conn).await?;
        Ok(ServerIdentity::from_row(row))
    }

    fn from_row(row: IdentityRow) -> ServerIdentity {
        ServerIdentity {
            system_identifier: row.0,
            started_at: row.1,
            database: row.2,
            database_oid: row.3 as u32,
            server_addr: row.4,
            server_port: row.5,
            version: row.6,
            version_num: row.7,
        }
    }
}

type IdentityRow = (String, String, String, i64, String, i32, String, i32);

const IDENTITY_SQL: &str = "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                    pg_postmaster_start_time()::text, current_database()::text, \
                    (SELECT oid::bigint FROM pg_database WHERE datname = current_database()), \
                    coalesce(host(inet_server_addr()), 'local socket'), coalesce(inet_server_port(), 0), \
                    current_setting('server_version'), current_setting('server_version_num')::int";

impl ServerIdentity {
    /// Whether two connections reached the very same database.
    pub fn same_database(&self, other: &ServerIdentity) -> bool {
        self.same_server(other) && self.database_oid == other.database_oid
    }

    /// The same database, also across a restart of its server (system
    /// identifier and database oid).
    pub fn same_database_any_start(&self, other: &ServerIdentity) -> bool {
        self.system_identifier == other.system_identifier && self.database_oid == other.database_oid
    }

    /// `addr:port/database`, as the server sees itself.
    pub fn place(&self) -> String {
        format!("{}:{}/{}", self.server_addr, self.server_port, self.database)
    }

    /// Whether two connections reached the same running server.
    pub fn same_server(&self, other: &ServerIdentity) -> bool {
        self.system_identifier == other.system_identifier && self.started_at == other.started_at
    }

    /// What differs between two identities, for "the target changed since the run began".
    pub fn differences(&self, other: &ServerIdentity) -> Vec<String> {
        let mut d = vec![];
        if self.system_identifier != other.system_identifier {
            d.push(format!(
                "system identifier {} → {}",
                self.system_identifier, other.system_identifier
            ));
        }
        if self.database != other.database || self.database_oid != other.database_oid {
            d.push(format!(
                "database {} (oid {}) → {} (oid {})",
                self.database, self.database_oid, other.database, other.database_oid
            ));
        }
        d
    }
}
