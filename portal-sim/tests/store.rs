//! The SQL store against the directory's own rules: the same random changes, accepted and
//! refused alike, leave the database and the in-memory directory equal, on SQLite and on
//! PostgreSQL; concurrent commits from four pools get one gap-free order; a database made by an
//! older schema is upgraded in place; the log keeps its
//! newest changes and tells a reader that fell behind it.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use node_proto::ids::{ClientId, GatewayId, RelayId, ResourceId};
use node_proto::portal::{PublicKey, ResourceAddress};
use portal_sim::directory::{Change, Client, Directory, Gateway, TokenDigest};
use portal_sim::seed::{PolicySeed, RelaySeed, ResourceSeed};
use portal_sim::store::{ChangeId, SqlStore, Store, StoreError, MIGRATIONS};
use portal_sim::Identity;
use rand::{Rng, SeedableRng};

mod common;
use common::postgres_database;
use rand_chacha::ChaCha20Rng;

/// A change drawn from small id, token and address spaces, so that collisions (and refusals)
/// are frequent.
fn random_change(rng: &mut ChaCha20Rng) -> Change {
    let id = rng.gen_range(1..5u64);
    let other = rng.gen_range(1..5u64);
    let token = TokenDigest::of(format!("token-{}", rng.gen_range(0..6)).as_bytes());
    match rng.gen_range(0..12) {
        0 | 1 => Change::AddClient {
            client: Client {
                id: ClientId(id),
                name: format!("c{}", rng.gen_range(0..3)),
                token,
                ipv4: Ipv4Addr::new(100, 64, 0, rng.gen_range(1..5)),
                // Now and then outside the client range.
                ipv6: if rng.gen_ratio(1, 10) {
                    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)
                } else {
                    Ipv6Addr::new(0xfd00, 0x2021, 0x1111, 0, 0, 0, 0, rng.gen_range(1..5))
                },
            },
        },
        2 => Change::RemoveClient { id: ClientId(id) },
        3 => Change::AddGateway {
            gateway: Gateway {
                id: GatewayId(id),
                name: String::new(),
                token,
                site: ["hq", "lab", ""][rng.gen_range(0..3)].to_owned(),
            },
        },
        4 => Change::RemoveGateway { id: GatewayId(id) },
        5 => Change::AddResource {
            resource: ResourceSeed {
                id: ResourceId(id),
                name: "r".into(),
                site: ["hq", "lab"][rng.gen_range(0..2)].to_owned(),
                address: if rng.gen_ratio(1, 8) {
                    // In the client tunnel range: refused.
                    ResourceAddress::Host {
                        address: "100.64.1.1".parse().unwrap(),
                    }
                } else if rng.gen() {
                    ResourceAddress::Host {
                        address: format!("10.0.0.{other}").parse().unwrap(),
                    }
                } else {
                    ResourceAddress::Cidr {
                        address: format!("10.{other}.0.0/16").parse().unwrap(),
                    }
                },
            },
        },
        6 => Change::RemoveResource { id: ResourceId(id) },
        7 | 8 => Change::AddPolicy {
            policy: PolicySeed {
                client_id: ClientId(id),
                resource_id: ResourceId(other),
                duration_secs: rng.gen::<bool>().then(|| rng.gen_range(1..100_000)),
            },
        },
        9 => Change::RemovePolicy {
            client_id: ClientId(id),
            resource_id: ResourceId(other),
        },
        10 => {
            if rng.gen() {
                Change::AddRelay {
                    relay: RelaySeed {
                        id: RelayId(id),
                        address: SocketAddr::from(([192, 0, 2, other as u8], 3478)),
                    },
                }
            } else {
                Change::RemoveRelay { id: RelayId(id) }
            }
        }
        _ => {
            if rng.gen() {
                Change::OwnKey {
                    public_key: PublicKey::from_bytes([other as u8; 32]),
                    node: if rng.gen() {
                        Identity::Client(ClientId(id))
                    } else {
                        Identity::Gateway(GatewayId(id))
                    },
                }
            } else {
                Change::EndSessions {
                    client_id: ClientId(id),
                }
            }
        }
    }
}

async fn follows_the_directory_rules(db: &str) {
    let store = SqlStore::open(db).await.unwrap();
    let mut model = Directory::default();
    let mut accepted = Vec::new();
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let (mut ok, mut refused) = (0, 0);
    for step in 0..400 {
        let change = random_change(&mut rng);
        let expected = model.apply(&change);
        let got = store.commit(&change).await;
        match (&expected, &got) {
            (Ok(()), Ok(id)) => {
                ok += 1;
                accepted.push(change.clone());
                assert_eq!(*id, ChangeId(accepted.len() as i64), "step {step}");
            }
            (Err(e), Err(StoreError::Refused(g))) => {
                refused += 1;
                assert_eq!(e, g, "step {step}: {change:?}");
            }
            _ => panic!(
                "step {step}: {change:?}: the directory says {expected:?}, the store {got:?}"
            ),
        }
        if step % 20 == 0 {
            assert_eq!(store.load().await.unwrap().directory, model, "step {step}");
        }
    }
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.directory, model);
    assert_eq!(snapshot.last, ChangeId(accepted.len() as i64));
    let log: Vec<Change> = store
        .changes_after(ChangeId(0))
        .await
        .unwrap()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(log, accepted);
    // Both kinds were exercised.
    assert!(ok > 100 && refused > 50, "{ok} accepted, {refused} refused");

    // Reopening runs no migration twice and finds the same directory.
    let reopened = SqlStore::open(db).await.unwrap();
    assert_eq!(reopened.load().await.unwrap(), snapshot);
}

