//! TLS for `wss://`: rustls (feature `rustls`, the default) with Mozilla's roots or a
//! custom root store, or the platform's TLS (feature `native-tls`).

#[cfg(feature = "rustls")]
use std::sync::Arc;

#[cfg(any(feature = "rustls", feature = "native-tls"))]
use tokio_tungstenite::Connector;

use crate::error::ClientError;

/// A root certificate to trust, e.g. a private CA's.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Certificate({} bytes DER)", self.der.len())
    }
}

impl Certificate {
    /// A certificate in DER.
    pub fn from_der(der: impl Into<Vec<u8>>) -> Certificate {
        Certificate { der: der.into() }
    }

    /// Every certificate in a PEM bundle (at least one).
    #[cfg(any(feature = "rustls", feature = "native-tls"))]
    pub fn from_pem(pem: &[u8]) -> Result<Vec<Certificate>, ClientError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        let certs = CertificateDer::pem_slice_iter(pem)
            .map(|c| {
                c.map(|c| Certificate::from_der(c.to_vec()))
                    .map_err(|e| ClientError::Tls(format!("bad PEM certificate: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if certs.is_empty() {
            return Err(ClientError::Tls("no certificate in the PEM data".into()));
        }
        Ok(certs)
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

/// Which TLS implementation `wss://` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsBackend {
    /// rustls with the ring provider (feature `rustls`).
    Rustls,
    /// The platform's TLS: OpenSSL on Linux, Secure Transport, SChannel (feature
    /// `native-tls`).
    NativeTls,
}

/// TLS settings gathered by the builder.
#[derive(Clone)]
pub(crate) struct TlsSettings {
    pub roots: Vec<Certificate>,
    pub built_in_roots: bool,
    pub backend: Option<TlsBackend>,
    #[cfg(feature = "rustls")]
    pub rustls: Option<Arc<rustls::ClientConfig>>,
    #[cfg(feature = "native-tls")]
    pub native: Option<native_tls::TlsConnector>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            roots: Vec::new(),
            built_in_roots: true,
            backend: None,
            #[cfg(feature = "rustls")]
            rustls: None,
            #[cfg(feature = "native-tls")]
            native: None,
        }
    }
}

/// What the connection uses: built once, when the client is built.
#[derive(Clone)]
pub(crate) enum Tls {
    /// No TLS backend compiled in: `wss://` is refused.
    #[cfg(not(any(feature = "rustls", feature = "native-tls")))]
    None,
    #[cfg(any(feature = "rustls", feature = "native-tls"))]
    Ready(Connector),
}

impl TlsSettings {
    /// Builds the connector.
    #[cfg(not(any(feature = "rustls", feature = "native-tls")))]
    pub fn build(&self) -> Result<Tls, ClientError> {
        if self.backend.is_some() || !self.roots.is_empty() {
            return Err(ClientError::Tls(
                "TLS settings given, but neither the `rustls` nor the `native-tls` feature is on"
                    .into(),
            ));
        }
        Ok(Tls::None)
    }

    /// Builds the connector.
    #[cfg(any(feature = "rustls", feature = "native-tls"))]
    pub fn build(&self) -> Result<Tls, ClientError> {
        #[cfg(feature = "native-tls")]
        let native_default = self.native.is_some() || !cfg!(feature = "rustls");
        #[cfg(not(feature = "native-tls"))]
        let native_default = false;
        let backend = self.backend.unwrap_or(if native_default {
            TlsBackend::NativeTls
        } else {
            TlsBackend::Rustls
        });
        match backend {
            #[cfg(feature = "rustls")]
            TlsBackend::Rustls => self.rustls_connector(),
            #[cfg(feature = "native-tls")]
            TlsBackend::NativeTls => self.native_connector(),
            #[allow(unreachable_patterns)]
            other => Err(ClientError::Tls(format!(
                "{other:?} asked for, but its feature is off"
            ))),
        }
    }

    #[cfg(feature = "rustls")]
    fn rustls_connector(&self) -> Result<Tls, ClientError> {
        if let Some(cfg) = &self.rustls {
            return Ok(Tls::Ready(Connector::Rustls(cfg.clone())));
        }
        let mut roots = rustls::RootCertStore::empty();
        if self.built_in_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for c in &self.roots {
            roots
                .add(rustls_pki_types::CertificateDer::from(c.der.clone()))
                .map_err(|e| ClientError::Tls(format!("bad root certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Tls(
                "no root certificates: add one or keep the built-in roots".into(),
            ));
        }
        // An explicit provider: never depends on which rustls crypto features other
        // crates in the build turned on.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls::Ready(Connector::Rustls(Arc::new(config))))
    }

    #[cfg(feature = "native-tls")]
    fn native_connector(&self) -> Result<Tls, ClientError> {
        if let Some(c) = &self.native {
            return Ok(Tls::Ready(Connector::NativeTls(c.clone())));
        }
        let mut b = native_tls::TlsConnector::builder();
        b.disable_built_in_roots(!self.built_in_roots);
        for c in &self.roots {
            let cert = native_tls::Certificate::from_der(&c.der)
                .map_err(|e| ClientError::Tls(format!("bad root certificate: {e}")))?;
            b.add_root_certificate(cert);
        }
        let connector = b.build().map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(Tls::Ready(Connector::NativeTls(connector)))
    }
}

#[cfg(all(test, feature = "rustls"))]
mod tests {
    use super::*;

    #[test]
    fn pem_bundles_parse_and_garbage_is_refused() {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let pem = format!("{}{}", ca.cert.pem(), ca.cert.pem());
        let certs = Certificate::from_pem(pem.as_bytes()).expect("two certificates");
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].der(), ca.cert.der().as_ref());
        assert!(matches!(
            Certificate::from_pem(b"not a certificate"),
            Err(ClientError::Tls(_))
        ));
        let only_custom = TlsSettings {
            roots: certs,
            built_in_roots: false,
            ..TlsSettings::default()
        };
        assert!(only_custom.build().is_ok());
        let nothing = TlsSettings {
            built_in_roots: false,
            ..TlsSettings::default()
        };
        assert!(matches!(nothing.build(), Err(ClientError::Tls(_))));
    }
}
