//! [`PhoenixChannel`]: the node's side of the portal connection, sans-IO.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::portal::frame::{Frame, ReplyStatus, PHX_CLOSE, PHX_ERROR, PHX_JOIN, PHX_REPLY};
use crate::portal::{Backoff, BackoffConfig, JoinPayload, Message, PortalError, ProtocolError};

/// How often a heartbeat is sent. A link that died silently (a partition that healed while the
/// portal's messages into it were lost, a NAT that forgot the connection) is noticed only by a
/// heartbeat, so this plus [`HEARTBEAT_TIMEOUT`] is how long after the network heals a node may
/// still be unable to set up new connections: 20 s. Phoenix's own clients send every 30 s; a
/// heartbeat is a few dozen bytes, so a portal with 10,000 nodes answers about 700 a second.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// How long a heartbeat may go unanswered before the connection is given up. Short, because a
/// link that died silently (a partition, a NAT that forgot the connection) is only noticed by
/// it, and every second of it is a second after the network healed in which new connections
/// cannot be set up; the portal answers a heartbeat at once.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the channel needs to know.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// The room to join: `client`, `gateway`, or with the node's id (`client:c3`).
    pub topic: String,
    /// Sent with every join.
    pub join_payload: JoinPayload,
    /// See [`HEARTBEAT_INTERVAL`].
    pub heartbeat_interval: Duration,
    /// See [`HEARTBEAT_TIMEOUT`]; at most the interval.
    pub heartbeat_timeout: Duration,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
}

impl ChannelConfig {
    /// The defaults for joining `topic`.
    pub fn new(topic: impl Into<String>, join_payload: JoinPayload) -> Self {
        Self {
            topic: topic.into(),
            join_payload,
            heartbeat_interval: HEARTBEAT_INTERVAL,
            heartbeat_timeout: HEARTBEAT_TIMEOUT,
            backoff: BackoffConfig::default(),
        }
    }
}

/// Why the socket went away, as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// TLS verification of the portal's certificate failed. Fatal: never retried.
    #[error("invalid peer certificate: {0}")]
    InvalidPeerCertificate(String),
    /// The WebSocket upgrade was answered with an HTTP error status (e.g. 401 for a bad token).
    #[error("HTTP {status} at WebSocket upgrade")]
    Http {
        /// The status code.
        status: u16,
    },
    /// The portal closed the WebSocket.
    #[error("closed by the portal: {reason}")]
    Closed {
        /// The close frame's reason, possibly empty.
        reason: String,
    },
    /// Connecting, reading or writing failed.
    #[error("I/O error: {0}")]
    Io(String),
}

/// What the runtime feeds the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// The socket asked for with [`Event::OpenSocket`] is open.
    Opened,
    /// A text message arrived on the socket.
    Text(&'a str),
    /// The socket could not be opened, or closed.
    Closed(&'a ConnectionError),
}

/// Why the channel lost its connection (it reconnects on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The socket failed or closed.
    Connection(ConnectionError),
    /// A heartbeat went unanswered for [`ChannelConfig::heartbeat_timeout`].
    HeartbeatTimeout,
    /// The portal answered the join with an error.
    JoinRejected(String),
    /// The join went unanswered for a whole heartbeat interval.
    JoinTimeout,
    /// The host's network changed: the socket was closed to make a new one.
    NetworkChanged,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connection(e) => write!(f, "{e}"),
            Self::HeartbeatTimeout => f.write_str("heartbeat timed out"),
            Self::JoinRejected(reason) => write!(f, "join rejected: {reason}"),
            Self::JoinTimeout => f.write_str("join timed out"),
            Self::NetworkChanged => f.write_str("the network changed"),
        }
    }
}

