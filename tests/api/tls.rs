//! TLS served by the broker itself (`server.tls_cert_file`, `server.tls_key_file`): HTTPS
//! and `wss://` on the one port, with a test certificate (tests/fixtures: a CA and a
//! `localhost` certificate it signed, made with openssl for these tests only).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{chat, spawn_app_with, WsClient};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// An HTTP client that trusts the test CA only.
fn client() -> awc::Client {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(format!("{FIXTURES}/tls-ca.pem"))
        .expect("ca")
    {
        roots.add(cert.expect("cert")).expect("root");
    }
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(Arc::new(config)))
        .timeout(Duration::from_secs(10))
        .finish()
}

#[actix_web::test]
async fn the_broker_serves_https_and_wss_with_its_certificate() {
    let app = spawn_app_with(|s| {
        s.server.tls_cert_file = format!("{FIXTURES}/tls-cert.pem");
        s.server.tls_key_file = format!("{FIXTURES}/tls-key.pem");
    })
    .await;
    let port = app.base.rsplit(':').next().expect("port").to_owned();
    let https = format!("https://localhost:{port}");
    let wss = format!("wss://localhost:{port}");

    let resp = client()
        .get(format!("{https}/health"))
        .send()
        .await
        .expect("https");
    assert_eq!(resp.status().as_u16(), 200);

    let connect = |user: &str| {
        let url = format!("{wss}/ws");
        let token = app.token(user);
        async move {
            let (_, framed) = client()
                .ws(url)
                .bearer_auth(token)
                .connect()
                .await
                .expect("wss upgrade");
            let mut ws = WsClient::from_framed(framed);
            assert_eq!(ws.recv().await["type"], "connected");
            ws
        }
    };
    let mut alice = connect("alice").await;
    let mut bob = connect("bob").await;
    let ack = alice.request(chat("bob", "t1", "over TLS")).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let got = bob.recv_type("chat_message").await;
    assert_eq!(got["payload"]["content"], "over TLS");
    bob.send(json!({"type": "heartbeat", "id": "h"})).await;
    assert_eq!(bob.recv_type("heartbeat").await["id"], "h");

    // Plain HTTP on the TLS port gets no answer it could use.
    let plain = awc::Client::builder()
        .timeout(Duration::from_secs(3))
        .finish()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await;
    assert!(plain.map(|r| r.status().as_u16() != 200).unwrap_or(true));
}

#[actix_web::test]
async fn a_certificate_without_its_key_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = crate::helpers::test_settings(dir.path());
    s.server.tls_cert_file = format!("{FIXTURES}/tls-cert.pem");
    let config = include_str!("../../config.toml");
    let env = [(
        "SWITCHBOARD__SERVER__TLS_CERT_FILE".to_owned(),
        s.server.tls_cert_file.clone(),
    )];
    let err = switchboard::Settings::from_sources(config, env.into_iter()).expect_err("refused");
    assert!(err.to_string().contains("tls_key_file"), "{err}");
    // A key that is not the certificate's: the broker does not start.
    s.server.tls_key_file = format!("{FIXTURES}/es256-private.pem");
    let built = switchboard::Application::build(s).await;
    assert!(built.is_err(), "a mismatched key must stop the broker");
}
