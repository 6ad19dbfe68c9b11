use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::ids::{GatewayId, ResourceId};
use crate::portal::frame::{HEARTBEAT, PHOENIX_TOPIC};
use crate::portal::messages::{ClientEgress, ClientIngress, GatewayCandidates, RequestConnection};
use crate::portal::PublicKey;

type Channel = PhoenixChannel<ClientIngress, ClientEgress>;

const TOPIC: &str = "client";

/// Tests take a real `Instant` as their base; only differences matter.
#[allow(clippy::disallowed_methods)]
fn start() -> Instant {
    Instant::now()
}

fn channel(seed: u64) -> Channel {
    let config = ChannelConfig::new(
        TOPIC,
        JoinPayload {
            public_key: PublicKey::from_bytes([1; 32]),
            instance: None,
        },
    );
    let mut c = Channel::new(config, seed);
    assert_eq!(c.poll_event(), Some(Event::OpenSocket));
    c
}

fn request(resource: u64) -> ClientEgress {
    ClientEgress::RequestConnection(RequestConnection {
        resource_id: ResourceId(resource),
    })
}

fn frames(c: &mut Channel) -> Vec<Frame> {
    std::iter::from_fn(|| c.poll_transmit())
        .map(|t| Frame::parse(&t).unwrap())
        .collect()
}

fn events(c: &mut Channel) -> Vec<Event<ClientIngress>> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn reply_ok(c: &mut Channel, now: Instant, reference: u64) {
    let text = Frame::reply_ok(TOPIC, reference, json!({})).to_text();
    c.handle_input(now, Input::Text(&text));
}

/// Opens the socket and returns the join's ref.
fn open(c: &mut Channel, now: Instant) -> u64 {
    c.handle_input(now, Input::Opened);
    let sent = frames(c);
    assert_eq!(sent.len(), 1, "only the join goes out: {sent:?}");
    assert_eq!(sent[0].event, PHX_JOIN);
    assert_eq!(sent[0].topic, TOPIC);
    assert_eq!(
        sent[0].payload["public_key"],
        PublicKey::from_bytes([1; 32]).to_base64()
    );
    sent[0].reference.unwrap()
}

fn join(c: &mut Channel, now: Instant) {
    let join_ref = open(c, now);
    reply_ok(c, now, join_ref);
    assert_eq!(events(c), vec![Event::Connected]);
}

