//! The portal server on a real WebSocket, with nodes driven through `PhoenixChannel`.
#![allow(clippy::unwrap_used, clippy::wildcard_enum_match_arm)] // test helpers; events not waited for are skipped

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use node_core::ids::{ClientId, GatewayId, RelayId, ResourceId};
use node_core::portal::messages::{
    ClientEgress, ClientIngress, GatewayCandidates, GatewayIngress, RequestConnection,
};
use node_core::portal::{Event, ReplyError};
use node_proto::portal::url::percent_encode;
use portal_sim::seed::RelaySeed;
use portal_sim::server::{system_clock, Server, MAX_MESSAGE_LEN, OUTBOUND_QUEUE_LEN};
use portal_sim::{Portal, PortalConfig, SeedFile};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod common;
use common::{connect_flow, joined_pair, next_authorize_flow, Client};

const CANDIDATE: &str = "candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host";

const EXAMPLE_SEED: &str = include_str!("../examples/seed.json");

fn portal(generation: u64) -> Portal {
    portal_from(EXAMPLE_SEED, generation)
}

fn portal_from(seed: &str, generation: u64) -> Portal {
    let seed = SeedFile::parse(seed).unwrap();
    let mut config = PortalConfig::new("secret", 7);
    config.generation = generation;
    Portal::new(&seed, config)
}

async fn start(generation: u64) -> (String, JoinHandle<()>) {
    let (url, _, task) = start_server(generation).await;
    (url, task)
}

async fn start_server(generation: u64) -> (String, Server, JoinHandle<()>) {
    serve(portal(generation)).await
}

async fn serve(portal: Portal) -> (String, Server, JoinHandle<()>) {
    let server = Server::new(portal, system_clock());
    let handle = server.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    (format!("ws://{addr}"), handle, task)
}

#[tokio::test]
async fn nodes_are_introduced_over_websockets_and_a_restart_rotates_the_psk() {
    let (url, server) = start(0).await;

    // An unknown token is refused at the upgrade.
    let refused =
        tokio_tungstenite::connect_async(format!("{url}/client/websocket?token=nope")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected HTTP 401, got {other:?}"),
    }

    let (mut client, mut gateway) = joined_pair(&url).await;
    let (client_psk, gateway_psk) = connect_flow(&mut client, &mut gateway).await;
    assert_eq!(client_psk, gateway_psk);

    // Candidates go through the portal to the gateway.
    client
        .send(&ClientEgress::IceCandidates(GatewayCandidates {
            gateway_id: GatewayId(1),
            candidates: vec![CANDIDATE.into()],
        }))
        .await;
    let candidates = gateway
        .wait_for(|e| match e {
            Event::Message(GatewayIngress::IceCandidates(c)) => Some(c),
            _ => None,
        })
        .await;
    assert_eq!(candidates.client_id, ClientId(1));
    assert_eq!(
        candidates.parse()[0].addr(),
        "10.0.0.1:5000".parse().unwrap()
    );

    // A resource without a policy: an error reply, no flow.
    let denied = client
        .send(&ClientEgress::RequestConnection(RequestConnection {
            resource_id: ResourceId(3),
        }))
        .await;
    let result = client
        .wait_for(|e| match e {
            Event::Reply { id, result } if id == denied => Some(result),
            Event::Message(ClientIngress::FlowAuthorized(d)) => panic!("unexpected flow {d:?}"),
            _ => None,
        })
        .await;
    assert_eq!(
        result,
        Err(ReplyError::Rejected {
            reason: "unauthorized".into()
        })
    );

    // Restart: the old server goes away with its sockets, a new one knows nothing.
    server.abort();
    let _ = server.await;
    client
        .wait_for(|e| matches!(e, Event::Disconnected { .. }).then_some(()))
        .await;
    let (url, _server) = start(1).await;
    let (mut client, mut gateway) = joined_pair(&url).await;
    let (new_psk, new_gateway_psk) = connect_flow(&mut client, &mut gateway).await;
    assert_eq!(new_psk, new_gateway_psk);
    assert_ne!(new_psk, client_psk, "a restart rotates the PSK");
}

