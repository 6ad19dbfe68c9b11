//! [`SqlStore`]: the directory in SQLite (one file, the default) or PostgreSQL (shared by several
//! portal instances), through sqlx's driver-neutral pool so both run the same statements.

use std::str::FromStr;
use std::time::Duration;

use node_proto::ids::{ClientId, GatewayId, RelayId, ResourceId};
use node_proto::portal::{PublicKey, ResourceAddress};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row as _, Transaction};

use super::{ChangeId, Snapshot, Store, StoreError};
use crate::directory::{Change, Client, Directory, Gateway};
use crate::portal::Identity;
use crate::seed::{PolicySeed, RelaySeed, ResourceSeed};

/// The schema, in order: `(version, name, SQL)`. A database records the versions it has in
/// `schema_migrations`; each missing one runs in its own transaction.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "directory",
        include_str!("../../migrations/0001_directory.sql"),
    ),
    (
        2,
        "change_head",
        include_str!("../../migrations/0002_change_head.sql"),
    ),
];

/// Changes the log keeps: each commit drops those older than the newest this many. A node can
/// make the log grow (every join with a new key records its owner), so it needs a bound; an
/// instance that falls further behind than this (its database link down for that many changes)
/// gets [`StoreError::Behind`] and must restart, which loads the whole directory.
pub const MAX_CHANGE_LOG: i64 = 100_000;

/// The portal's directory in a SQL database.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    log_limit: i64,
}

impl SqlStore {
    /// Opens (creating and migrating as needed) the database at `db`: a `postgres://` or
    /// `postgresql://` URL, a `sqlite:` URL, or else a path to a SQLite file.
    pub async fn open(db: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let postgres = db.starts_with("postgres://") || db.starts_with("postgresql://");
        let url = if postgres || db.starts_with("sqlite:") {
            db.to_owned()
        } else {
            format!("sqlite://{db}?mode=rwc")
        };
        let pool = AnyPoolOptions::new()
            // SQLite takes one writer at a time anyway; PostgreSQL gets a few.
            .max_connections(if postgres { 4 } else { 1 })
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await?;
        let store = Self {
            pool,
            log_limit: MAX_CHANGE_LOG,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The same store keeping at most `limit` changes in its log instead of [`MAX_CHANGE_LOG`]
    /// (for tests of the limit).
    pub fn with_log_limit(mut self, limit: i64) -> Self {
        self.log_limit = limit.max(1);
        self
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version BIGINT PRIMARY KEY, name TEXT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        for &(version, name, sql) in MIGRATIONS {
            let mut tx = self.pool.begin().await?;
            // Claiming the version first makes a second instance migrating at the same moment
            // wait here, then fail its claim instead of running the migration twice.
            let claimed = sqlx::query(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2) \
                 ON CONFLICT (version) DO NOTHING",
            )
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 1 {
                sqlx::raw_sql(sql).execute(&mut *tx).await?;
                tracing::info!(version, name, "Database migrated");
            }
            tx.commit().await?;
        }
        Ok(())
    }
}

impl Store for SqlStore {
    async fn load(&self) -> Result<Snapshot, StoreError> {
        let mut tx = self.pool.begin().await?;
        let last: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM changes")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let directory = load_directory(&mut tx).await?;
        tx.commit().await?;
        Ok(Snapshot {
            directory,
            last: ChangeId(last),
        })
    }

    async fn commit(&self, change: &Change) -> Result<ChangeId, StoreError> {
        let text = serde_json::to_string(change).map_err(|e| StoreError::Corrupt {
            table: "changes",
            reason: e.to_string(),
        })?;
        let mut tx = self.pool.begin().await?;
        // Taking the id comes first: the head row stays locked until this transaction ends, so
        // commits (and the checks below, which then see every earlier commit) are serialised
        // across instances.
        let id: i64 = sqlx::query("UPDATE change_head SET last = last + 1 RETURNING last")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        sqlx::query("INSERT INTO changes (id, change) VALUES ($1, $2)")
            .bind(id)
            .bind(text)
            .execute(&mut *tx)
            .await?;
        let directory = load_directory(&mut tx).await?;
        directory.check(change)?;
        write(&mut tx, change).await?;
        sqlx::query("DELETE FROM changes WHERE id <= $1")
            .bind(id - self.log_limit)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ChangeId(id))
    }

    async fn changes_after(&self, after: ChangeId) -> Result<Vec<(ChangeId, Change)>, StoreError> {
        let rows = sqlx::query("SELECT id, change FROM changes WHERE id > $1 ORDER BY id")
            .bind(after.0)
            .fetch_all(&self.pool)
            .await?;
        // A gap between the position and the first row kept means trimmed changes.
        if let Some(first) = rows.first() {
            let oldest: i64 = first.try_get(0)?;
            if oldest > after.0 + 1 {
                return Err(StoreError::Behind {
                    applied: after.0,
                    oldest,
                });
            }
        }
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get(0)?;
                let text: String = row.try_get(1)?;
                let change = serde_json::from_str(&text).map_err(|e| corrupt("changes", e))?;
                Ok((ChangeId(id), change))
            })
            .collect()
    }
}

