//! Nodes for the portal's tests: a `PhoenixChannel` over a real WebSocket.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::wildcard_enum_match_arm
)] // each test file uses its own part

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use node_core::ids::{ClientId, GatewayId, ResourceId};
use node_core::portal::messages::{
    AuthorizeFlow, ClientEgress, ClientIngress, FlowAccepted, GatewayEgress, GatewayIngress,
    RequestConnection,
};
use node_core::portal::{
    ChannelConfig, ConnectionError, Event, Input, JoinPayload, Message, PhoenixChannel,
    PresharedKey, PublicKey, RequestId,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Tests take a real `Instant`; the channel only compares them.
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

/// A node: a `PhoenixChannel` driven over a tokio-tungstenite socket.
pub struct Peer<I, E> {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    channel: PhoenixChannel<I, E>,
}

impl<I: Message + std::fmt::Debug, E: Message> Peer<I, E> {
    pub async fn connect(url: &str, topic: &str, key: u8) -> Self {
        Self::connect_as(url, topic, key, None).await
    }

    /// [`Peer::connect`], joining with the process number `instance`.
    pub async fn connect_as(url: &str, topic: &str, key: u8, instance: Option<u64>) -> Self {
        let config = ChannelConfig::new(
            topic,
            JoinPayload {
                public_key: PublicKey::from_bytes([key; 32]),
                instance,
            },
        );
        let mut channel = PhoenixChannel::new(config, u64::from(key));
        assert!(matches!(channel.poll_event(), Some(Event::OpenSocket)));
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        channel.handle_input(now(), Input::Opened);
        Self { ws, channel }
    }

    /// Sends (or holds back) a message and writes whatever the channel wants written.
    pub async fn send(&mut self, message: &E) -> RequestId {
        let id = self.channel.send(message).unwrap();
        self.flush().await;
        id
    }

    pub async fn flush(&mut self) {
        while let Some(text) = self.channel.poll_transmit() {
            self.ws.send(WsMessage::text(text)).await.unwrap();
        }
    }

    pub async fn next_event(&mut self) -> Event<I> {
        loop {
            self.flush().await;
            if let Some(event) = self.channel.poll_event() {
                return event;
            }
            let message = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("no event within 5 s");
            match message {
                Some(Ok(WsMessage::Text(text))) => {
                    self.channel.handle_input(now(), Input::Text(text.as_str()));
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    let error = ConnectionError::Closed { reason };
                    self.channel.handle_input(now(), Input::Closed(&error));
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    let error = ConnectionError::Io(error.to_string());
                    self.channel.handle_input(now(), Input::Closed(&error));
                }
                None => {
                    let error = ConnectionError::Io("stream ended".into());
                    self.channel.handle_input(now(), Input::Closed(&error));
                }
            }
        }
    }

    /// Skips events until `pick` returns something.
    pub async fn wait_for<T>(&mut self, mut pick: impl FnMut(Event<I>) -> Option<T>) -> T {
        loop {
            if let Some(t) = pick(self.next_event().await) {
                return t;
            }
        }
    }
}

pub type Client = Peer<ClientIngress, ClientEgress>;
pub type Gateway = Peer<GatewayIngress, GatewayEgress>;

pub async fn joined_pair(url: &str) -> (Client, Gateway) {
    let mut gateway = Gateway::connect(
        &format!("{url}/gateway/websocket?token=gateway-token-1"),
        "gateway:1",
        101,
    )
    .await;
    gateway
        .wait_for(|e| matches!(e, Event::Message(GatewayIngress::Init(_))).then_some(()))
        .await;
    let client = Client::connect(
        &format!("{url}/client/websocket?token=client-token-1"),
        "client",
        1,
    )
    .await;
    (client, gateway)
}

/// The next `authorize_flow` the gateway gets.
pub async fn next_authorize_flow(gateway: &mut Gateway) -> AuthorizeFlow {
    gateway
        .wait_for(|e| match e {
            Event::Message(GatewayIngress::AuthorizeFlow(a)) => Some(a),
            _ => None,
        })
        .await
}

/// Requests resource 1 and returns the PSK each side got.
pub async fn connect_flow(
    client: &mut Client,
    gateway: &mut Gateway,
) -> (PresharedKey, PresharedKey) {
    let request = client
        .send(&ClientEgress::RequestConnection(RequestConnection {
            resource_id: ResourceId(1),
        }))
        .await;
    client
        .wait_for(|e| match e {
            Event::Reply { id, result } if id == request => {
                assert!(result.is_ok(), "{result:?}");
                Some(())
            }
            Event::Message(ClientIngress::FlowAuthorized(d)) => {
                panic!("flow told before the gateway accepted it: {d:?}")
            }
            _ => None,
        })
        .await;
    let authorize = next_authorize_flow(gateway).await;
    // The client hears of the flow once the gateway has it.
    gateway
        .send(&GatewayEgress::FlowAccepted(FlowAccepted {
            client_id: authorize.client.id,
            resource_id: authorize.resource.id,
            ice_ufrag: authorize.gateway_ice.username.clone(),
        }))
        .await;
    let details = client
        .wait_for(|e| match e {
            Event::Message(ClientIngress::FlowAuthorized(d)) => Some(d),
            _ => None,
        })
        .await;
    assert_eq!(details.gateway_id, GatewayId(1));
    assert_eq!(details.gateway_public_key, PublicKey::from_bytes([101; 32]));
    assert_eq!(authorize.client.id, ClientId(1));
    assert_eq!(authorize.client.public_key, PublicKey::from_bytes([1; 32]));
    assert_eq!(authorize.client_ice, details.client_ice);
    assert_eq!(authorize.gateway_ice, details.gateway_ice);
    (details.preshared_key, authorize.preshared_key)
}

/// A database of its own, named after the test and the process, on the PostgreSQL server at
/// `ZTA_TEST_POSTGRES_URL` (scripts/test.sh starts one; the tests that need it fail without it).
pub async fn postgres_database(name: &str) -> String {
    let server = std::env::var("ZTA_TEST_POSTGRES_URL")
        .expect("ZTA_TEST_POSTGRES_URL must name a PostgreSQL server (scripts/test.sh starts one)");
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&server).await.unwrap();
    let db = format!("zta_test_{}_{name}", std::process::id());
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .unwrap();
    let (base, _) = server.rsplit_once('/').unwrap();
    format!("{base}/{db}")
}
