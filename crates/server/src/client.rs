//! How clients (the CLI, node agents, tests) reach `gantry serve`: a tonic [`Channel`] over
//! plain HTTP/2, or over TLS (rustls) when a CA certificate is given.
//!
//! The server address may be `host:port` (the scheme is then `https` with a CA, `http`
//! without) or a full `http://` / `https://` URI. The server's certificate must name the host
//! the client connects to (a DNS name or an IP address in its subject alternative names).

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::ServerError;

/// The URI for `server`: `host:port` gets `https://` when TLS is on, else `http://`.
///
/// # Errors
/// [`ServerError::Invalid`] (field `server`) for an `http://` URI with a CA (TLS asked for a
/// plain-text address) or an `https://` one without.
pub fn uri(server: &str, tls: bool) -> Result<String, ServerError> {
    let invalid = |reason: &str| ServerError::Invalid {
        field: "server".into(),
        reason: format!("{server:?}: {reason}"),
    };
    match (server.split_once("://").map(|(s, _)| s), tls) {
        (None, false) => Ok(format!("http://{server}")),
        (None, true) => Ok(format!("https://{server}")),
        (Some("http"), false) | (Some("https"), true) => Ok(server.to_string()),
        (Some("http"), true) => Err(invalid("an http:// address with a TLS CA; use https://")),
        (Some("https"), false) => Err(invalid(
            "https:// needs the CA certificate of the server (--tls-ca or GANTRY_TLS_CA)",
        )),
        (Some(other), _) => Err(invalid(&format!("unknown scheme {other:?}"))),
    }
}

/// An endpoint for `server`, with TLS when `tls_ca` (PEM) is given. Nothing is dialled yet.
///
/// # Errors
/// A bad address (field `server`) or a CA that is not PEM (field `tls_ca`).
pub fn endpoint(server: &str, tls_ca: Option<&[u8]>) -> Result<Endpoint, ServerError> {
    let uri = uri(server, tls_ca.is_some())?;
    let mut ep = Endpoint::from_shared(uri.clone()).map_err(|e| ServerError::Invalid {
        field: "server".into(),
        reason: format!("{uri:?}: {e}"),
    })?;
    if let Some(ca) = tls_ca {
        if !String::from_utf8_lossy(ca).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ServerError::Invalid {
                field: "tls_ca".into(),
                reason: "not a PEM certificate (no BEGIN CERTIFICATE block)".into(),
            });
        }
        ep = ep
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .map_err(|e| ServerError::Invalid {
                field: "tls_ca".into(),
                reason: e.to_string(),
            })?;
    }
    Ok(ep)
}

/// Dial `server` (see [`endpoint`]).
///
/// # Errors
/// A bad address or CA, or [`ServerError::Transport`] when the server cannot be reached or
/// the TLS handshake fails.
pub async fn connect(server: &str, tls_ca: Option<&[u8]>) -> Result<Channel, ServerError> {
    let ep = endpoint(server, tls_ca)?;
    let uri = ep.uri().to_string();
    ep.connect().await.map_err(|e| {
        ServerError::Transport(format!("cannot reach gantry serve at {uri}: {}", chain(&e)))
    })
}

/// An error with its sources, `a: b: c` (tonic's transport errors hide the cause in them).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        // hyper and tonic repeat their cause's text in their own ("tcp connect error: tcp
        // connect error: …"): say each part once.
        let part = s.to_string();
        if !out.contains(&part) {
            out.push_str(": ");
            out.push_str(&part);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_the_scheme_tls_asks_for() {
        assert_eq!(uri("h:1", false).expect("plain"), "http://h:1");
        assert_eq!(uri("h:1", true).expect("tls"), "https://h:1");
        assert_eq!(uri("https://h:1", true).expect("tls"), "https://h:1");
        let e = uri("http://h:1", true).expect_err("mismatch");
        assert!(e.to_string().starts_with("server: "), "{e}");
        assert!(uri("https://h:1", false).is_err());
        assert!(uri("ftp://h:1", false).is_err());
        let e = endpoint("h:1", Some(b"not pem")).expect_err("bad ca");
        assert!(e.to_string().starts_with("tls_ca: "), "{e}");
    }

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn a_cause_repeated_by_its_wrapper_is_said_once() {
        let e = E(
            "transport error",
            Some(Box::new(E(
                "tcp connect error",
                Some(Box::new(E(
                    "tcp connect error",
                    Some(Box::new(E("Connection refused (os error 111)", None))),
                ))),
            ))),
        );
        assert_eq!(
            chain(&e),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
    }
}
