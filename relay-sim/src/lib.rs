//! relay-sim
