//! The node's side of the control-plane session, and the protocol it speaks (re-exported from
//! `node-proto`).
//!
//! [`PhoenixChannel`] is the connection state machine a runtime drives: it joins the node's
//! room, heartbeats, holds messages back until the join is confirmed and reconnects with a
//! seeded, capped exponential backoff.

mod backoff;
mod channel;

pub use backoff::{Backoff, BackoffConfig};
pub use channel::{
    ChannelConfig, ConnectionError, DisconnectReason, Event, Input, PhoenixChannel, ReplyError,
    RequestId, Timer, HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, MAX_HELD_BACK,
};
pub use node_proto::portal::*;
