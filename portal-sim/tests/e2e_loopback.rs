//! The whole system in one process on loopback: the real portal server (WebSocket over TCP), a
//! client and a gateway running the production engines in the production event loop over real
//! UDP sockets, and a resource behind the gateway that echoes UDP. The client reaches the
//! resource it is authorized for and never reaches the one it is not.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::wildcard_enum_match_arm
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use node::runtime::{run, ChannelDevice, TcpConnector, TokioClock, TokioSocket, WebSocketLink};
use node_core::engine::{ClientEngine, GatewayEngine};
use node_core::packet::{IpPacket, Transport};
use node_core::state::{ClientState, GatewayState};
use portal_sim::server::{system_clock, Server};
use portal_sim::{Portal, PortalConfig, SeedFile};
use tokio::sync::mpsc;

const SEED: &str = r#"{
  "clients": [{ "id": 1, "name": "laptop", "token": "client-token", "ipv4": "100.64.0.1", "ipv6": "fd00:2021:1111::1" }],
  "gateways": [{ "id": 1, "name": "gw", "token": "gateway-token", "site": "hq" }],
  "resources": [
    { "id": 1, "name": "allowed", "site": "hq", "type": "host", "address": "10.0.0.5" },
    { "id": 2, "name": "forbidden", "site": "hq", "type": "host", "address": "10.0.0.6" }
  ],
  "policies": [{ "client_id": 1, "resource_id": 1 }],
  "relays": []
}"#;

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

fn udp(dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let src = SocketAddr::new(IpAddr::V4(CLIENT_IP), 40000);
    IpPacket::udp(src, SocketAddr::new(IpAddr::V4(dst), 7), payload)
        .unwrap()
        .into_inner()
}

/// The resource network behind the gateway: answers every UDP datagram with the same payload.
async fn resource(
    mut from_gateway: mpsc::UnboundedReceiver<Vec<u8>>,
    to_gateway: mpsc::UnboundedSender<Vec<u8>>,
    seen: mpsc::UnboundedSender<IpAddr>,
) {
    while let Some(bytes) = from_gateway.recv().await {
        let Ok(packet) = IpPacket::parse(bytes) else {
            continue;
        };
        let _ = seen.send(packet.destination());
        if let Transport::Udp {
            src_port,
            dst_port,
            payload,
        } = packet.transport()
        {
            let reply = IpPacket::udp(
                SocketAddr::new(packet.destination(), dst_port),
                SocketAddr::new(packet.source(), src_port),
                payload,
            )
            .unwrap();
            let _ = to_gateway.send(reply.into_inner());
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn client_reaches_only_the_authorized_resource() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let local = tokio::task::LocalSet::new();
    local.run_until(scenario()).await;
}

async fn scenario() {
    let seed = SeedFile::parse(SEED).unwrap();
    let server = Server::new(
        Portal::new(&seed, PortalConfig::new("secret", 3)),
        system_clock(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let portal = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    let connector = TcpConnector {
        addr: portal.to_string(),
    };

    // Gateway.
    let gw_socket = TokioSocket(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let mut gw_tunnel = GatewayState::new(11, Instant::now(), SystemTime::now());
    gw_tunnel.add_local_address(gw_socket.0.local_addr().unwrap(), Instant::now());
    let mut gateway = GatewayEngine::new(gw_tunnel, "gateway", 12);
    let mut gw_link = WebSocketLink::new(
        connector.clone(),
        format!("ws://{portal}/gateway/websocket?token=gateway-token"),
    );
    let (mut gw_device, to_gateway, from_gateway) = ChannelDevice::new();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    tokio::task::spawn_local(resource(from_gateway, to_gateway, seen_tx));
    let (_gw_commands_tx, mut gw_commands) = mpsc::unbounded_channel();
    tokio::task::spawn_local(async move {
        let result = run(
            &mut gateway,
            &gw_socket,
            &TokioClock,
            &mut gw_device,
            &mut gw_link,
            &mut gw_commands,
        )
        .await;
        result.unwrap();
    });

    // Client.
    let socket = TokioSocket(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let mut tunnel = ClientState::new(21, Instant::now());
    tunnel.add_local_address(socket.0.local_addr().unwrap(), Instant::now());
    let mut client = ClientEngine::new(tunnel, "client", 22);
    let mut link = WebSocketLink::new(
        connector,
        format!("ws://{portal}/client/websocket?token=client-token"),
    );
    let (mut device, to_client, mut from_client) = ChannelDevice::new();
    let (_commands_tx, mut commands) = mpsc::unbounded_channel();
    tokio::task::spawn_local(async move {
        let result = run(
            &mut client,
            &socket,
            &TokioClock,
            &mut device,
            &mut link,
            &mut commands,
        )
        .await;
        result.unwrap();
    });

    // Until the portal has been joined and the connection is up, packets are held back or
    // refused; keep asking until the echo comes back.
    let allowed = Ipv4Addr::new(10, 0, 0, 5);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let reply = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no echo from the authorized resource"
        );
        to_client.send(udp(allowed, b"ping")).unwrap();
        match tokio::time::timeout(Duration::from_millis(500), from_client.recv()).await {
            Ok(Some(bytes)) => break IpPacket::parse(bytes).unwrap(),
            Ok(None) => panic!("client device closed"),
            Err(_) => continue,
        }
    };
    assert_eq!(reply.source(), IpAddr::V4(allowed));
    assert_eq!(reply.destination(), IpAddr::V4(CLIENT_IP));
    assert_eq!(reply.payload(), b"ping");
    assert!(reply.checksums_valid());

    // The forbidden resource: the portal refuses the connection; nothing reaches it.
    let forbidden = Ipv4Addr::new(10, 0, 0, 6);
    for _ in 0..5 {
        to_client.send(udp(forbidden, b"let me in")).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut reached = Vec::new();
    while let Ok(dst) = seen.try_recv() {
        reached.push(dst);
    }
    assert!(!reached.contains(&IpAddr::V4(forbidden)), "{reached:?}");
    assert!(reached.contains(&IpAddr::V4(allowed)));
}
