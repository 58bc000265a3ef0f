//! TLS served by the broker itself (`server.tls_cert_file`, `server.tls_key_file`): the
//! rustls server configuration, with the ring provider.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The server configuration from a PEM certificate chain and its key.
pub fn server_config(cert_file: &str, key_file: &str) -> Result<ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("server.tls_cert_file `{cert_file}`: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("server.tls_cert_file `{cert_file}`: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "server.tls_cert_file `{cert_file}` holds no certificate"
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("server.tls_key_file `{key_file}`: {e}"))?;
    // ring, not the default aws-lc: it builds without cmake; its provider is marked
    // deprecated only for lacking post-quantum key exchange.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("server.tls_cert_file and server.tls_key_file: {e}"))?;
    // WebSocket upgrades are HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