#[tokio::test]
async fn a_restarted_client_gets_new_connections_and_a_reconnected_one_keeps_its_own() {
    let (url, _server) = start(0).await;
    let client_url = format!("{url}/client/websocket?token=client-token-1");
    let (client, mut gateway) = joined_pair(&url).await;
    drop(client);
    let mut client = Client::connect_as(&client_url, "client", 1, Some(7)).await;
    let (first, _) = connect_flow(&mut client, &mut gateway).await;

    // The same process, reconnected (a network blip): the same connection. Its gateway is
    // told of the flow again at once, so that both sides signal their candidates anew (what
    // the portal pushed meanwhile went into the dead socket).
    drop(client);
    let mut client = Client::connect_as(&client_url, "client", 1, Some(7)).await;
    client
        .wait_for(|e| matches!(e, Event::Connected).then_some(()))
        .await;
    let repeated = next_authorize_flow(&mut gateway).await;
    assert_eq!(repeated.preshared_key, first);
    let (again, _) = connect_flow(&mut client, &mut gateway).await;
    assert_eq!(again, first);

    // Another process (a restart, same key): a new connection, so the gateway replaces its own
    // instead of keeping what the previous process told it.
    drop(client);
    let mut client = Client::connect_as(&client_url, "client", 1, Some(8)).await;
    let (restarted, gateway_psk) = connect_flow(&mut client, &mut gateway).await;
    assert_ne!(restarted, first);
    assert_eq!(restarted, gateway_psk);
}

#[tokio::test]
async fn an_in_place_restart_closes_every_socket_and_a_second_socket_replaces_the_first() {
    let (url, server, _task) = start_server(0).await;
    let url = format!("{url}/client/websocket?token=client-token-1");
    let mut first = Client::connect(&url, "client", 1).await;
    first
        .wait_for(|e| matches!(e, Event::Connected).then_some(()))
        .await;

    // The same token again: the older socket is closed with a reason.
    let mut second = Client::connect(&url, "client", 1).await;
    second
        .wait_for(|e| matches!(e, Event::Connected).then_some(()))
        .await;
    let reason = first
        .wait_for(|e| match e {
            Event::Disconnected { reason } => Some(reason.to_string()),
            _ => None,
        })
        .await;
    assert!(reason.contains("replaced"), "{reason}");

    server.restart(portal(1));
    let reason = second
        .wait_for(|e| match e {
            Event::Disconnected { reason } => Some(reason.to_string()),
            _ => None,
        })
        .await;
    assert!(reason.contains("restarting"), "{reason}");

    // Nodes come back to the new portal.
    let mut third = Client::connect(&url, "client", 1).await;
    third
        .wait_for(|e| matches!(e, Event::Connected).then_some(()))
        .await;
}

/// The HTTP status of a refused upgrade.
async fn refused_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        other => panic!("expected an HTTP error for {url}, got {other:?}"),
    }
}

#[tokio::test]
async fn tokens_are_percent_decoded_as_nodes_encode_them_and_malformed_ones_refused() {
    const TOKEN: &str = "a+b/c= ~é";
    let seed = format!(
        r#"{{"clients": [{{"id": 1, "token": {TOKEN:?}, "ipv4": "100.64.0.1", "ipv6": "fd00:2021:1111::1"}}]}}"#
    );
    let (url, _, _task) = serve(portal_from(&seed, 0)).await;
    let encoded = percent_encode(TOKEN);
    assert_eq!(encoded, "a%2Bb%2Fc%3D%20~%C3%A9");

    let mut client = Client::connect(
        &format!("{url}/client/websocket?token={encoded}"),
        "client",
        1,
    )
    .await;
    client
        .wait_for(|e| matches!(e, Event::Message(ClientIngress::Init(_))).then_some(()))
        .await;

    // Undecoded or partial forms are other tokens.
    for token in [
        "a+b/c=",
        "a%2Bb%2Fc%3D",
        "a%2Bb%2Fc%3D%20~%C3",
        "a%2Bb%2Fc%3D%20~%C3%A9x",
    ] {
        assert_eq!(
            refused_status(&format!("{url}/c/websocket?token={token}")).await,
            401,
            "{token}"
        );
    }
    // A malformed escape is refused like an unknown token.
    for token in ["%", "%2", "a%zz", "%%41", "%C3%A"] {
        assert_eq!(
            refused_status(&format!("{url}/c/websocket?token={token}")).await,
            401,
            "{token}"
        );
    }
    // Lower-case escapes are the same token: the client's newer socket replaces the first.
    let lower = encoded.replace("%2F", "%2f").replace("%C3", "%c3");
    let _second = Client::connect(&format!("{url}/c/websocket?token={lower}"), "client", 1).await;
    let reason = client
        .wait_for(|e| match e {
            Event::Disconnected { reason } => Some(reason.to_string()),
            _ => None,
        })
        .await;
    assert!(reason.contains("replaced"), "{reason}");
}

/// Makes the portal push `n` frames to every joined node in one go (one relay each), before any
/// connection task runs.
fn push_relays(server: &Server, first: u64, n: usize) {
    server.with_portal(|portal, now| {
        for id in (first..).take(n) {
            let relay = RelaySeed {
                id: RelayId(id),
                address: "198.51.100.1:3478".parse().unwrap(),
            };
            portal.add_relay(relay, now);
        }
    });
}

