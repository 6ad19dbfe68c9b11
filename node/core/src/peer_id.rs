//! What the node needs of the type that names a remote peer.

use std::fmt;

use crate::ids::{ClientId, GatewayId};

/// The id of a remote peer: a gateway's connections are keyed by [`ClientId`], a client's by
/// [`GatewayId`].
pub trait PeerId: Copy + Ord + fmt::Display + fmt::Debug {
    /// The span a connection to this peer logs in, with the peer under its conventional field.
    fn span(&self) -> tracing::Span;
}

impl PeerId for ClientId {
    fn span(&self) -> tracing::Span {
        tracing::info_span!("connection", cid = %self)
    }
}

impl PeerId for GatewayId {
    fn span(&self) -> tracing::Span {
        tracing::info_span!("connection", gid = %self)
    }
}