/// Why a request got no successful reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The portal answered `error`.
    #[error("rejected by the portal: {reason}")]
    Rejected {
        /// The `reason` of the response.
        reason: String,
    },
    /// The connection (or the room) went away before the reply came; the request may or may not
    /// have been handled.
    #[error("disconnected before the reply")]
    Disconnected,
    /// The request waited for the room to be joined behind [`MAX_HELD_BACK`] newer ones and
    /// was dropped unsent.
    #[error("dropped unsent while disconnected")]
    HeldBackTooLong,
}

/// How many messages wait for the room to be joined at most. A node cut off from the portal
/// keeps making messages (candidates, connection requests); past this many the oldest is
/// dropped, with an error reply to its sender, since a rejoin brings a fresh init anyway.
pub const MAX_HELD_BACK: usize = 1024;

/// Identifies a request sent with [`PhoenixChannel::send`] in its [`Event::Reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// What the channel tells its runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<I> {
    /// Open a WebSocket to the portal and report [`Input::Opened`] or [`Input::Closed`].
    OpenSocket,
    /// Close the current socket; no [`Input::Closed`] is expected for it any more.
    CloseSocket,
    /// The room is joined; held-back messages have been queued for sending.
    Connected,
    /// The connection was lost; the channel reconnects after a backoff.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// The channel gave up for good; the runtime should stop and tell the user.
    Fatal {
        /// Why.
        error: PortalError,
    },
    /// A message from the portal.
    Message(I),
    /// The answer to a request.
    Reply {
        /// The request.
        id: RequestId,
        /// The response, or why there is none.
        result: Result<serde_json::Value, ReplyError>,
    },
}

/// The channel's timers; [`PhoenixChannel::poll_timeout`] says which one is due next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Open a new socket after a backoff.
    Reconnect = 0,
    /// Send a heartbeat (or notice that the one sent went unanswered).
    Heartbeat = 1,
}

const TIMERS: [Timer; 2] = [Timer::Reconnect, Timer::Heartbeat];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for [`Timer::Reconnect`].
    Backoff,
    /// [`Event::OpenSocket`] was emitted; waiting for [`Input::Opened`].
    Connecting,
    /// The join with this ref, sent at `sent`, is in flight; room messages are held back.
    Joining { join_ref: u64, sent: Instant },
    /// The room is joined.
    Joined,
    /// Gave up.
    Fatal,
}

/// A sans-IO Phoenix channel client: one room on one WebSocket, with reconnects.
///
/// `I` is the set of messages the portal sends (e.g. [`crate::portal::messages::ClientIngress`]),
/// `E` the set this node sends.
///
/// # Driving it
/// Construction emits [`Event::OpenSocket`]. After every call to [`Self::handle_input`],
/// [`Self::handle_timeout`] or [`Self::send`], drain [`Self::poll_transmit`] (text frames for the
/// current socket, in order) and [`Self::poll_event`], then ask [`Self::poll_timeout`] when to
/// call [`Self::handle_timeout`] next. Time must never go backwards; calling `handle_timeout`
/// early is a no-op.
///
/// # Behaviour
/// - On [`Input::Opened`] it joins its room; every message sent before the join is confirmed
///   waits, in order, and goes out right after the `ok` reply. If the socket drops while the
///   join is pending, the join is forgotten and sent afresh on the next socket, so the queue is
///   never blocked by a join that will not be answered.
/// - A heartbeat goes out every [`ChannelConfig::heartbeat_interval`]; one unanswered for
///   [`ChannelConfig::heartbeat_timeout`] closes the socket and reconnects, and so does a join
///   unanswered for a whole interval.
/// - Connecting is the runtime's job: it must report [`Input::Closed`] when an attempt fails
///   and bound how long one may take.
/// - Reconnects wait an exponential, capped, jittered backoff (jitter from the seed), reset
///   after a successful join.
/// - [`ConnectionError::InvalidPeerCertificate`] is fatal: [`Event::Fatal`], no retry.
pub struct PhoenixChannel<I, E> {
    config: ChannelConfig,
    state: State,
    backoff: Backoff,
    next_ref: u64,
    timers: [Option<Instant>; 2],
    /// The heartbeat waiting for its reply, and when it was sent.
    heartbeat_in_flight: Option<(u64, Instant)>,
    /// Room messages waiting for the join, in order.
    held_back: VecDeque<(u64, String)>,
    /// Refs of sent requests not yet answered.
    in_flight: BTreeSet<u64>,
    transmits: VecDeque<String>,
    events: VecDeque<Event<I>>,
    _egress: PhantomData<fn(E)>,
}