#[tokio::test]
async fn a_node_whose_outbound_queue_overflows_is_closed_rather_than_losing_frames() {
    let (url, server, _task) = start_server(0).await;
    let mut client = Client::connect(
        &format!("{url}/client/websocket?token=client-token-1"),
        "client",
        1,
    )
    .await;
    client
        .wait_for(|e| matches!(e, Event::Message(ClientIngress::Init(_))).then_some(()))
        .await;

    // A full queue is fine: every frame arrives.
    push_relays(&server, 100, OUTBOUND_QUEUE_LEN);
    let mut received = 0;
    while received < OUTBOUND_QUEUE_LEN {
        client
            .wait_for(|e| {
                matches!(e, Event::Message(ClientIngress::RelaysPresence(_))).then_some(())
            })
            .await;
        received += 1;
    }
    let is_joined = |server: &Server| {
        server.with_portal(|portal, _| portal.is_joined(portal_sim::Identity::Client(ClientId(1))))
    };
    assert!(is_joined(&server));

    // One more than fits: the socket is closed, none of the queue is sent.
    push_relays(&server, 10_000, OUTBOUND_QUEUE_LEN + 1);
    assert!(!is_joined(&server), "the portal forgets the node at once");
    let first = client
        .wait_for(|e| match e {
            Event::Message(ClientIngress::RelaysPresence(_)) => Some(true),
            Event::Disconnected { .. } => Some(false),
            _ => None,
        })
        .await;
    assert!(!first, "a frame of the overflowing burst was sent");

    // The node comes back and joins again (with the relays gone, or its init would be too
    // large for it).
    server.with_portal(|portal, _| {
        for id in (100..)
            .take(OUTBOUND_QUEUE_LEN)
            .chain((10_000..).take(OUTBOUND_QUEUE_LEN + 1))
        {
            portal.remove_relay(RelayId(id));
        }
    });
    let mut again = Client::connect(
        &format!("{url}/client/websocket?token=client-token-1"),
        "client",
        1,
    )
    .await;
    again
        .wait_for(|e| matches!(e, Event::Message(ClientIngress::Init(_))).then_some(()))
        .await;
    assert!(is_joined(&server));
}

type RawSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn raw_socket(url: &str) -> RawSocket {
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("{url}/client/websocket?token=client-token-1"))
            .await
            .unwrap();
    ws
}

/// Waits for the server to end the socket; returns the close code if it sent one.
async fn closed_by_server(ws: &mut RawSocket) -> Option<CloseCode> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the server did not close the socket within 5 s");
        match message {
            Some(Ok(WsMessage::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

/// A heartbeat padded with spaces to `len` bytes.
fn heartbeat_of_len(len: usize) -> String {
    let heartbeat = r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":1}"#;
    format!("{heartbeat}{}", " ".repeat(len - heartbeat.len()))
}

#[tokio::test]
async fn a_message_at_the_size_limit_is_served() {
    let (url, _task) = start(0).await;
    let mut ws = raw_socket(&url).await;
    ws.send(WsMessage::text(heartbeat_of_len(MAX_MESSAGE_LEN)))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = reply.into_text().unwrap();
    assert!(
        text.contains("phx_reply") && text.contains(r#""ok""#),
        "{text}"
    );
}

#[tokio::test]
async fn a_frame_over_the_size_limit_is_refused_from_its_header() {
    let (url, _task) = start(0).await;
    let mut ws = raw_socket(&url).await;
    // Only the header of a masked text frame of limit + 1 bytes: the server must not wait for
    // (and buffer) the payload.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(MAX_MESSAGE_LEN as u64 + 1).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    let tcp = ws.get_mut();
    tcp.write_all(&header).await.unwrap();
    tcp.flush().await.unwrap();
    assert_eq!(closed_by_server(&mut ws).await, Some(CloseCode::Size));
}

#[tokio::test]
async fn a_message_over_the_size_limit_in_small_frames_is_refused() {
    let (url, _task) = start(0).await;
    let mut ws = raw_socket(&url).await;
    let text = heartbeat_of_len(MAX_MESSAGE_LEN + 1).into_bytes();
    let (head, tail) = text.split_at(MAX_MESSAGE_LEN / 2);
    let first = WsFrame::message(head.to_vec(), OpCode::Data(Data::Text), false);
    let rest = WsFrame::message(tail.to_vec(), OpCode::Data(Data::Continue), true);
    ws.send(WsMessage::Frame(first)).await.unwrap();
    // The server may close before the rest is written.
    let _ = ws.send(WsMessage::Frame(rest)).await;
    assert_eq!(closed_by_server(&mut ws).await, Some(CloseCode::Size));
}