async fn concurrent_commits_get_one_order(db: &str) {
    const EACH: u64 = 30;
    let commit_many = |store: SqlStore, base: u64| async move {
        for i in 0..EACH {
            let relay = RelaySeed {
                id: RelayId(base + i),
                address: SocketAddr::from(([192, 0, 2, 1], 3478)),
            };
            store.commit(&Change::AddRelay { relay }).await.unwrap();
        }
    };
    // Four pools, as four portal instances would have: every commit races three others.
    let first = SqlStore::open(db).await.unwrap();
    tokio::join!(
        commit_many(first.clone(), 100),
        commit_many(SqlStore::open(db).await.unwrap(), 200),
        commit_many(SqlStore::open(db).await.unwrap(), 300),
        commit_many(SqlStore::open(db).await.unwrap(), 400),
    );
    let log = first.changes_after(ChangeId(0)).await.unwrap();
    let ids: Vec<i64> = log.iter().map(|(id, _)| id.0).collect();
    assert_eq!(ids, (1..=4 * EACH as i64).collect::<Vec<_>>());
    assert_eq!(
        first.load().await.unwrap().directory.relays.len(),
        4 * EACH as usize
    );
}

/// A database made by the first schema, with changes in its log, goes on numbering after them.
async fn an_upgraded_database_numbers_after_its_log(db: &str) {
    {
        sqlx::any::install_default_drivers();
        let url = if db.starts_with("postgres") {
            db.to_owned()
        } else {
            format!("sqlite://{db}?mode=rwc")
        };
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let (version, name, sql) = MIGRATIONS[0];
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&pool)
            .await
            .unwrap();
        // Ids 6 and 7 only: a log trimmed of its first five.
        for id in [6i64, 7] {
            sqlx::query("INSERT INTO changes (id, change) VALUES ($1, $2)")
                .bind(id)
                .bind("{}")
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    }
    let store = SqlStore::open(db).await.unwrap();
    let relay = RelaySeed {
        id: RelayId(1),
        address: SocketAddr::from(([192, 0, 2, 1], 3478)),
    };
    let id = store.commit(&Change::AddRelay { relay }).await.unwrap();
    assert_eq!(id, ChangeId(8));
}

async fn the_log_keeps_its_newest_changes_and_says_when_one_fell_behind(db: &str) {
    const LIMIT: i64 = 5;
    let store = SqlStore::open(db).await.unwrap().with_log_limit(LIMIT);
    for id in 1..=LIMIT as u64 + 1 {
        let relay = RelaySeed {
            id: RelayId(id),
            address: SocketAddr::from(([192, 0, 2, 1], 3478)),
        };
        store.commit(&Change::AddRelay { relay }).await.unwrap();
    }
    // Change 1 is gone: a replica that applied nothing cannot catch up from the log.
    match store.changes_after(ChangeId(0)).await {
        Err(StoreError::Behind { applied, oldest }) => assert_eq!((applied, oldest), (0, 2)),
        other => panic!("{other:?}"),
    }
    let kept = store.changes_after(ChangeId(1)).await.unwrap();
    let ids: Vec<i64> = kept.iter().map(|(id, _)| id.0).collect();
    assert_eq!(ids, (2..=LIMIT + 1).collect::<Vec<_>>());
    // The directory itself keeps everything.
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.directory.relays.len(), LIMIT as usize + 1);
    assert_eq!(snapshot.last, ChangeId(LIMIT + 1));
}

fn sqlite(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("portal-store-{}-{name}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn sqlite_follows_the_directory_rules() {
    let db = sqlite("rules");
    follows_the_directory_rules(&db).await;
    let _ = std::fs::remove_file(&db);
}

#[tokio::test]
async fn sqlite_log_keeps_its_newest_changes() {
    let db = sqlite("log");
    the_log_keeps_its_newest_changes_and_says_when_one_fell_behind(&db).await;
    let _ = std::fs::remove_file(&db);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
async fn postgres_log_keeps_its_newest_changes() {
    the_log_keeps_its_newest_changes_and_says_when_one_fell_behind(&postgres_database("log").await)
        .await;
}

#[tokio::test]
async fn sqlite_concurrent_commits_get_one_order() {
    let db = sqlite("concurrent");
    concurrent_commits_get_one_order(&db).await;
    let _ = std::fs::remove_file(&db);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
async fn postgres_follows_the_directory_rules() {
    follows_the_directory_rules(&postgres_database("rules").await).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
async fn postgres_concurrent_commits_get_one_order() {
    concurrent_commits_get_one_order(&postgres_database("concurrent").await).await;
}

#[tokio::test]
async fn sqlite_upgraded_database_numbers_after_its_log() {
    let db = sqlite("upgrade");
    an_upgraded_database_numbers_after_its_log(&db).await;
    let _ = std::fs::remove_file(&db);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
async fn postgres_upgraded_database_numbers_after_its_log() {
    an_upgraded_database_numbers_after_its_log(&postgres_database("upgrade").await).await;
}
