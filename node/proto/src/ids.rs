//! Typed identifiers. Every id is a newtype so a client id can never be passed where a gateway id
//! is expected; they display with a one-letter prefix so logs stay readable (`cid=c3`).

use std::fmt;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

id!(
    /// A user's device running the client.
    ClientId,
    "c"
);
id!(
    /// A gateway in front of private resources.
    GatewayId,
    "g"
);
id!(
    /// A private resource (a host or a CIDR range) behind a gateway.
    ResourceId,
    "r"
);
id!(
    /// A TURN relay announced by the portal.
    RelayId,
    "t"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_with_prefix() {
        assert_eq!(ClientId(3).to_string(), "c3");
        assert_eq!(GatewayId(1).to_string(), "g1");
        assert_eq!(ResourceId(7).to_string(), "r7");
        assert_eq!(RelayId(2).to_string(), "t2");
    }
}
