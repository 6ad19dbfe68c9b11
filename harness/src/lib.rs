//! The simulated world the node is proven in.
//!
//! [`memnet`] is an in-memory network with NAT boxes that drives nodes with simulated time and
//! jumps from deadline to deadline; it carries the connection-core tests and the `pair` command.
//! [`turmoil_net`] is the network of the whole deployment in turmoil (NAT hosts, links, faults),
//! and [`sim`] the deployment on it, the reference model and the cases (the `run` command). Both
//! networks' NAT boxes keep their mappings in a [`nat::NatTable`].

pub mod memnet;
pub mod nat;
pub mod sim;
pub mod turmoil_net;

/// The Unix time (seconds) at which every simulation starts: memnet's relays and their
/// credentials count from it, and so do the turmoil network's clocks unless
/// [`turmoil_net::SimSettings`] says otherwise.
pub const SIM_EPOCH_UNIX_SECS: u64 = 1_800_000_000;
