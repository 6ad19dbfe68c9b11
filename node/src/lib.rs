//! The client and gateway node.
//!
//! The core is sans-IO: [`Node`] owns the connections to remote peers (WireGuard over a path found
//! by ICE) and is driven with explicit time. Runtimes feed it datagrams and IP packets and carry
//! out what it asks for.

pub mod ids;
pub mod packet;
