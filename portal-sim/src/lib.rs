//! portal-sim