fn corrupt(table: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.to_string(),
    }
}

fn parse<T: FromStr>(table: &'static str, text: &str) -> Result<T, StoreError>
where
    T::Err: ToString,
{
    text.parse().map_err(|e: T::Err| corrupt(table, e))
}

fn id(table: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|e| corrupt(table, e))
}

fn sql_id(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|e| corrupt("(id)", e))
}

async fn rows(tx: &mut Transaction<'_, Any>, sql: &str) -> Result<Vec<AnyRow>, StoreError> {
    Ok(sqlx::query(sql).fetch_all(&mut **tx).await?)
}

async fn load_directory(tx: &mut Transaction<'_, Any>) -> Result<Directory, StoreError> {
    let mut dir = Directory::default();
    for row in rows(tx, "SELECT id, name, token_sha1, ipv4, ipv6 FROM clients").await? {
        let client = Client {
            id: ClientId(id("clients", row.try_get(0)?)?),
            name: row.try_get(1)?,
            token: parse("clients", &row.try_get::<String, _>(2)?)?,
            ipv4: parse("clients", &row.try_get::<String, _>(3)?)?,
            ipv6: parse("clients", &row.try_get::<String, _>(4)?)?,
        };
        dir.clients.insert(client.id, client);
    }
    for row in rows(tx, "SELECT id, name, token_sha1, site FROM gateways").await? {
        let gateway = Gateway {
            id: GatewayId(id("gateways", row.try_get(0)?)?),
            name: row.try_get(1)?,
            token: parse("gateways", &row.try_get::<String, _>(2)?)?,
            site: row.try_get(3)?,
        };
        dir.gateways.insert(gateway.id, gateway);
    }
    for row in rows(tx, "SELECT id, name, site, kind, address FROM resources").await? {
        let kind: String = row.try_get(3)?;
        let address: String = row.try_get(4)?;
        let address: ResourceAddress =
            serde_json::from_value(serde_json::json!({"type": kind, "address": address}))
                .map_err(|e| corrupt("resources", e))?;
        let resource = ResourceSeed {
            id: ResourceId(id("resources", row.try_get(0)?)?),
            name: row.try_get(1)?,
            site: row.try_get(2)?,
            address,
        };
        dir.resources.insert(resource.id, resource);
    }
    for row in rows(
        tx,
        "SELECT client_id, resource_id, duration_secs FROM policies",
    )
    .await?
    {
        let duration: Option<i64> = row.try_get(2)?;
        let policy = PolicySeed {
            client_id: ClientId(id("policies", row.try_get(0)?)?),
            resource_id: ResourceId(id("policies", row.try_get(1)?)?),
            duration_secs: duration.map(|d| id("policies", d)).transpose()?,
        };
        dir.policies
            .insert((policy.client_id, policy.resource_id), policy);
    }
    for row in rows(tx, "SELECT id, address FROM relays").await? {
        let relay = RelaySeed {
            id: RelayId(id("relays", row.try_get(0)?)?),
            address: parse("relays", &row.try_get::<String, _>(1)?)?,
        };
        dir.relays.insert(relay.id, relay);
    }
    for row in rows(tx, "SELECT public_key, node FROM key_owners").await? {
        let key: PublicKey = parse("key_owners", &row.try_get::<String, _>(0)?)?;
        let node = parse_node(&row.try_get::<String, _>(1)?)?;
        dir.key_owners.insert(key, node);
    }
    Ok(dir)
}

fn node_text(node: Identity) -> String {
    match node {
        Identity::Client(ClientId(id)) => format!("client:{id}"),
        Identity::Gateway(GatewayId(id)) => format!("gateway:{id}"),
    }
}

fn parse_node(text: &str) -> Result<Identity, StoreError> {
    let bad = || corrupt("key_owners", format!("bad node {text:?}"));
    let (kind, id) = text.split_once(':').ok_or_else(bad)?;
    let id: u64 = id.parse().map_err(|_| bad())?;
    match kind {
        "client" => Ok(Identity::Client(ClientId(id))),
        "gateway" => Ok(Identity::Gateway(GatewayId(id))),
        _ => Err(bad()),
    }
}

/// The resource's kind and address as the `resources` table keeps them.
fn resource_columns(address: &ResourceAddress) -> (&'static str, String) {
    match address {
        ResourceAddress::Host { address } => ("host", address.to_string()),
        ResourceAddress::Cidr { address } => ("cidr", address.to_string()),
    }
}

async fn exec<'q>(
    tx: &mut Transaction<'_, Any>,
    query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
) -> Result<(), StoreError> {
    query.execute(&mut **tx).await?;
    Ok(())
}