#[test]
fn messages_sent_before_the_join_reply_go_out_after_it_in_order() {
    let now = start();
    let mut c = channel(1);
    c.send(&request(1)).unwrap();
    let join_ref = open(&mut c, now);
    c.send(&request(2)).unwrap();
    assert!(frames(&mut c).is_empty(), "held back while joining");

    reply_ok(&mut c, now, join_ref);

    assert_eq!(events(&mut c), vec![Event::Connected]);
    let sent = frames(&mut c);
    let resources: Vec<_> = sent
        .iter()
        .map(|f| {
            assert_eq!(f.event, "request_connection");
            f.payload["resource_id"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(resources, vec![1, 2]);

    c.send(&request(3)).unwrap();
    assert_eq!(frames(&mut c).len(), 1, "joined: sent at once");
}

#[test]
fn a_flap_during_the_join_resends_it_and_then_flushes_the_queue() {
    let mut now = start();
    let mut c = channel(2);
    let first_join = open(&mut c, now);
    c.send(&request(7)).unwrap();

    c.handle_input(now, Input::Closed(&ConnectionError::Io("reset".into())));
    assert!(matches!(
        events(&mut c).as_slice(),
        [Event::Disconnected {
            reason: DisconnectReason::Connection(ConnectionError::Io(_))
        }]
    ));
    let (at, timer) = c.poll_timeout().unwrap();
    assert_eq!(timer, Timer::Reconnect);
    now = at;
    c.handle_timeout(now);
    assert_eq!(events(&mut c), vec![Event::OpenSocket]);

    let second_join = open(&mut c, now);
    assert_ne!(first_join, second_join);
    // A stale reply to the lingering join does not count.
    reply_ok(&mut c, now, first_join);
    assert!(frames(&mut c).is_empty());
    assert!(!c.is_joined());

    reply_ok(&mut c, now, second_join);
    assert_eq!(events(&mut c), vec![Event::Connected]);
    let sent = frames(&mut c);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].payload["resource_id"], 7);
}

#[test]
fn heartbeats_keep_the_connection_and_a_missed_one_reconnects() {
    let start = start();
    let mut c = channel(3);
    join(&mut c, start);

    let (at, timer) = c.poll_timeout().unwrap();
    assert_eq!((at, timer), (start + HEARTBEAT_INTERVAL, Timer::Heartbeat));
    c.handle_timeout(at - Duration::from_millis(1));
    assert!(frames(&mut c).is_empty(), "early timeout is a no-op");
    c.handle_timeout(at);
    let hb = frames(&mut c);
    assert_eq!(hb.len(), 1);
    assert_eq!(
        (hb[0].topic.as_str(), hb[0].event.as_str()),
        (PHOENIX_TOPIC, HEARTBEAT)
    );
    let text = Frame::reply_ok(PHOENIX_TOPIC, hb[0].reference.unwrap(), json!({})).to_text();
    c.handle_input(at, Input::Text(&text));
    assert!(
        events(&mut c).is_empty(),
        "heartbeat replies are not events"
    );

    // The next one is due an interval after the first was sent, not after its reply.
    let (next, timer) = c.poll_timeout().unwrap();
    assert_eq!((next, timer), (at + HEARTBEAT_INTERVAL, Timer::Heartbeat));

    // Second heartbeat goes unanswered: the connection is given up after the timeout, not
    // when the next one is due.
    let at = next;
    c.handle_timeout(at);
    assert_eq!(frames(&mut c).len(), 1);
    assert_eq!(c.poll_timeout().unwrap().0, at + HEARTBEAT_TIMEOUT);
    c.handle_timeout(at + HEARTBEAT_TIMEOUT - Duration::from_millis(1));
    assert!(events(&mut c).is_empty());
    let at = at + HEARTBEAT_TIMEOUT;
    c.handle_timeout(at);
    assert_eq!(
        events(&mut c),
        vec![
            Event::CloseSocket,
            Event::Disconnected {
                reason: DisconnectReason::HeartbeatTimeout
            }
        ]
    );
    let (reconnect_at, timer) = c.poll_timeout().unwrap();
    assert_eq!(timer, Timer::Reconnect);
    c.handle_timeout(reconnect_at);
    assert_eq!(events(&mut c), vec![Event::OpenSocket]);
}

/// The reconnect delays of a channel whose sockets keep failing.
fn failing_delays(seed: u64, n: usize) -> Vec<Duration> {
    let mut now = start();
    let start = now;
    let mut c = channel(seed);
    let mut delays = Vec::new();
    for _ in 0..n {
        c.handle_input(now, Input::Closed(&ConnectionError::Http { status: 502 }));
        let (at, timer) = c.poll_timeout().unwrap();
        assert_eq!(timer, Timer::Reconnect);
        delays.push(at - now);
        now = at;
        c.handle_timeout(now);
        assert!(events(&mut c).contains(&Event::OpenSocket));
    }
    assert!(now > start);
    delays
}

#[test]
fn backoff_grows_is_capped_and_deterministic() {
    let delays = failing_delays(9, 14);
    assert!(delays[0] <= Duration::from_millis(500));
    assert!(delays[5] > delays[0]);
    assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
    assert!(delays[13] >= Duration::from_secs(5), "{delays:?}");
    assert_eq!(delays, failing_delays(9, 14), "same seed, same delays");
    assert_ne!(delays, failing_delays(10, 14));
}

#[test]
fn a_successful_join_resets_the_backoff() {
    let mut now = start();
    let mut c = channel(4);
    for _ in 0..6 {
        c.handle_input(now, Input::Closed(&ConnectionError::Io("refused".into())));
        now = c.poll_timeout().unwrap().0;
        c.handle_timeout(now);
    }
    events(&mut c);
    join(&mut c, now);
    c.handle_input(now, Input::Closed(&ConnectionError::Io("reset".into())));
    let (at, _) = c.poll_timeout().unwrap();
    assert!(at - now <= Duration::from_millis(500));
}

#[test]
fn a_network_change_reconnects_at_once() {
    let start = start();
    let mut c = channel(5);
    join(&mut c, start);
    c.send(&request(1)).unwrap();
    frames(&mut c);
    // Joined: the socket is closed, the request in flight fails, and a new socket opens at
    // the next timeout, due now.
    c.handle_network_change(start);
    let got = events(&mut c);
    assert_eq!(got[0], Event::CloseSocket);
    assert!(got.contains(&Event::Disconnected {
        reason: DisconnectReason::NetworkChanged
    }));
    assert!(got
        .iter()
        .any(|e| matches!(e, Event::Reply { result: Err(_), .. })));
    assert_eq!(c.poll_timeout(), Some((start, Timer::Reconnect)));
    c.handle_timeout(start);
    assert_eq!(events(&mut c), vec![Event::OpenSocket]);
    // Backing off after failures: tried now, and the backoff starts over.
    let mut now = start;
    for _ in 0..6 {
        c.handle_input(
            now,
            Input::Closed(&ConnectionError::Io("unreachable".into())),
        );
        now = c.poll_timeout().unwrap().0;
        c.handle_timeout(now);
    }
    c.handle_input(
        now,
        Input::Closed(&ConnectionError::Io("unreachable".into())),
    );
    assert!(c.poll_timeout().unwrap().0 - now > Duration::from_secs(1));
    events(&mut c);
    c.handle_network_change(now);
    assert!(events(&mut c).is_empty(), "no socket to close");
    assert_eq!(c.poll_timeout(), Some((now, Timer::Reconnect)));
    c.handle_timeout(now);
    assert_eq!(events(&mut c), vec![Event::OpenSocket]);
    c.handle_input(
        now,
        Input::Closed(&ConnectionError::Io("unreachable".into())),
    );
    assert!(c.poll_timeout().unwrap().0 - now <= Duration::from_millis(500));
}

#[test]
fn an_invalid_certificate_is_fatal() {
    let now = start();
    let mut c = channel(5);
    c.send(&request(1)).unwrap();
    c.handle_input(
        now,
        Input::Closed(&ConnectionError::InvalidPeerCertificate("expired".into())),
    );
    assert_eq!(
        events(&mut c),
        vec![Event::Fatal {
            error: PortalError::InvalidPeerCertificate("expired".into())
        }]
    );
    assert_eq!(c.poll_timeout(), None, "no retry");
    c.handle_timeout(now + Duration::from_secs(3600));
    assert!(events(&mut c).is_empty());
    c.handle_input(now, Input::Opened);
    assert!(frames(&mut c).is_empty());
}

#[test]
fn pushes_become_messages_and_junk_is_skipped() {
    let now = start();
    let mut c = channel(6);
    join(&mut c, now);
    for junk in [
        "{not json",
        r#"{"topic":"client","event":"brand_new_event","payload":{},"ref":null}"#,
        r#"{"topic":"client","event":"resource_deleted","payload":{"id":"x"},"ref":null}"#,
        r#"{"topic":"elsewhere","event":"resource_deleted","payload":{"id":1},"ref":null}"#,
    ] {
        c.handle_input(now, Input::Text(junk));
    }
    assert!(events(&mut c).is_empty());

    c.handle_input(
        now,
        Input::Text(
            r#"{"topic":"client","event":"ice_candidates","payload":{"gateway_id":4,"candidates":["candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host", 3]},"ref":null}"#,
        ),
    );
    assert_eq!(
        events(&mut c),
        vec![Event::Message(ClientIngress::IceCandidates(
            GatewayCandidates {
                gateway_id: GatewayId(4),
                candidates: vec!["candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host".into()],
            }
        ))]
    );
}

#[test]
fn replies_reach_their_request() {
    let now = start();
    let mut c = channel(7);
    join(&mut c, now);
    let ok = c.send(&request(1)).unwrap();
    let denied = c.send(&request(2)).unwrap();
    let lost = c.send(&request(3)).unwrap();
    frames(&mut c);
    c.handle_input(
        now,
        Input::Text(&Frame::reply_error(TOPIC, denied.0, "unauthorized").to_text()),
    );
    reply_ok(&mut c, now, ok.0);
    c.handle_input(
        now,
        Input::Closed(&ConnectionError::Closed {
            reason: "bye".into(),
        }),
    );

    let ev = events(&mut c);
    assert_eq!(
        ev[..3],
        [
            Event::Reply {
                id: denied,
                result: Err(ReplyError::Rejected {
                    reason: "unauthorized".into()
                })
            },
            Event::Reply {
                id: ok,
                result: Ok(json!({}))
            },
            Event::Reply {
                id: lost,
                result: Err(ReplyError::Disconnected)
            },
        ]
    );
}

#[test]
fn a_rejected_join_backs_off_and_retries() {
    let now = start();
    let mut c = channel(8);
    let join_ref = open(&mut c, now);
    c.handle_input(
        now,
        Input::Text(&Frame::reply_error(TOPIC, join_ref, "unknown topic").to_text()),
    );
    assert_eq!(
        events(&mut c),
        vec![
            Event::CloseSocket,
            Event::Disconnected {
                reason: DisconnectReason::JoinRejected("unknown topic".into())
            }
        ]
    );
    assert_eq!(c.poll_timeout().unwrap().1, Timer::Reconnect);
}

#[test]
fn a_room_error_rejoins_on_the_same_socket() {
    let now = start();
    let mut c = channel(9);
    join(&mut c, now);
    c.handle_input(
        now,
        Input::Text(r#"{"topic":"client","event":"phx_error","payload":{},"ref":null}"#),
    );
    let sent = frames(&mut c);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].event, PHX_JOIN);
    c.send(&request(5)).unwrap();
    assert!(frames(&mut c).is_empty(), "held back until the rejoin");
    reply_ok(&mut c, now, sent[0].reference.unwrap());
    assert_eq!(events(&mut c), vec![Event::Connected]);
    assert_eq!(frames(&mut c).len(), 1);
}