impl<I, E> fmt::Debug for PhoenixChannel<I, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhoenixChannel")
            .field("topic", &self.config.topic)
            .field("state", &self.state)
            .field("held_back", &self.held_back.len())
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl<I: Message, E: Message> PhoenixChannel<I, E> {
    /// A channel that asks to connect right away; backoff jitter comes from `seed`.
    pub fn new(config: ChannelConfig, seed: u64) -> Self {
        let backoff = Backoff::new(config.backoff, ChaCha20Rng::seed_from_u64(seed));
        let mut channel = Self {
            config,
            state: State::Connecting,
            backoff,
            next_ref: 1,
            timers: [None; 2],
            heartbeat_in_flight: None,
            held_back: VecDeque::new(),
            in_flight: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            _egress: PhantomData,
        };
        channel.events.push_back(Event::OpenSocket);
        channel
    }

    /// The room this channel joins.
    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    /// Whether the room is joined (messages go out immediately).
    pub fn is_joined(&self) -> bool {
        self.state == State::Joined
    }

    /// Sends a message to the portal, or holds it back until the room is joined.
    ///
    /// Its reply arrives as [`Event::Reply`] with the returned id. Messages sent after
    /// [`Event::Fatal`] are dropped.
    pub fn send(&mut self, message: &E) -> Result<RequestId, ProtocolError> {
        let reference = self.next_ref();
        let frame =
            Frame::message(&self.config.topic, message, Some(reference)).map_err(|source| {
                ProtocolError::Encode {
                    event: message.event(),
                    source,
                }
            })?;
        let text = frame.to_text();
        match self.state {
            State::Joined => {
                self.in_flight.insert(reference);
                self.transmits.push_back(text);
            }
            State::Backoff | State::Connecting | State::Joining { .. } => {
                tracing::debug!(event = message.event(), "Holding message back until joined");
                if self.held_back.len() == MAX_HELD_BACK {
                    if let Some((oldest, _)) = self.held_back.pop_front() {
                        tracing::debug!("Too many messages held back: dropped the oldest");
                        self.events.push_back(Event::Reply {
                            id: RequestId(oldest),
                            result: Err(ReplyError::HeldBackTooLong),
                        });
                    }
                }
                self.held_back.push_back((reference, text));
            }
            State::Fatal => {
                tracing::debug!(event = message.event(), "Dropping message: channel is dead");
            }
        }
        Ok(RequestId(reference))
    }

    /// Feeds what happened on the socket.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Opened => self.on_opened(now),
            Input::Text(text) => self.on_text(now, text),
            Input::Closed(error) => self.on_closed(now, error),
        }
    }

    /// The host's network changed (its address, or its route to the portal). The socket may
    /// have been made from an address that is gone, and then nothing it sends arrives, which
    /// only an unanswered heartbeat would reveal, tens of seconds later. So the socket is
    /// closed and a new one opened at once, without backoff: the change, not the portal, is
    /// why it is closed. A session waiting to reconnect tries now.
    pub fn handle_network_change(&mut self, now: Instant) {
        match self.state {
            State::Fatal => return,
            State::Backoff => {}
            State::Connecting | State::Joining { .. } | State::Joined => {
                self.disconnect(now, DisconnectReason::NetworkChanged);
            }
        }
        self.backoff.reset();
        self.timers[Timer::Reconnect as usize] = Some(now);
    }

    /// Runs every expired timer; a call before any is due does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in TIMERS {
            let slot = &mut self.timers[timer as usize];
            match *slot {
                Some(at) if at <= now => *slot = None,
                Some(_) | None => continue,
            }
            match timer {
                Timer::Reconnect => self.on_reconnect_timer(),
                Timer::Heartbeat => self.on_heartbeat_timer(now),
            }
        }
    }

    /// When to call [`Self::handle_timeout`] next, and for what.
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        TIMERS
            .iter()
            .filter_map(|&t| self.timers[t as usize].map(|at| (at, t)))
            .min()
    }

    /// The next text frame to send on the current socket.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event<I>> {
        self.events.pop_front()
    }

    fn next_ref(&mut self) -> u64 {
        let r = self.next_ref;
        self.next_ref += 1;
        r
    }

    fn on_opened(&mut self, now: Instant) {
        if self.state != State::Connecting {
            tracing::debug!(state = ?self.state, "Ignoring socket opened in this state");
            return;
        }
        tracing::debug!(topic = %self.config.topic, "Socket open, joining");
        self.join(now);
        self.timers[Timer::Heartbeat as usize] = Some(now + self.config.heartbeat_interval);
    }

    fn join(&mut self, now: Instant) {
        let join_ref = self.next_ref();
        match Frame::with_payload(
            &self.config.topic,
            PHX_JOIN,
            &self.config.join_payload,
            Some(join_ref),
        ) {
            Ok(frame) => self.transmits.push_back(frame.to_text()),
            Err(error) => tracing::warn!(%error, "Cannot encode the join payload"),
        }
        self.state = State::Joining {
            join_ref,
            sent: now,
        };
    }

    fn on_text(&mut self, now: Instant, text: &str) {
        match self.state {
            State::Joining { .. } | State::Joined => {}
            State::Backoff | State::Connecting | State::Fatal => {
                tracing::trace!("Ignoring frame without a live socket");
                return;
            }
        }
        let frame = match Frame::parse(text) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(%error, "Dropping malformed frame");
                return;
            }
        };
        if frame.event == PHX_REPLY {
            self.on_reply(now, &frame);
            return;
        }
        if frame.topic != self.config.topic {
            tracing::debug!(topic = %frame.topic, event = %frame.event, "Ignoring frame for another topic");
            return;
        }
        if frame.event == PHX_ERROR || frame.event == PHX_CLOSE {
            tracing::debug!(event = %frame.event, "Room lost, joining again");
            self.fail_in_flight();
            self.join(now);
            return;
        }
        match I::from_frame(&frame) {
            Ok(Some(message)) => self.events.push_back(Event::Message(message)),
            Ok(None) => tracing::debug!(event = %frame.event, "Ignoring unknown event"),
            Err(error) => tracing::debug!(%error, "Dropping message"),
        }
    }

    fn on_reply(&mut self, now: Instant, frame: &Frame) {
        let Some(reference) = frame.reference else {
            tracing::debug!("Ignoring reply without ref");
            return;
        };
        let reply = frame.as_reply();
        if let State::Joining { join_ref, .. } = self.state {
            if join_ref == reference {
                match reply {
                    Ok(reply) if reply.status == ReplyStatus::Ok => self.on_joined(),
                    Ok(reply) => {
                        self.disconnect(now, DisconnectReason::JoinRejected(reply.reason()))
                    }
                    Err(error) => {
                        self.disconnect(now, DisconnectReason::JoinRejected(error.to_string()))
                    }
                }
                return;
            }
        }
        if let Some((heartbeat, sent)) = self.heartbeat_in_flight {
            if heartbeat == reference {
                self.heartbeat_in_flight = None;
                self.timers[Timer::Heartbeat as usize] =
                    Some(sent + self.config.heartbeat_interval);
                return;
            }
        }
        if !self.in_flight.remove(&reference) {
            tracing::debug!(reference, "Ignoring reply to an unknown ref");
            return;
        }
        let result = match reply {
            Ok(reply) => match reply.status {
                ReplyStatus::Ok => Ok(reply.response),
                ReplyStatus::Error => Err(ReplyError::Rejected {
                    reason: reply.reason(),
                }),
            },
            Err(error) => Err(ReplyError::Rejected {
                reason: error.to_string(),
            }),
        };
        self.events.push_back(Event::Reply {
            id: RequestId(reference),
            result,
        });
    }

    fn on_joined(&mut self) {
        tracing::debug!(topic = %self.config.topic, held_back = self.held_back.len(), "Joined");
        self.state = State::Joined;
        self.backoff.reset();
        self.events.push_back(Event::Connected);
        while let Some((reference, text)) = self.held_back.pop_front() {
            self.in_flight.insert(reference);
            self.transmits.push_back(text);
        }
    }

    fn on_closed(&mut self, now: Instant, error: &ConnectionError) {
        match self.state {
            State::Connecting | State::Joining { .. } | State::Joined => {}
            State::Backoff | State::Fatal => {
                tracing::trace!(%error, "Ignoring close of a socket already given up");
                return;
            }
        }
        match error {
            ConnectionError::InvalidPeerCertificate(reason) => {
                tracing::error!(%reason, "The portal's certificate is invalid; not retrying");
                self.fail_in_flight();
                self.held_back.clear();
                self.transmits.clear();
                self.timers = [None; 2];
                self.state = State::Fatal;
                self.events.push_back(Event::Fatal {
                    error: PortalError::InvalidPeerCertificate(reason.clone()),
                });
            }
            ConnectionError::Http { .. }
            | ConnectionError::Closed { .. }
            | ConnectionError::Io(_) => {
                self.lost(now, DisconnectReason::Connection(error.clone()));
            }
        }
    }

    fn on_reconnect_timer(&mut self) {
        if self.state != State::Backoff {
            return;
        }
        tracing::debug!(attempt = self.backoff.attempts(), "Reconnecting");
        self.state = State::Connecting;
        self.events.push_back(Event::OpenSocket);
    }

    fn on_heartbeat_timer(&mut self, now: Instant) {
        match self.state {
            State::Joining { .. } | State::Joined => {}
            State::Backoff | State::Connecting | State::Fatal => return,
        }
        if let State::Joining { sent, .. } = self.state {
            if now.saturating_duration_since(sent) >= self.config.heartbeat_interval {
                self.disconnect(now, DisconnectReason::JoinTimeout);
                return;
            }
        }
        if self.heartbeat_in_flight.is_some() {
            self.disconnect(now, DisconnectReason::HeartbeatTimeout);
            return;
        }
        let reference = self.next_ref();
        self.heartbeat_in_flight = Some((reference, now));
        self.transmits
            .push_back(Frame::heartbeat(reference).to_text());
        let wait = self
            .config
            .heartbeat_timeout
            .min(self.config.heartbeat_interval);
        self.timers[Timer::Heartbeat as usize] = Some(now + wait);
    }

    /// Closes the current socket ourselves, then reconnects.
    fn disconnect(&mut self, now: Instant, reason: DisconnectReason) {
        self.events.push_back(Event::CloseSocket);
        self.lost(now, reason);
    }

    /// The socket is gone: forget the pending join and every in-flight request, back off.
    fn lost(&mut self, now: Instant, reason: DisconnectReason) {
        let delay = self.backoff.next_delay();
        tracing::debug!(%reason, ?delay, "Disconnected from the portal");
        self.fail_in_flight();
        self.transmits.clear();
        self.heartbeat_in_flight = None;
        self.timers[Timer::Heartbeat as usize] = None;
        self.timers[Timer::Reconnect as usize] = Some(now + delay);
        self.state = State::Backoff;
        self.events.push_back(Event::Disconnected { reason });
    }

    fn fail_in_flight(&mut self) {
        for reference in std::mem::take(&mut self.in_flight) {
            self.events.push_back(Event::Reply {
                id: RequestId(reference),
                result: Err(ReplyError::Disconnected),
            });
        }
    }
}

#[cfg(test)]
mod tests;