/// Runs `sql` with `value` as its one parameter (`DELETE ... WHERE column = $1`).
async fn exec_with<'q, T>(
    tx: &mut Transaction<'_, Any>,
    sql: &'q str,
    value: T,
) -> Result<(), StoreError>
where
    T: 'q + sqlx::Encode<'q, Any> + sqlx::Type<Any> + Send,
{
    exec(tx, sqlx::query(sql).bind(value)).await
}

/// The statements that make the tables match the directory after `change`.
async fn write(tx: &mut Transaction<'_, Any>, change: &Change) -> Result<(), StoreError> {
    match change {
        Change::AddClient { client } => {
            let q = sqlx::query(
                "INSERT INTO clients (id, name, token_sha1, ipv4, ipv6) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
                 token_sha1 = excluded.token_sha1, ipv4 = excluded.ipv4, ipv6 = excluded.ipv6",
            )
            .bind(sql_id(client.id.0)?)
            .bind(client.name.clone())
            .bind(client.token.to_string())
            .bind(client.ipv4.to_string())
            .bind(client.ipv6.to_string());
            exec(tx, q).await
        }
        Change::RemoveClient { id } => {
            let node = node_text(Identity::Client(*id));
            let id = sql_id(id.0)?;
            exec_with(tx, "DELETE FROM policies WHERE client_id = $1", id).await?;
            exec_with(tx, "DELETE FROM key_owners WHERE node = $1", node).await?;
            exec_with(tx, "DELETE FROM clients WHERE id = $1", id).await
        }
        Change::AddGateway { gateway } => {
            let q = sqlx::query(
                "INSERT INTO gateways (id, name, token_sha1, site) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
                 token_sha1 = excluded.token_sha1, site = excluded.site",
            )
            .bind(sql_id(gateway.id.0)?)
            .bind(gateway.name.clone())
            .bind(gateway.token.to_string())
            .bind(gateway.site.clone());
            exec(tx, q).await
        }
        Change::RemoveGateway { id } => {
            let node = node_text(Identity::Gateway(*id));
            exec_with(tx, "DELETE FROM key_owners WHERE node = $1", node).await?;
            exec_with(tx, "DELETE FROM gateways WHERE id = $1", sql_id(id.0)?).await
        }
        Change::AddResource { resource } => {
            let (kind, address) = resource_columns(&resource.address);
            let q = sqlx::query(
                "INSERT INTO resources (id, name, site, kind, address) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, site = excluded.site, \
                 kind = excluded.kind, address = excluded.address",
            )
            .bind(sql_id(resource.id.0)?)
            .bind(resource.name.clone())
            .bind(resource.site.clone())
            .bind(kind)
            .bind(address);
            exec(tx, q).await
        }
        Change::RemoveResource { id } => {
            let id = sql_id(id.0)?;
            exec_with(tx, "DELETE FROM policies WHERE resource_id = $1", id).await?;
            exec_with(tx, "DELETE FROM resources WHERE id = $1", id).await
        }
        Change::AddPolicy { policy } => {
            let duration = policy.duration_secs.map(sql_id).transpose()?;
            let q = sqlx::query(
                "INSERT INTO policies (client_id, resource_id, duration_secs) VALUES ($1, $2, $3) \
                 ON CONFLICT (client_id, resource_id) DO UPDATE \
                 SET duration_secs = excluded.duration_secs",
            )
            .bind(sql_id(policy.client_id.0)?)
            .bind(sql_id(policy.resource_id.0)?)
            .bind(duration);
            exec(tx, q).await
        }
        Change::RemovePolicy {
            client_id,
            resource_id,
        } => {
            let q = sqlx::query("DELETE FROM policies WHERE client_id = $1 AND resource_id = $2")
                .bind(sql_id(client_id.0)?)
                .bind(sql_id(resource_id.0)?);
            exec(tx, q).await
        }
        Change::AddRelay { relay } => {
            let q = sqlx::query(
                "INSERT INTO relays (id, address) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET address = excluded.address",
            )
            .bind(sql_id(relay.id.0)?)
            .bind(relay.address.to_string());
            exec(tx, q).await
        }
        Change::RemoveRelay { id } => {
            exec_with(tx, "DELETE FROM relays WHERE id = $1", sql_id(id.0)?).await
        }
        // Only the log row: sessions are not lasting state.
        Change::EndSessions { .. } => Ok(()),
        Change::OwnKey { public_key, node } => {
            let (key, node) = (public_key.to_string(), node_text(*node));
            exec(
                tx,
                sqlx::query("DELETE FROM key_owners WHERE node = $1 AND public_key <> $2")
                    .bind(node.clone())
                    .bind(key.clone()),
            )
            .await?;
            let q = sqlx::query(
                "INSERT INTO key_owners (public_key, node) VALUES ($1, $2) \
                 ON CONFLICT (public_key) DO UPDATE SET node = excluded.node",
            )
            .bind(key)
            .bind(node);
            exec(tx, q).await
        }
    }
}
