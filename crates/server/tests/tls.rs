//! TLS (rustls): a server with a self-signed certificate answers a client that trusts it, and
//! refuses plain-text HTTP/2 and clients that do not trust the certificate.

use gantry_api::gantry::v1 as pb;
use gantry_server::{client, Config, Server, ServerError, TlsIdentity};

fn self_signed() -> TlsIdentity {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    TlsIdentity {
        cert_pem: ck.cert.pem().into_bytes(),
        key_pem: ck.signing_key.serialize_pem().into_bytes(),
    }
}

async fn tls_server(dir: &std::path::Path) -> (gantry_server::Running, Vec<u8>) {
    let id = self_signed();
    let ca = id.cert_pem.clone();
    let mut config = Config::new(dir);
    config.tls = Some(id);
    (Server::start(config).await.expect("start"), ca)
}

#[tokio::test]
async fn a_client_that_trusts_the_certificate_is_served_over_tls() {
    let dir = tempfile::tempdir().expect("tmp");
    let (running, ca) = tls_server(dir.path()).await;
    for host in ["127.0.0.1", "localhost"] {
        let server = format!("{host}:{}", running.addr.port());
        let ch = client::connect(&server, Some(&ca)).await.expect("connect");
        let queues = pb::queues_client::QueuesClient::new(ch)
            .list_queues(pb::ListQueuesRequest {})
            .await
            .expect("list over TLS")
            .into_inner()
            .queues;
        assert_eq!(queues.len(), 1, "the default queue");
        assert_eq!(queues[0].name, "default");
    }
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn plain_text_and_untrusting_clients_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let (running, _) = tls_server(dir.path()).await;
    let server = format!("127.0.0.1:{}", running.addr.port());
    // Plain HTTP/2 against the TLS port: the handshake or the first call fails.
    let plain = async {
        let ch = client::connect(&server, None).await?;
        pb::queues_client::QueuesClient::new(ch)
            .list_queues(pb::ListQueuesRequest {})
            .await
            .map_err(|s| ServerError::Transport(s.to_string()))
    };
    let e = plain.await.expect_err("plain text is refused");
    assert_eq!(e.label(), "Transport", "{e}");
    // TLS, but trusting another certificate: the handshake fails.
    let other = self_signed().cert_pem;
    let e = client::connect(&server, Some(&other))
        .await
        .expect_err("an untrusted certificate is refused");
    assert_eq!(e.label(), "Transport", "{e}");
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_bad_certificate_or_key_is_refused_at_start_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = Config::new(dir.path());
    let mut id = self_signed();
    id.key_pem = b"not a key".to_vec();
    config.tls = Some(id);
    let e = Server::start(config).await.expect_err("bad key");
    assert!(e.to_string().starts_with("tls_key: not PEM"), "{e}");
}
