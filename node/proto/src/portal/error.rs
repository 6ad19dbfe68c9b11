//! Errors of the control plane.

/// A frame or payload from the other side was rejected.
///
/// These never end the connection on their own: the offending frame is dropped and the caller
/// decides whether to log it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The text is larger than [`crate::portal::frame::MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Length of the rejected text.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The text is not JSON, or not an object with `topic`, `event`, `payload` and `ref`.
    #[error("malformed frame")]
    MalformedFrame(#[source] serde_json::Error),
    /// The payload of a known event does not match its schema.
    #[error("invalid payload for event `{event}`")]
    InvalidPayload {
        /// The event whose payload was rejected.
        event: String,
        /// What was wrong with it.
        #[source]
        source: serde_json::Error,
    },
    /// A `phx_reply` payload lacks a valid `status`.
    #[error("invalid reply payload")]
    InvalidReply(#[source] serde_json::Error),
    /// A message could not be turned into JSON (a bug on our side, never the peer's input).
    #[error("cannot encode `{event}`")]
    Encode {
        /// The event being encoded.
        event: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A condition that ends a [`crate::portal::PhoenixChannel`] for good: retrying cannot help, so
/// the node stops and tells the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortalError {
    /// The portal presented a certificate that failed verification. Either the system clock or
    /// the trust store is wrong, or something is intercepting the connection; retrying would only
    /// hide that.
    #[error("the portal's TLS certificate is invalid: {0}")]
    InvalidPeerCertificate(String),
}