#[test]
fn an_unanswered_join_times_out_even_if_heartbeats_are_answered() {
    let start = start();
    let mut c = channel(11);
    open(&mut c, start);
    let at = start + HEARTBEAT_INTERVAL;
    c.handle_timeout(at);
    assert_eq!(
        events(&mut c),
        vec![
            Event::CloseSocket,
            Event::Disconnected {
                reason: DisconnectReason::JoinTimeout
            }
        ]
    );
    assert_eq!(c.poll_timeout().unwrap().1, Timer::Reconnect);
}

#[test]
fn messages_held_back_are_capped_and_the_oldest_dropped_with_an_error() {
    let now = start();
    let mut c = channel(1);
    for resource in 0..=MAX_HELD_BACK as u64 {
        c.send(&request(resource)).unwrap();
    }
    // The first one went, with an error reply for its sender.
    let dropped: Vec<_> = events(&mut c)
        .into_iter()
        .filter(|e| matches!(e, Event::Reply { .. }))
        .collect();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert!(matches!(
        &dropped[0],
        Event::Reply {
            result: Err(ReplyError::HeldBackTooLong),
            ..
        }
    ));
    // The rest go out in order once joined.
    let join = open(&mut c, now);
    reply_ok(&mut c, now, join);
    let sent = frames(&mut c);
    assert_eq!(sent.len(), MAX_HELD_BACK);
    assert_eq!(sent[0].payload["resource_id"], json!(1));
    assert_eq!(
        sent[MAX_HELD_BACK - 1].payload["resource_id"],
        json!(MAX_HELD_BACK)
    );
}
