//! Why a request is refused, and the STUN error code each reason maps to.

use stun_codec::rfc5389::attributes::ErrorCode;
use stun_codec::rfc5389::errors::{BadRequest, StaleNonce, Unauthorized, UnknownAttribute};
use stun_codec::rfc5766::errors::{
    AllocationMismatch, AllocationQuotaReached, Forbidden as ForbiddenCode, InsufficientCapacity,
    UnsupportedTransportProtocol, WrongCredentials,
};
use stun_codec::rfc8656::errors::{AddressFamilyNotSupported, PeerAddressFamilyMismatch};
use stun_codec::AttributeType;

/// A request the server answers with an error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// 400: a required attribute is missing or a value is invalid.
    #[error("400 bad request: {0}")]
    BadRequest(&'static str),
    /// 401: no, expired or wrong credentials (answered with REALM and NONCE).
    #[error("401 unauthorized: {0}")]
    Unauthorized(&'static str),
    /// 403: a peer address the relay does not serve (see [`crate::DeniedRange`]).
    #[error("403 forbidden: {0}")]
    Forbidden(&'static str),
    /// 420: comprehension-required attributes the server does not understand.
    #[error("420 unknown attributes {0:?}")]
    UnknownAttributes(Vec<u16>),
    /// 437: no allocation on this 5-tuple, or an Allocate for one that exists.
    #[error("437 allocation mismatch: {0}")]
    AllocationMismatch(&'static str),
    /// 438: the NONCE is not (or no longer) valid (answered with a new NONCE).
    #[error("438 stale nonce")]
    StaleNonce,
    /// 440: the requested address family is not served (IPv6).
    #[error("440 address family not supported")]
    AddressFamilyNotSupported,
    /// 441: the request uses another username than the one that created the allocation.
    #[error("441 wrong credentials")]
    WrongCredentials,
    /// 442: REQUESTED-TRANSPORT is not UDP.
    #[error("442 unsupported transport protocol {0}")]
    UnsupportedTransport(u8),
    /// 443: a peer address of another family than the relayed address.
    #[error("443 peer address family mismatch")]
    PeerAddressFamilyMismatch,
    /// 486: the user holds [`crate::server::MAX_ALLOCATIONS_PER_USER`] allocations already.
    #[error("486 allocation quota reached")]
    AllocationQuotaReached,
    /// 508: allocation or permission limit reached, too many peers in one request, no free relay
    /// port, or an unknown reservation token.
    #[error("508 insufficient capacity: {0}")]
    InsufficientCapacity(&'static str),
}

impl RequestError {
    /// The numeric STUN error code.
    pub fn code(&self) -> u16 {
        self.error_code().code()
    }

    /// The ERROR-CODE attribute for the response.
    pub(crate) fn error_code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => BadRequest.into(),
            Self::Unauthorized(_) => Unauthorized.into(),
            Self::Forbidden(_) => ForbiddenCode.into(),
            Self::UnknownAttributes(_) => UnknownAttribute.into(),
            Self::AllocationMismatch(_) => AllocationMismatch.into(),
            Self::StaleNonce => StaleNonce.into(),
            Self::AddressFamilyNotSupported => AddressFamilyNotSupported.into(),
            Self::WrongCredentials => WrongCredentials.into(),
            Self::UnsupportedTransport(_) => UnsupportedTransportProtocol.into(),
            Self::PeerAddressFamilyMismatch => PeerAddressFamilyMismatch.into(),
            Self::AllocationQuotaReached => AllocationQuotaReached.into(),
            Self::InsufficientCapacity(_) => InsufficientCapacity.into(),
        }
    }

    pub(crate) fn unknown(types: &[AttributeType]) -> Self {
        Self::UnknownAttributes(types.iter().map(|t| t.as_u16()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let cases = [
            (RequestError::BadRequest("x"), 400),
            (RequestError::Unauthorized("x"), 401),
            (RequestError::Forbidden("x"), 403),
            (RequestError::UnknownAttributes(vec![1]), 420),
            (RequestError::AllocationMismatch("x"), 437),
            (RequestError::StaleNonce, 438),
            (RequestError::AddressFamilyNotSupported, 440),
            (RequestError::WrongCredentials, 441),
            (RequestError::UnsupportedTransport(6), 442),
            (RequestError::PeerAddressFamilyMismatch, 443),
            (RequestError::AllocationQuotaReached, 486),
            (RequestError::InsufficientCapacity("x"), 508),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e}");
        }
    }
}
