//! The protocol the nodes and the portal share: typed identifiers, ICE candidates as they are
//! signalled, and the control plane's frames and messages.
//!
//! Nothing here does I/O or keeps time: the portal and the nodes' sans-IO core both build on
//! these types, and everything that decodes untrusted input here rejects it with a typed error.

pub mod candidate;
pub mod ids;
pub mod portal;

pub use candidate::{CandidateError, CandidateKind, IceCandidate};
