//! Failing cases kept as text, one file per case, replayed by `cargo test --test sim` for ever.
//!
//! A case file names its seed and its transitions in the form the timeline prints them
//! (`send(c1, r2)`, `loss_burst(0b10111, 15s)`, `nat_port_reuse(Clients)`), so it stays readable
//! and does not depend on how the property test draws cases:
//!
//! ```text
//! # What broke, and what fixed it.
//! seed: 15408888812472719778
//! loss_burst(0b10111, 15s)
//! nat_port_reuse(Clients)
//! send(c1, r1)
//! ```
//!
//! Lines starting with `#` are the case's notes; blank lines are ignored. A case may also require
//! counts of its coverage line, so that it cannot pass by checking nothing, and bound a worst
//! case below the model's general bound:
//!
//! ```text
//! require: checked:delivered >= 2
//! require: checked:claim_refused = 3
//! require: worst_answer_ms <= 1000
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use super::model::{Side, Transition, CLIENTS, NODES, RELAYS, RESOURCES};

/// One kept case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regression {
    /// The file it came from.
    pub path: PathBuf,
    /// The world's seed.
    pub seed: u64,
    /// The transitions, in order.
    pub transitions: Vec<Transition>,
    /// Counts the case must end with.
    pub requirements: Vec<Requirement>,
}

/// A count a case must end with: `key` of its coverage line at least, exactly, or at most
/// `value` (at most, for a worst case such as `worst_answer_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The coverage key, as `checked:delivered`.
    pub key: String,
    /// How the count compares with `value`.
    pub op: Op,
    /// The count.
    pub value: u64,
}

/// How a [`Requirement`]'s count compares with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>=`
    AtLeast,
    /// `=`
    Exactly,
    /// `<=`
    AtMost,
}

impl Requirement {
    /// Whether `count` (0 when the key never counted) meets it.
    pub fn met_by(&self, count: u64) -> bool {
        match self.op {
            Op::AtLeast => count >= self.value,
            Op::Exactly => count == self.value,
            Op::AtMost => count <= self.value,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::AtLeast => ">=",
            Op::Exactly => "=",
            Op::AtMost => "<=",
        };
        write!(f, "{} {op} {}", self.key, self.value)
    }
}

fn parse_requirement(text: &str) -> Result<Requirement, String> {
    let (key, op, value) = if let Some((key, value)) = text.split_once(">=") {
        (key, Op::AtLeast, value)
    } else if let Some((key, value)) = text.split_once("<=") {
        (key, Op::AtMost, value)
    } else if let Some((key, value)) = text.split_once('=') {
        (key, Op::Exactly, value)
    } else {
        return Err(format!(
            "expected `key >= n`, `key <= n` or `key = n`: {text:?}"
        ));
    };
    let key = key.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(format!("not a coverage key: {key:?}"));
    }
    let value = value
        .trim()
        .parse()
        .map_err(|_| format!("not a count: {:?}", value.trim()))?;
    Ok(Requirement {
        key: key.to_owned(),
        op,
        value,
    })
}

/// Why a case file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// A case as a file's text, with a placeholder note to fill in.
pub fn to_text(seed: u64, transitions: &[Transition]) -> String {
    let mut text = format!("# What broke, and the commit that fixed it.\nseed: {seed}\n");
    for t in transitions {
        text.push_str(&format!("{t}\n"));
    }
    text
}

/// Parses a case file's text.
pub fn parse(path: &Path, text: &str) -> Result<Regression, ParseError> {
    let mut seed = None;
    let mut transitions = Vec::new();
    let mut requirements = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let error = |reason: String| ParseError {
            line: i + 1,
            reason,
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(value) = line.strip_prefix("seed:") {
            let value = value.trim();
            seed = Some(
                value
                    .parse()
                    .map_err(|_| error(format!("not a seed: {value:?}")))?,
            );
            continue;
        }
        if let Some(value) = line.strip_prefix("require:") {
            requirements.push(parse_requirement(value).map_err(error)?);
            continue;
        }
        transitions.push(parse_transition(line).map_err(error)?);
    }
    let seed = seed.ok_or(ParseError {
        line: 0,
        reason: "no `seed:` line".to_owned(),
    })?;
    Ok(Regression {
        path: path.to_owned(),
        seed,
        transitions,
        requirements,
    })
}

