//! Interoperability with coturn's test clients: runs the real `relay` binary on loopback and
//! drives it with `turnutils_uclient`, `turnutils_peer` and `turnutils_stunclient`.
//!
//! The tools come from Debian's `coturn` package (`scripts/test.sh` installs it). A missing tool
//! fails the test; it is never skipped.

// A test: panics are the failure report, and timeouts need the real clock.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "interop-secret";

fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed: install Debian's `coturn` package \
         (apt-get install -y --no-install-recommends coturn, or run scripts/test.sh as root)"
    );
    Command::new(name)
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET /metrics` on 127.0.0.1:`port`, over a plain TCP connection.
fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    body.to_owned()
}

/// The value of the sample `name` (with its labels, if any) in metrics `text`.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Kills the child on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Relay {
    port: u16,
    process: Guard,
}

impl Relay {
    /// Starts the relay on 127.0.0.1 with relay ports `base..base+199` (below Linux's ephemeral
    /// range, distinct per test so that tests can run in parallel). The peers (coturn's echo
    /// peer) are on loopback, so it is allowed.
    fn start(base: u16) -> Self {
        Self::start_with(base, &["--allow-peer", "127.0.0.1"], &[])
    }

    fn start_with(base: u16, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let port = free_udp_port();
        let child = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--relay-ports", &format!("{base}-{}", base + 199)])
            .args(args)
            .envs(envs.iter().copied())
            .args([
                "--auth-secret",
                SECRET,
                "--realm",
                "interop",
                "--log",
                "relay=warn",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let relay = Self {
            port,
            process: Guard(child),
        };
        relay.wait_ready();
        relay
    }

    /// Sends STUN Binding requests until one is answered.
    fn wait_ready(&self) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut request = vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        request.extend_from_slice(&[7; 12]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0; 1500];
        while Instant::now() < deadline {
            socket.send_to(&request, ("127.0.0.1", self.port)).unwrap();
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                assert_eq!(&buf[..2], [0x01, 0x01], "Binding success expected");
                assert!(n > 20);
                return;
            }
        }
        panic!("relay did not answer a Binding request within 10 s");
    }
}

/// Runs a command to completion (or kills it after `limit`), returning status and combined output.
fn run(mut command: Command, limit: Duration) -> (ExitStatus, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = out_reader.join().unwrap() + &err_reader.join().unwrap();
    (status, output)
}

/// `turnutils_uclient`'s totals: (sent, received, lost).
fn totals(output: &str) -> (u64, u64, u64) {
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let counts = output
        .lines()
        .rfind(|l| l.contains("start_mclient: tot_send_msgs="))
        .unwrap_or_else(|| panic!("no totals in uclient output:\n{output}"));
    let lost_line = output
        .lines()
        .find(|l| l.contains("Total lost packets"))
        .unwrap_or_else(|| panic!("no loss figure in uclient output:\n{output}"));
    (
        number_after(counts, "tot_send_msgs=").unwrap(),
        number_after(counts, "tot_recv_msgs=").unwrap(),
        number_after(lost_line, "Total lost packets ").unwrap(),
    )
}

fn uclient(relay: &Relay, extra: &[&str], secret: &str) -> (ExitStatus, String) {
    let mut command = tool("turnutils_uclient");
    command
        .args(["-p", &relay.port.to_string(), "-W", secret, "-u", "interop"])
        .args(["-n", "100", "-m", "4", "-l", "200", "-z", "2"])
        .args(extra)
        .arg("127.0.0.1");
    run(command, Duration::from_secs(60))
}

fn assert_lossless(relay: &Relay, extra: &[&str]) {
    let (status, output) = uclient(relay, extra, SECRET);
    assert!(
        status.success(),
        "uclient {extra:?} failed: {status}\n{output}"
    );
    let (sent, received, lost) = totals(&output);
    assert!(sent >= 400, "uclient {extra:?} sent only {sent}\n{output}");
    assert_eq!((received, lost), (sent, 0), "uclient {extra:?}\n{output}");
}

fn with_peer(test: impl FnOnce(u16)) {
    let port = free_udp_port();
    let mut command = tool("turnutils_peer");
    command
        .args(["-p", &port.to_string(), "-L", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _peer = Guard(command.spawn().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    test(port);
}

#[test]
fn channels_to_an_external_peer() {
    let relay = Relay::start(21000);
    with_peer(|peer| assert_lossless(&relay, &["-e", "127.0.0.1", "-r", &peer.to_string()]));
}

#[test]
fn send_indications_to_an_external_peer() {
    // The allow-list from the environment, comma-separated.
    let relay = Relay::start_with(
        21200,
        &[],
        &[("RELAY_ALLOW_PEER", "192.0.2.0/24,127.0.0.0/8")],
    );
    with_peer(|peer| assert_lossless(&relay, &["-s", "-e", "127.0.0.1", "-r", &peer.to_string()]));
}

#[test]
fn loopback_peer_is_refused_by_default() {
    let relay = Relay::start_with(22400, &[], &[]);
    with_peer(|peer| {
        let (status, output) = uclient(
            &relay,
            &["-e", "127.0.0.1", "-r", &peer.to_string()],
            SECRET,
        );
        assert!(
            !status.success(),
            "uclient reached a loopback peer\n{output}"
        );
        assert!(output.contains("error 403 (Forbidden)"), "{output}");
    });
}

#[test]
fn channels_between_allocations() {
    let relay = Relay::start(21400);
    assert_lossless(&relay, &["-y"]);
}

#[test]
fn send_indications_between_allocations() {
    let relay = Relay::start(21600);
    assert_lossless(&relay, &["-y", "-s"]);
}

#[test]
fn wrong_secret_is_refused() {
    let relay = Relay::start(21800);
    let (status, output) = uclient(&relay, &["-y"], "not-the-secret");
    assert!(
        !status.success(),
        "uclient with a wrong secret succeeded:\n{output}"
    );
    assert!(output.contains("Cannot complete Allocation"), "{output}");
}

#[test]
fn stunclient_gets_its_mapped_address() {
    let relay = Relay::start(22000);
    let mut command = tool("turnutils_stunclient");
    command.args(["-p", &relay.port.to_string(), "127.0.0.1"]);
    let (status, output) = run(command, Duration::from_secs(20));
    assert!(status.success(), "{status}\n{output}");
    assert!(
        output.contains("UDP reflexive addr: 127.0.0.1:"),
        "{output}"
    );
}

#[test]
fn relay_exits_cleanly_on_sigterm_and_refuses_bad_config() {
    let mut relay = Relay::start(22200);
    let pid = relay.process.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = relay.process.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "relay did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "relay exit status {status}");

    let mut command = Command::new(env!("CARGO_BIN_EXE_relay"));
    command.args(["--auth-secret", SECRET, "--listen", "0.0.0.0:3478"]);
    let (status, output) = run(command, Duration::from_secs(10));
    assert!(!status.success());
    assert!(output.contains("--public-ip is required"), "{output}");

    let mut command = Command::new(env!("CARGO_BIN_EXE_relay"));
    command.args(["--auth-secret", SECRET, "--allow-peer", "10.1.0.0/8"]);
    let (status, output) = run(command, Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        output.contains("10.1.0.0/8 has bits set after its prefix"),
        "{output}"
    );
}

#[test]
fn metrics_count_allocations_and_relayed_datagrams() {
    let metrics = free_tcp_port();
    let relay = Relay::start_with(
        22600,
        &["--allow-peer", "127.0.0.1"],
        &[("RELAY_METRICS_LISTEN", &format!("127.0.0.1:{metrics}"))],
    );
    let before = scrape(metrics);
    assert_eq!(
        sample(&before, "zta_relay_allocations_created_total"),
        Some(0),
        "{before}"
    );
    assert!(before.ends_with("# EOF\n"), "{before}");

    assert_lossless(&relay, &["-y"]);
    // The endpoint's snapshot is refreshed every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let text = scrape(metrics);
        if sample(&text, "zta_relay_allocations_created_total") >= Some(2) {
            break text;
        }
        assert!(Instant::now() < deadline, "no allocation counted:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        sample(&after, "zta_relay_relayed_internally_total") > Some(0),
        "{after}"
    );
    assert!(
        sample(&after, "zta_relay_received_bytes_total{side=\"client\"}") > Some(0),
        "{after}"
    );
}
