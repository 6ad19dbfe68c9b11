//! The `portal` binary: a bad seed file is refused with the reason and exit status 1; `import`
//! and `admin` work against a running portal, and what they change outlives a restart.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// Runs the binary on `seed` and returns its exit code and standard error.
fn run_with_seed(name: &str, seed: &str) -> (Option<i32>, String) {
    let path = std::env::temp_dir().join(format!("portal-{}-{name}.json", std::process::id()));
    std::fs::write(&path, seed).unwrap();
    let db = std::env::temp_dir().join(format!("portal-{}-{name}.db", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_portal"))
        .arg("--seed-file")
        .arg(&path)
        .arg("--db")
        .arg(&db)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("PORTAL_RELAY_SECRET", "s")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&db);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_resource_in_the_client_tunnel_range_stops_the_portal_with_its_name() {
    let (code, stderr) = run_with_seed(
        "tunnel",
        r#"{"resources": [{"id": 7, "name": "clash", "site": "hq", "type": "cidr", "address": "100.64.0.0/16"}]}"#,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("bad seed file"), "{stderr}");
    assert!(
        stderr.contains(r#"resource r7 ("clash") at 100.64.0.0/16 overlaps the client tunnel range 100.64.0.0/10"#),
        "{stderr}"
    );
}

#[test]
fn a_duplicate_token_stops_the_portal() {
    let (code, stderr) = run_with_seed(
        "token",
        r#"{"gateways": [{"id": 1, "token": "a", "site": "x"}, {"id": 2, "token": "a", "site": "x"}]}"#,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("duplicate token"), "{stderr}");
}

/// A free TCP port on 127.0.0.1 (another process could take it before the portal does; the
/// test then fails with "cannot listen", never passes wrongly).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(db: &std::path::Path, admin: u16) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_portal"))
        // Any port for the nodes: a second free port drawn here could be the admin port
        // itself once a restarted portal's predecessor freed it.
        .args(["--listen", "127.0.0.1:0"])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--db")
        .arg(db)
        .env("PORTAL_RELAY_SECRET", "s")
        .env("PORTAL_ADMIN_TOKEN", "admin-token")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    // Up when the admin listener answers.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok() {
            return running;
        }
        if let Ok(Some(status)) = running.0.try_wait() {
            panic!("the portal exited ({status}) before it opened its admin listener");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the portal did not open its admin listener");
}

/// Runs `portal admin ARGS` against the portal on `admin`: (success, stdout, stderr).
fn admin(port: u16, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_portal"))
        .arg("admin")
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args(args)
        .env("PORTAL_ADMIN_TOKEN", "admin-token")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn import_then_administer_with_the_cli_and_keep_it_across_a_restart() {
    let db = std::env::temp_dir().join(format!("portal-cli-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/seed.json");
    let output = Command::new(env!("CARGO_BIN_EXE_portal"))
        .args(["import", seed, "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("changes imported"));

    let port = free_port();
    let portal = serve(&db, port);
    let (ok, out, err) = admin(port, &["add-client", "--name", "carol"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("client c3 added, tunnel addresses 100.64.0.3 and fd00:2021:1111::3"),
        "{out}"
    );
    let token = out
        .lines()
        .find_map(|l| l.split_once("ZTA_TOKEN): "))
        .unwrap()
        .1;
    assert_eq!(token.len(), 43, "32 random bytes, URL-safe base64: {token}");
    let (ok, out, err) = admin(
        port,
        &[
            "add-policy",
            "--client",
            "c3",
            "--resource",
            "r1",
            "--duration",
            "2h",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("done (change "), "{out}");

    // Refused with the reason, and the exit status says so.
    let (ok, _, err) = admin(port, &["add-policy", "--client", "9", "--resource", "1"]);
    assert!(!ok);
    assert!(err.contains("no client c9"), "{err}");
    let (ok, _, err) = admin(
        port,
        &[
            "add-resource",
            "--name",
            "x",
            "--site",
            "hq",
            "--host",
            "100.64.0.7",
        ],
    );
    assert!(!ok);
    assert!(err.contains("overlaps the client tunnel range"), "{err}");
    let (ok, _, err) = admin(port, &["--token", "wrong", "list"]);
    assert!(!ok);
    assert!(err.contains("401"), "{err}");

    drop(portal);
    let _portal = serve(&db, port);
    let (ok, out, err) = admin(port, &["list"]);
    assert!(ok, "{err}");
    assert!(out.contains("c3  carol"), "{out}");
    assert!(out.contains("c3 -> r1  (2h)"), "{out}");
    let _ = std::fs::remove_file(&db);
}
