//! TLS with certificates made by the test (rcgen): a server that requires TLS accepts a client
//! that trusts its CA (`--tls-ca`), and refuses one without it, one that trusts another CA, and
//! one that speaks plain NATS. With `verify: true` it also requires a client certificate
//! (`--tls-cert`/`--tls-key`). The clients are `logdist::connect`, what the three binaries use.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use logdist::ConnectError;
use logdist::NatsArgs;
use logdist_testing::NatsServer;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use tokio_util::sync::CancellationToken;

/// A CA and, signed by it, a server certificate for 127.0.0.1 and a client certificate, written
/// as PEM files into a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();

        let mut server =
            CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca).unwrap();
        std::fs::write(dir.path().join("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("server-key.pem"),
            server_key.serialize_pem(),
        )
        .unwrap();

        let mut client = CertificateParams::new(vec!["logdist-client".into()]).unwrap();
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &ca).unwrap();
        std::fs::write(dir.path().join("client.pem"), client_cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("client-key.pem"),
            client_key.serialize_pem(),
        )
        .unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's `tls` block; `verify` requires client certificates signed by the CA.
    fn server_config(&self, verify: bool) -> String {
        let quoted = |p: &Path| format!("{:?}", p.display().to_string());
        let mut config = format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  timeout: 2\n",
            quoted(&self.path("server.pem")),
            quoted(&self.path("server-key.pem"))
        );
        if verify {
            config += &format!(
                "  ca_file: {}\n  verify: true\n",
                quoted(&self.path("ca.pem"))
            );
        }
        config + "}\n"
    }
}

/// Connects like a binary does, giving up after 3 s.
async fn connect(args: NatsArgs) -> Result<logdist::Connection, ConnectError> {
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        cancel.cancel();
    });
    logdist::connect(&args, "e2e-tls", &shutdown).await
}

async fn assert_works(conn: logdist::Connection) {
    let mut sub = conn.client.subscribe("tls.check").await.unwrap();
    conn.client
        .publish("tls.check", "over tls".into())
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut sub))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.payload, "over tls");
}

#[tokio::test]
async fn a_server_that_requires_tls_accepts_only_clients_that_trust_its_ca() {
    let pki = Pki::generate();
    let other = Pki::generate();
    let server = NatsServer::with_config(&pki.server_config(false));

    let mut trusted = NatsArgs::url(server.url());
    trusted.tls_ca = Some(pki.path("ca.pem"));
    assert_works(
        connect(trusted)
            .await
            .expect("a client with the CA connects"),
    )
    .await;

    // No CA, or another CA: the client follows the server into TLS but cannot verify its
    // certificate. async-nats reports that as an I/O error, which `logdist::connect` retries like
    // an unreachable server (a clearer message would need a change there), so a binary never
    // gets a session: it keeps retrying until it is stopped.
    let mut wrong = NatsArgs::url(server.url());
    wrong.tls_ca = Some(other.path("ca.pem"));
    let (no_ca, wrong_ca) = tokio::join!(connect(NatsArgs::url(server.url())), connect(wrong));
    for refused in [no_ca, wrong_ca] {
        assert!(
            matches!(
                refused,
                Err(ConnectError::Config { .. } | ConnectError::Cancelled { .. })
            ),
            "{:?}",
            refused.map(|_| ())
        );
    }
    // The reason, as the client library sees it.
    let error = async_nats::ConnectOptions::new()
        .add_root_certificates(other.path("ca.pem"))
        .require_tls(true)
        .connect(server.url())
        .await
        .expect_err("a client trusting another CA is refused");
    assert!(
        error.to_string().contains("invalid peer certificate"),
        "{error}"
    );

    // Plain NATS on the socket: the server announces that TLS is required and, when the next
    // bytes are not a TLS handshake, closes the connection without a session (no PONG).
    let mut socket = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.write_all(b"CONNECT {}\r\nPING\r\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match socket.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => break !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    };
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("\"tls_required\":true"), "{seen}");
    assert!(!seen.contains("PONG"), "{seen}");
    assert!(closed, "the server kept a plain connection open: {seen}");
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_signed_by_the_ca() {
    let pki = Pki::generate();
    let other = Pki::generate();
    let server = NatsServer::with_config(&pki.server_config(true));

    let mut with_cert = NatsArgs::url(server.url());
    with_cert.tls_ca = Some(pki.path("ca.pem"));
    with_cert.tls_cert = Some(pki.path("client.pem"));
    with_cert.tls_key = Some(pki.path("client-key.pem"));
    assert_works(connect(with_cert.clone()).await.expect("mutual TLS")).await;

    let mut without_cert = with_cert.clone();
    without_cert.tls_cert = None;
    without_cert.tls_key = None;
    assert!(connect(without_cert).await.is_err());

    let mut foreign_cert = with_cert;
    foreign_cert.tls_cert = Some(other.path("client.pem"));
    foreign_cert.tls_key = Some(other.path("client-key.pem"));
    assert!(connect(foreign_cert).await.is_err());
}
