//! TLS in one place: the process-wide rustls crypto provider (aws-lc) and
//! the server's certificate set-up. Clients in this crate (the worker, the
//! bench) call [`install_crypto_provider`] too.

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::TlsConfig;
use crate::error::{Error, Result};

/// rustls with aws-lc everywhere (tonic, reqwest, the AWS SDK); installed
/// once, since two providers in one process make rustls refuse to choose.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The gRPC listener's TLS: its certificate chain and key, and with
/// `client_ca` mutual TLS (every client must present a certificate it signed).
pub(crate) fn server_config(tls: &TlsConfig) -> Result<ServerTlsConfig> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| Error::InvalidArgument(format!("tls: reading {}: {e}", path.display())))
    };
    let mut config =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
    if let Some(ca) = &tls.client_ca {
        // With a client CA every client must present a certificate it signed.
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(config)
}
