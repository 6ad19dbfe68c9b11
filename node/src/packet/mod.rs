//! IP packets as the tunnel sees them.
