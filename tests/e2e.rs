//! The real binaries (`portal`, two `relay`s, `gateway`, `client`) moving real traffic through
//! TUN devices and the kernel's own NAT, in network namespaces: `scripts/e2e.sh` does the work
//! and says what it checks. Needs root and iproute2, iptables, iperf3 and ping: it fails (never
//! skips) without them; `scripts/test.sh` installs them.

use std::path::Path;
use std::process::Command;

#[test]
fn namespaces_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The script builds the binaries with this cargo (debug profile, same target directory).
    let status = Command::new("bash")
        .arg(root.join("scripts/e2e.sh"))
        .current_dir(root)
        .env("CARGO", env!("CARGO"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run scripts/e2e.sh: {e}"));
    assert!(
        status.success(),
        "scripts/e2e.sh failed ({status}); its output says why"
    );
}
