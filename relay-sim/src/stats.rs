//! Counters of what the server did with its input, readable at any time.

/// Running totals since the server started. Counters only grow.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams from clients that were neither STUN nor ChannelData, or did not decode.
    pub malformed: u64,
    /// STUN requests answered (success or error).
    pub requests: u64,
    /// Error responses sent.
    pub error_responses: u64,
    /// Allocations that were created.
    pub allocations_created: u64,
    /// Allocations deleted by the client (Refresh with lifetime 0).
    pub allocations_deleted: u64,
    /// Allocations that ran out of lifetime.
    pub allocations_expired: u64,
    /// ChannelData messages relayed from a client to a peer.
    pub channel_data_from_clients: u64,
    /// Send indications relayed from a client to a peer.
    pub send_indications: u64,
    /// Peer datagrams relayed to clients as ChannelData.
    pub channel_data_to_clients: u64,
    /// Peer datagrams relayed to clients as Data indications.
    pub data_indications: u64,
    /// Relayed datagrams that stayed inside the relay (one allocation to another).
    pub relayed_internally: u64,
    /// Datagrams dropped because the peer had no permission.
    pub dropped_no_permission: u64,
    /// Client datagrams dropped because the sender has no allocation.
    pub dropped_no_allocation: u64,
    /// ChannelData dropped because the channel is not bound (or has expired).
    pub dropped_unbound_channel: u64,
    /// CreatePermission and ChannelBind requests refused (403), and Send indications dropped,
    /// because a peer address is denied ([`crate::DeniedRange`]).
    pub forbidden_peers: u64,
    /// Allocates refused (486) because the user holds
    /// [`crate::server::MAX_ALLOCATIONS_PER_USER`] allocations.
    pub allocation_quota_refusals: u64,
    /// CreatePermission and ChannelBind requests refused (508) for
    /// [`crate::server::MAX_PERMISSIONS_PER_ALLOCATION`] or
    /// [`crate::server::MAX_PEERS_PER_CREATE_PERMISSION`].
    pub permission_quota_refusals: u64,
    /// Authentic requests refused (401) because their credentials had expired.
    pub expired_credentials: u64,
    /// Requests that moved an allocation to renewed credentials of the same user.
    pub credentials_renewed: u64,
    /// Other client datagrams dropped (indications that are not Send, stray responses, oversize).
    pub dropped_other: u64,
}