/// Every `*.case` file in `dir`, in name order.
pub fn load_dir(dir: &Path) -> Result<Vec<Regression>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "case"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            parse(path, &text).map_err(|e| format!("{}: {e}", path.display()))
        })
        .collect()
}

/// The transition a timeline line names: the inverse of [`Transition`]'s `Display`.
pub fn parse_transition(text: &str) -> Result<Transition, String> {
    let (kind, args) = match text.split_once('(') {
        Some((kind, rest)) => {
            let args = rest
                .strip_suffix(')')
                .ok_or_else(|| format!("no closing parenthesis: {text:?}"))?;
            let args: Vec<&str> = args.split(',').map(str::trim).collect();
            (kind.trim(), args)
        }
        None => (text.trim(), Vec::new()),
    };
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!("{kind} takes {n} arguments: {text:?}"))
        }
    };
    let t = match kind {
        "send" | "send_tcp" | "ping" | "revoke" | "authorize" => {
            arity(2)?;
            let client = indexed(args[0], 'c', CLIENTS)?;
            let resource = indexed(args[1], 'r', RESOURCES)?;
            match kind {
                "send" => Transition::Send { client, resource },
                "send_tcp" => Transition::SendTcp { client, resource },
                "ping" => Transition::Ping { client, resource },
                "revoke" => Transition::Revoke { client, resource },
                _ => Transition::Authorize { client, resource },
            }
        }
        "authorize_expiring" => {
            arity(3)?;
            Transition::AuthorizeFor {
                client: indexed(args[0], 'c', CLIENTS)?,
                resource: indexed(args[1], 'r', RESOURCES)?,
                secs: seconds(args[2])?,
            }
        }
        "advance_time" => {
            arity(1)?;
            Transition::Advance {
                secs: seconds(args[0])?,
            }
        }
        "nat_port_reuse" => {
            arity(1)?;
            Transition::NatExpiry(match args[0] {
                "Clients" => Side::Clients,
                "Gateway" => Side::Gateway,
                other => return Err(format!("not a NAT side: {other:?}")),
            })
        }
        "relay_crash" | "relay_restart" | "relay_replace" => {
            arity(1)?;
            let relay = indexed(args[0], 't', RELAYS)?;
            match kind {
                "relay_crash" => Transition::RelayCrash(relay),
                "relay_restart" => Transition::RelayRestart(relay),
                _ => Transition::RelayReplace(relay),
            }
        }
        "remove_resource" | "add_resource" | "spoof" => {
            arity(1)?;
            let resource = indexed(args[0], 'r', RESOURCES)?;
            match kind {
                "remove_resource" => Transition::RemoveResource(resource),
                "add_resource" => Transition::AddResource(resource),
                _ => Transition::Spoof(resource),
            }
        }
        "client_restart" | "roam" => {
            arity(1)?;
            let client = indexed(args[0], 'c', CLIENTS)?;
            if kind == "roam" {
                Transition::Roam(client)
            } else {
                Transition::ClientRestart(client)
            }
        }
        "loss_burst" => {
            arity(2)?;
            let bits = args[0]
                .strip_prefix("0b")
                .ok_or_else(|| format!("sites are written 0b...: {:?}", args[0]))?;
            Transition::LossBurst {
                sites: u8::from_str_radix(bits, 2)
                    .map_err(|_| format!("not a bit set: {:?}", args[0]))?,
                secs: seconds(args[1])?,
            }
        }
        "portal_partition" => {
            arity(2)?;
            let node = if args[0] == "g1" {
                CLIENTS
            } else {
                indexed(args[0], 'c', CLIENTS)?
            };
            debug_assert!(node < NODES);
            Transition::PortalPartition {
                node,
                secs: seconds(args[1])?,
            }
        }
        _ if !args.is_empty() => return Err(format!("{kind} takes no arguments: {text:?}")),
        "portal_restart" => Transition::PortalRestart,
        "block_direct" => Transition::BlockDirect,
        "unblock_direct" => Transition::UnblockDirect,
        "gateway_restart" => Transition::GatewayRestart,
        "candidate_flood" => Transition::CandidateFlood,
        "handshake_flood" => Transition::HandshakeFlood,
        "claim_key" => Transition::ClaimKey,
        other => return Err(format!("no such transition: {other:?}")),
    };
    Ok(t)
}

