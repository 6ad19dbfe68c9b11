//! The `portal` binary refuses a bad seed file with the reason and exit status 1.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// Runs the binary on `seed` and returns its exit code and standard error.
fn run_with_seed(name: &str, seed: &str) -> (Option<i32>, String) {
    let path = std::env::temp_dir().join(format!("portal-{}-{name}.json", std::process::id()));
    std::fs::write(&path, seed).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_portal"))
        .arg("--seed-file")
        .arg(&path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("PORTAL_RELAY_SECRET", "s")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
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
