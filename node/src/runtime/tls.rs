//! The byte stream to the portal: TCP, and TLS over it for `wss://` (rustls).
//!
//! A certificate that fails verification is reported as
//! [`ConnectionError::InvalidPeerCertificate`], which the portal session treats as fatal: the
//! clock or the trust store is wrong, or something intercepts the connection, and retrying
//! would only hide it.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use node_core::portal::ConnectionError;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::Connector;

/// Opens TCP to the portal, and TLS over it when a TLS configuration is given.
pub struct PortalConnector {
    /// `host:port` to connect to.
    pub addr: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl PortalConnector {
    /// Plain TCP (`ws://`).
    pub fn plain(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            tls: None,
        }
    }

    /// TLS to `host` (the name the certificate must carry) at `addr`, trusting `roots`.
    pub fn tls(addr: impl Into<String>, host: &str, roots: RootCertStore) -> anyhow::Result<Self> {
        // ring, as the rest of the build uses: rustls deprecates it for lacking post-quantum key
        // exchange (X25519 it has), which aws-lc-rs offers at the price of cmake and a second
        // C crypto library in every build.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("no TLS protocol version available")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_owned())
            .with_context(|| format!("{host:?} is not a TLS server name"))?;
        Ok(Self {
            addr: addr.into(),
            tls: Some((TlsConnector::from(Arc::new(config)), name)),
        })
    }
}

impl Connector for PortalConnector {
    type Stream = PortalStream;

    fn connect(&self) -> impl Future<Output = io::Result<PortalStream>> {
        let addr = self.addr.clone();
        let tls = self.tls.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            // Control messages are small and answered at once (a connection request, then the
            // flow): Nagle would hold each behind the portal's delayed ACK of the one before.
            tcp.set_nodelay(true)?;
            match tls {
                None => Ok(PortalStream::Plain(tcp)),
                Some((connector, name)) => {
                    let tls = connector.connect(name, tcp).await?;
                    Ok(PortalStream::Tls(Box::new(tls)))
                }
            }
        }
    }

    fn connection_error(&self, error: io::Error) -> ConnectionError {
        match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(reason)) => {
                ConnectionError::InvalidPeerCertificate(format!("{reason:?}"))
            }
            _ => ConnectionError::Io(error.to_string()),
        }
    }
}

/// The trust anchors: the system's store, plus the certificates of `ca_file` (PEM) for a
/// private certificate authority.
pub fn root_certificates(ca_file: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping part of the system's trust store");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, "system trust anchors");
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} holds no valid PEM certificate", path.display()))?;
        anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("{}: not a CA certificate", path.display()))?;
        }
    }
    Ok(roots)
}

/// TCP, or TLS over TCP.
#[derive(Debug)]
pub enum PortalStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for PortalStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PortalStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
