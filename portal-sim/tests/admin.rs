//! The admin API on a real listener, over a SQLite (or PostgreSQL) store, with nodes on real
//! WebSockets: a change reaches connected nodes at once, bad input changes nothing, a restart
//! keeps the directory, and a change made through one instance reaches the nodes of another.
#![allow(clippy::unwrap_used, clippy::wildcard_enum_match_arm)] // test helpers; events not waited for are skipped

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use node_core::ids::{ClientId, ResourceId};
use node_core::portal::messages::{ClientIngress, GatewayIngress};
use node_core::portal::{Event, PublicKey};
use portal_sim::directory::{Change, DirectoryView};
use portal_sim::replica::Replica;
use portal_sim::seed::PolicySeed;
use portal_sim::server::{system_clock, Server};
use portal_sim::store::{import, SqlStore, Store as _};
use portal_sim::{Identity, Portal, PortalConfig, SeedFile};
use tokio::net::TcpListener;

mod common;
use common::{connect_flow, joined_pair, postgres_database, Client};

const EXAMPLE_SEED: &str = include_str!("../examples/seed.json");
const ADMIN_TOKEN: &str = "admin-secret";

fn temp_db(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("portal-admin-{}-{name}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// One portal instance: nodes at `url`, the admin API at `admin`.
struct Instance {
    url: String,
    admin: String,
    replica: Arc<Replica<SqlStore>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts an instance on `db` (imported from the example seed file if `import_seed`), catching
/// up with other instances every `poll`.
async fn start(db: &str, import_seed: bool, generation: u64, poll: Duration) -> Instance {
    let store = SqlStore::open(db).await.unwrap();
    if import_seed {
        import(&store, &SeedFile::parse(EXAMPLE_SEED).unwrap())
            .await
            .unwrap();
    }
    let snapshot = store.load().await.unwrap();
    let mut config = PortalConfig::new("secret", 7);
    config.generation = generation;
    let server = Server::new(
        Portal::with_directory(snapshot.directory, config),
        system_clock(),
    );
    let replica = Arc::new(Replica::new(server.clone(), store, snapshot.last));
    let mut tasks = Vec::new();

    let nodes = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", nodes.local_addr().unwrap());
    let serving = server.clone();
    tasks.push(tokio::spawn(async move {
        let _ = serving.serve(nodes).await;
    }));

    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let router = portal_sim::admin::router(
        Arc::clone(&replica),
        ADMIN_TOKEN,
        Arc::new(|| "# EOF\n".to_owned()),
    );
    tasks.push(tokio::spawn(async move {
        let _ = portal_sim::admin::serve(admin, None, router).await;
    }));

    let syncing = Arc::clone(&replica);
    tasks.push(tokio::spawn(async move {
        let behind = syncing.run(poll).await;
        panic!("{behind}");
    }));
    Instance {
        url,
        admin: admin_url,
        replica,
        tasks,
    }
}

/// An HTTP client (the build's rustls has no process-wide provider until one is installed).
fn http() -> reqwest::Client {
    #[allow(deprecated)] // ring, as the rest of the build (see the nodes' connector)
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn post(admin: &str, token: &str, body: &str) -> (u16, serde_json::Value) {
    let response = http()
        .post(format!("{admin}/v1/changes"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn change(admin: &str, change: &Change) -> (u16, serde_json::Value) {
    post(admin, ADMIN_TOKEN, &serde_json::to_string(change).unwrap()).await
}

async fn directory(admin: &str) -> DirectoryView {
    http()
        .get(format!("{admin}/v1/directory"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_revoked(client: &mut Client, rid: ResourceId) {
    client
        .wait_for(|e| match e {
            Event::Message(ClientIngress::AccessRevoked(r)) if r.resource_id == rid => Some(()),
            _ => None,
        })
        .await;
}

fn remove_policy_c1_r1() -> Change {
    Change::RemovePolicy {
        client_id: ClientId(1),
        resource_id: ResourceId(1),
    }
}

#[tokio::test]
async fn admin_changes_reach_connected_nodes_at_once_and_bad_ones_change_nothing() {
    let db = temp_db("live");
    let instance = start(db.to_str().unwrap(), true, 1, Duration::from_secs(3600)).await;
    let (mut client, mut gateway) = joined_pair(&instance.url).await;
    connect_flow(&mut client, &mut gateway).await;
    let before = directory(&instance.admin).await;

    // Refused: wrong token, malformed JSON, unknown entries, a resource in the tunnel range.
    let (status, body) = post(&instance.admin, "wrong", "{}").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(&instance.admin, ADMIN_TOKEN, r#"{"op": "remove_policy"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("client_id"),
        "{body}"
    );
    let unknown = Change::AddPolicy {
        policy: PolicySeed {
            client_id: ClientId(99),
            resource_id: ResourceId(1),
            duration_secs: None,
        },
    };
    let (status, body) = change(&instance.admin, &unknown).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (409, "no client c99")
    );
    let clash = r#"{"op": "add_resource", "resource": {"id": 9, "name": "clash", "site": "hq", "type": "host", "address": "100.64.0.9"}}"#;
    let (status, body) = post(&instance.admin, ADMIN_TOKEN, clash).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("overlaps the client tunnel range"));
    assert_eq!(
        directory(&instance.admin).await,
        before,
        "a refused change changed something"
    );

    // Revoked through the API: both nodes are told before the answer arrives.
    let (status, body) = change(&instance.admin, &remove_policy_c1_r1()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["change_id"].as_i64().unwrap() > 0);
    wait_revoked(&mut client, ResourceId(1)).await;
    gateway
        .wait_for(|e| match e {
            Event::Message(GatewayIngress::AccessRevoked(r))
                if r.client_id == ClientId(1) && r.resource_id == ResourceId(1) =>
            {
                Some(())
            }
            _ => None,
        })
        .await;
    let after = directory(&instance.admin).await;
    assert!(!after
        .policies
        .iter()
        .any(|p| (p.client_id, p.resource_id) == (ClientId(1), ResourceId(1))));

    // Granted again: the client learns the resource.
    let grant = Change::AddPolicy {
        policy: PolicySeed {
            client_id: ClientId(1),
            resource_id: ResourceId(1),
            duration_secs: Some(600),
        },
    };
    assert_eq!(change(&instance.admin, &grant).await.0, 200);
    client
        .wait_for(|e| match e {
            Event::Message(ClientIngress::ResourceCreatedOrUpdated(r)) if r.id == ResourceId(1) => {
                Some(())
            }
            _ => None,
        })
        .await;
    connect_flow(&mut client, &mut gateway).await;

    // Ending the client's sessions: its gateway revokes the flow, its socket closes.
    let end = Change::EndSessions {
        client_id: ClientId(1),
    };
    assert_eq!(change(&instance.admin, &end).await.0, 200);
    gateway
        .wait_for(|e| match e {
            Event::Message(GatewayIngress::AccessRevoked(r)) if r.client_id == ClientId(1) => {
                Some(())
            }
            _ => None,
        })
        .await;
    client
        .wait_for(|e| matches!(e, Event::Disconnected { .. }).then_some(()))
        .await;
    drop(instance);
    let _ = std::fs::remove_file(&db);
}

#[tokio::test]
async fn a_restart_keeps_the_directory_and_the_key_owners_and_rotates_the_psk() {
    let db = temp_db("restart");
    let db_url = db.to_str().unwrap().to_owned();
    let first = start(&db_url, true, 1, Duration::from_secs(3600)).await;
    let (mut client, mut gateway) = joined_pair(&first.url).await;
    let (psk, _) = connect_flow(&mut client, &mut gateway).await;
    let grant = Change::AddPolicy {
        policy: PolicySeed {
            client_id: ClientId(2),
            resource_id: ResourceId(1),
            duration_secs: Some(60),
        },
    };
    assert_eq!(change(&first.admin, &grant).await.0, 200);
    // The joins' key owners are stored by the next catch-up.
    first.replica.catch_up().await.unwrap();
    let before = directory(&first.admin).await;
    drop((client, gateway, first));

    let second = start(&db_url, false, 2, Duration::from_secs(3600)).await;
    let after = directory(&second.admin).await;
    assert_eq!(after, before);
    assert!(after
        .key_owners
        .iter()
        .any(|o| o.node == Identity::Client(ClientId(1))
            && o.public_key == PublicKey::from_bytes([1; 32])));
    let (mut client, mut gateway) = joined_pair(&second.url).await;
    let (new_psk, _) = connect_flow(&mut client, &mut gateway).await;
    assert_ne!(psk, new_psk, "a restart rotates preshared keys");
    drop(second);
    let _ = std::fs::remove_file(&db);
}

/// Two instances on one database: a change made through one reaches a client connected to the
/// other within the polling period (plus scheduling). Returns the time it took.
async fn a_change_through_one_instance_reaches_the_other(db: &str) -> Duration {
    const POLL: Duration = Duration::from_millis(200);
    let a = start(db, true, 1, POLL).await;
    let b = start(db, false, 2, POLL).await;
    let (mut client, mut gateway) = joined_pair(&b.url).await;
    connect_flow(&mut client, &mut gateway).await;
    #[allow(clippy::disallowed_methods)] // a measurement in a test
    let started = Instant::now();
    assert_eq!(change(&a.admin, &remove_policy_c1_r1()).await.0, 200);
    wait_revoked(&mut client, ResourceId(1)).await;
    let took = started.elapsed();
    assert!(
        took < POLL * 3,
        "{took:?}: the change took longer than the polling period allows"
    );
    // Once each has stored what it recorded (key owners) and read the other's, both hold one
    // directory.
    b.replica.catch_up().await.unwrap();
    a.replica.catch_up().await.unwrap();
    assert_eq!(directory(&a.admin).await, directory(&b.admin).await);
    took
}

#[tokio::test]
async fn two_instances_on_one_sqlite_file() {
    let db = temp_db("two");
    let took = a_change_through_one_instance_reaches_the_other(db.to_str().unwrap()).await;
    println!("SQLite: a change reached the other instance's client in {took:?}");
    let _ = std::fs::remove_file(&db);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
async fn two_instances_on_one_postgres_database() {
    let db = postgres_database("two").await;
    let took = a_change_through_one_instance_reaches_the_other(&db).await;
    println!("PostgreSQL: a change reached the other instance's client in {took:?}");
}

/// Answers `GET /healthz` on a raw connection within `wait`, or `None`.
async fn healthz(stream: &mut tokio::net::TcpStream, wait: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: portal\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    match tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await {
        Ok(Ok(_)) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Ok(Err(_)) | Err(_) => None,
    }
}

#[tokio::test]
async fn the_admin_listener_serves_at_most_its_connection_limit() {
    const LIMIT: usize = 2;
    let db = temp_db("limit");
    let store = SqlStore::open(db.to_str().unwrap()).await.unwrap();
    let server = Server::new(
        Portal::with_directory(
            store.load().await.unwrap().directory,
            PortalConfig::new("s", 1),
        ),
        system_clock(),
    );
    let replica = Arc::new(Replica::new(server, store, Default::default()));
    let router = portal_sim::admin::router(replica, ADMIN_TOKEN, Arc::new(String::new));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(portal_sim::admin::serve_limited(
        listener, None, router, LIMIT,
    ));

    // LIMIT silent connections hold every slot (unauthenticated: no token is ever asked).
    let mut idle = Vec::new();
    for _ in 0..LIMIT {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Make sure each is accepted before the next.
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"G")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        idle.push(stream);
    }
    let mut one_more = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        healthz(&mut one_more, Duration::from_millis(500)).await,
        None,
        "connection {} was served",
        LIMIT + 1
    );
    // One ends: the waiting connection is served.
    drop(idle.pop());
    let answer = healthz(&mut one_more, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    task.abort();
    let _ = std::fs::remove_file(&db);
}