/// `c2` as 1 when `prefix` is `c`, checked against `count`.
fn indexed(text: &str, prefix: char, count: usize) -> Result<usize, String> {
    let n: usize = text
        .strip_prefix(prefix)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("expected {prefix}1 to {prefix}{count}: {text:?}"))?;
    if n == 0 || n > count {
        return Err(format!("expected {prefix}1 to {prefix}{count}: {text:?}"));
    }
    Ok(n - 1)
}

/// `15s` as 15.
fn seconds(text: &str) -> Result<u64, String> {
    text.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("expected seconds like 15s: {text:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sim::draw::generate;

    /// Whatever the timeline prints, a case file can say.
    #[test]
    fn every_drawn_transition_reads_back() {
        for seed in 0..200 {
            let drawn = generate(seed, 30);
            for t in &drawn {
                assert_eq!(parse_transition(&t.to_string()), Ok(t.clone()), "{t}");
            }
            let case = parse(Path::new("x.case"), &to_text(seed, &drawn)).unwrap();
            assert_eq!((case.seed, case.transitions), (seed, drawn));
        }
        for t in [
            Transition::CandidateFlood,
            Transition::HandshakeFlood,
            Transition::ClaimKey,
            Transition::RemoveResource(2),
            Transition::AddResource(0),
            Transition::PortalPartition {
                node: CLIENTS,
                secs: 5,
            },
        ] {
            assert_eq!(parse_transition(&t.to_string()), Ok(t.clone()), "{t}");
        }
    }

    #[test]
    fn a_case_file_reads_with_its_notes_and_refuses_nonsense() {
        let text = "# broke\n\nseed: 7\nsend(c1, r2)\nloss_burst(0b101, 3s)\n\
                    require: checked:delivered >= 2\nrequire: claim_key = 0\n\
                    require: worst_answer_ms <= 900\n";
        let case = parse(Path::new("x.case"), text).unwrap();
        assert_eq!(case.seed, 7);
        assert_eq!(
            case.transitions,
            [
                Transition::Send {
                    client: 0,
                    resource: 1
                },
                Transition::LossBurst { sites: 5, secs: 3 }
            ]
        );
        let required: Vec<String> = case.requirements.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            required,
            [
                "checked:delivered >= 2",
                "claim_key = 0",
                "worst_answer_ms <= 900"
            ]
        );
        assert!(case.requirements[0].met_by(3) && !case.requirements[0].met_by(1));
        assert!(case.requirements[1].met_by(0) && !case.requirements[1].met_by(1));
        assert!(case.requirements[2].met_by(900) && !case.requirements[2].met_by(901));
        for bad in [
            "send(c1, r2)\n",
            "seed: x\n",
            "seed: 1\nsend(c3, r1)\n",
            "seed: 1\nsend(c1)\n",
            "seed: 1\nportal_restart(c1)\n",
            "seed: 1\nfly(c1)\n",
            "seed: 1\nadvance_time(10)\n",
            "seed: 1\nrequire: checked:delivered > 2\n",
            "seed: 1\nrequire: = 2\n",
        ] {
            assert!(parse(Path::new("x.case"), bad).is_err(), "{bad:?}");
        }
    }
}
