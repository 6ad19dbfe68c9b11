//! The node's event loop and WebSocket link against the real portal server over TCP: the
//! session joins, receives its init, and after a portal restart (every socket dropped) rejoins
//! by itself and receives a fresh init.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::wildcard_enum_match_arm
)]

use std::future::Future;
use std::io;
use std::time::Instant;

use node::runtime::{run, Device, TcpConnector, TokioClock, TokioSocket, WebSocketLink};
use node_core::engine::{ControlCommand, ControlInput, Engine, PortalDriver};
use node_core::pool::Buffer;
use node_core::portal::messages::{ClientEgress, ClientIngress};
use node_core::portal::{ChannelConfig, Event, JoinPayload};
use node_core::Transmit;
use portal_sim::server::{system_clock, Server};
use portal_sim::{Portal, PortalConfig, SeedFile};
use tokio::sync::mpsc;

/// An engine that is only a portal session, recording what it hears.
struct SessionEngine {
    driver: PortalDriver<ClientIngress, ClientEgress>,
    inits: usize,
    disconnects: usize,
}

impl Engine for SessionEngine {
    fn handle_datagram(
        &mut self,
        _: std::net::SocketAddr,
        _: std::net::SocketAddr,
        _: &[u8],
        _: Instant,
    ) {
    }
    fn handle_device_packet(&mut self, _: Vec<u8>, _: Instant) {}
    fn handle_unreachable(&mut self, _: std::net::SocketAddr, _: Instant) {}
    fn handle_network_change(&mut self, _: &[std::net::SocketAddr], _: Instant) {}
    fn handle_timeout(&mut self, now: Instant) {
        self.driver.handle_timeout(now);
        self.drain();
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        self.driver.poll_timeout()
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        None
    }
    fn poll_device_packet(&mut self) -> Option<Buffer> {
        None
    }
    fn handle_control(&mut self, input: ControlInput, now: Instant) {
        self.driver.handle_control(input, now);
        self.drain();
    }
    fn poll_control(&mut self) -> Option<ControlCommand> {
        self.driver.poll_control()
    }
}

impl SessionEngine {
    fn drain(&mut self) {
        while let Some(event) = self.driver.poll_event() {
            match event {
                Event::Message(ClientIngress::Init(_)) => self.inits += 1,
                Event::Disconnected { .. } => self.disconnects += 1,
                _ => {}
            }
        }
    }
}

struct NoDevice;

impl Device for NoDevice {
    fn recv(&mut self) -> impl Future<Output = Option<Vec<u8>>> {
        std::future::pending()
    }
    fn send(&mut self, _: &[u8]) -> impl Future<Output = io::Result<()>> {
        std::future::ready(Ok(()))
    }
}

fn portal(generation: u64) -> Portal {
    let seed = SeedFile::parse(include_str!("../../portal-sim/examples/seed.json")).unwrap();
    let mut config = PortalConfig::new("secret", 7);
    config.generation = generation;
    Portal::new(&seed, config)
}

#[tokio::test(flavor = "current_thread")]
async fn session_joins_and_rejoins_after_a_portal_restart() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let server = Server::new(portal(1), system_clock());
            let serving = server.clone();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let _ = serving.serve(listener).await;
            });

            let key = node_core::PublicKey::from(&node_core::StaticSecret::from([5; 32]));
            let join = JoinPayload {
                public_key: key.to_bytes().into(),
                instance: None,
            };
            let mut engine = SessionEngine {
                driver: PortalDriver::new(ChannelConfig::new("client", join), 1),
                inits: 0,
                disconnects: 0,
            };
            let connector = TcpConnector {
                addr: addr.to_string(),
            };
            let mut link = WebSocketLink::new(
                connector,
                format!("ws://{addr}/client/websocket?token=client-token-1"),
            );
            let socket = TokioSocket(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let (commands_tx, mut commands) = mpsc::unbounded_channel();
            let mut device = NoDevice;

            let driver = async {
                let ask = |f: fn(&SessionEngine) -> bool| {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    commands_tx
                        .send(Box::new(move |e: &mut SessionEngine, _| {
                            let _ = tx.send(f(e));
                        })
                            as node::runtime::Command<SessionEngine>)
                        .unwrap();
                    rx
                };
                wait_until(&ask, |e| e.inits == 1).await;
                server.restart(portal(2));
                wait_until(&ask, |e| e.disconnects >= 1 && e.inits == 2).await;
                drop(commands_tx);
            };
            let running = run(
                &mut engine,
                &socket,
                &TokioClock,
                &mut device,
                &mut link,
                &mut commands,
            );
            let (result, ()) = tokio::join!(running, driver);
            result.unwrap();
            assert!(engine.driver.is_joined());
        })
        .await;
}

/// Polls the engine (through the loop's command channel) until `done`, for at most 20 s.
async fn wait_until<F>(ask: &F, done: fn(&SessionEngine) -> bool)
where
    F: Fn(fn(&SessionEngine) -> bool) -> tokio::sync::oneshot::Receiver<bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if ask(done).await.unwrap() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
