//! The front door: TLS negotiation (SSLRequest, PostgreSQL 17 direct TLS, GSSENCRequest),
//! SCRAM-SHA-256 login and its uniform failures, startup packet validation, and the
//! `passwd` and `check` commands.
//!
//! Real clients (tokio-postgres, rustls, psql) where they can express the case; a small raw
//! protocol client (`wire`, at the bottom) where only hand-made bytes can.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use rustls::ProtocolVersion;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;

use common::wire::{self, Msg, auth_code, error_fields, read_message, scram, startup_packet};
use common::{Proxy, ProxyOptions, connect_tls, fleet, tls_client_config};
use pgtenant::config::file::TlsMode;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// A tokio-postgres client that allows only TLS 1.3 logs in through SSLRequest.
#[tokio::test(flavor = "multi_thread")]
async fn ssl_request_gives_tokio_postgres_a_tls13_session() {
    let proxy = Proxy::start().await;

    let client = connect_tls(tls_config(&proxy, "acme"), "localhost")
        .await
        .expect("TLS 1.3 login");
    let tenant: String = client
        .query_one("SELECT current_setting('pgtenant.tenant')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tenant, "acme");
}

/// After `S`, a client offering TLS 1.2 and 1.3 ends up with TLS 1.3 and can log in.
#[tokio::test(flavor = "multi_thread")]
async fn ssl_request_negotiates_tls13() {
    let proxy = Proxy::start().await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();

    tcp.write_all(&wire::request_packet(SSL_REQUEST))
        .await
        .unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');

    let both = [&rustls::version::TLS13, &rustls::version::TLS12];
    let mut tls = tls_connect(tcp, tls_client_config(&both), "localhost")
        .await
        .expect("handshake");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );

    let done = login(&mut tls, "acme", 0).await;
    assert_eq!(done.last().map(|m| m.0), Some(b'Z'), "{done:?}");
}

/// A client that speaks only TLS 1.2 cannot complete a handshake, raw or through tokio-postgres.
#[tokio::test(flavor = "multi_thread")]
async fn tls12_only_client_is_refused() {
    let proxy = Proxy::start().await;
    let tls12 = || tls_client_config(&[&rustls::version::TLS12]);

    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&wire::request_packet(SSL_REQUEST))
        .await
        .unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    let handshake = tls_connect(tcp, tls12(), "localhost").await;
    assert!(handshake.is_err(), "a TLS 1.2 handshake succeeded");

    let mut config = tls_config(&proxy, "acme");
    config
        .host("localhost")
        .hostaddr([127, 0, 0, 1].into())
        .ssl_mode(SslMode::Require);
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls12());
    let err = config
        .connect(tls)
        .await
        .err()
        .expect("TLS 1.2 login refused");
    assert!(
        err.to_string().contains("TLS"),
        "refused for another reason: {err}"
    );

    // The same login with TLS 1.3 allowed goes through.
    let tls13 = tls_client_config(&[&rustls::version::TLS13]);
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls13);
    assert!(config.connect(tls).await.is_ok());
}

/// PostgreSQL 17 direct TLS: a ClientHello with ALPN `postgresql` as the very first bytes,
/// then a StartupMessage inside TLS, is answered with AuthenticationSASL and logs in, whether
/// TLS is preferred or required.
#[tokio::test(flavor = "multi_thread")]
async fn direct_tls_with_alpn_logs_in() {
    for tls in [TlsMode::Preferred, TlsMode::Required] {
        let proxy = Proxy::with(ProxyOptions {
            tls,
            ..ProxyOptions::default()
        })
        .await;
        let mut stream = direct_tls(&proxy).await.expect("direct TLS handshake");
        let session = stream.get_ref().1;
        assert_eq!(session.alpn_protocol(), Some(&b"postgresql"[..]));
        assert_eq!(session.protocol_version(), Some(ProtocolVersion::TLSv1_3));

        let t = fleet().tenant("acme");
        let params = [("user", t.user.as_str()), ("database", "acme")];
        stream
            .write_all(&startup_packet(3, 0, &params))
            .await
            .unwrap();
        let (tag, body) = read_message(&mut stream).await.unwrap();
        assert_eq!(
            (tag, auth_code(&body)),
            (b'R', 10),
            "AuthenticationSASL expected"
        );

        let done = scram(&mut stream, &t.user_password).await;
        assert_eq!(done.last().map(|m| m.0), Some(b'Z'), "{tls:?}: {done:?}");
    }
}

/// An SSLRequest inside an already encrypted connection is refused with 08P01.
#[tokio::test(flavor = "multi_thread")]
async fn ssl_request_inside_tls_is_refused() {
    let proxy = Proxy::start().await;
    let mut stream = direct_tls(&proxy).await.expect("direct TLS handshake");

    stream
        .write_all(&wire::request_packet(SSL_REQUEST))
        .await
        .unwrap();
    let (tag, body) = read_message(&mut stream).await.unwrap();
    assert_eq!(tag, b'E');
    assert_eq!(error_fields(&body)[&'C'], "08P01");
}

/// Plaintext sent right behind an SSLRequest is never taken into a TLS session: the proxy
/// does not answer `S` (it refuses with 08P01, or just closes).
#[tokio::test(flavor = "multi_thread")]
async fn ssl_request_with_trailing_plaintext_is_refused() {
    let proxy = Proxy::start().await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();

    let mut bytes = wire::request_packet(SSL_REQUEST);
    bytes.extend(startup_packet(
        3,
        0,
        &[("user", "app"), ("database", "acme")],
    ));
    tcp.write_all(&bytes).await.unwrap();

    let mut first = [0u8; 1];
    let n = tcp.read(&mut first).await.unwrap_or(0);
    assert!(
        n == 0 || first[0] != b'S',
        "the proxy accepted TLS after plaintext"
    );
    if n == 1 {
        let (tag, body) = wire::read_rest(&mut tcp, first[0]).await.unwrap();
        assert_eq!(tag, b'E', "expected a refusal, got {:?}", tag as char);
        assert_eq!(error_fields(&body)[&'C'], "08P01");
    }
}

/// Direct TLS without the `postgresql` ALPN is refused: no authentication request follows.
#[tokio::test(flavor = "multi_thread")]
async fn direct_tls_without_alpn_is_refused() {
    let proxy = Proxy::start().await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();

    let config = tls_client_config(&[&rustls::version::TLS13]);
    let Ok(mut tls) = tls_connect(tcp, config, "localhost").await else {
        return; // Refusing at the TLS layer, as PostgreSQL 17 does, is also a refusal.
    };

    // The proxy answers without reading anything; sending nothing avoids a reset racing it.
    let (tag, body) = read_message(&mut tls).await.expect("an ErrorResponse");
    assert_eq!(tag, b'E', "expected ErrorResponse, got {:?}", tag as char);
    assert_eq!(error_fields(&body)[&'C'], "08P01");
}

/// With `tls = required`, a plaintext login fails with 28000 while a TLS login succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn tls_required_refuses_plaintext_login() {
    let proxy = Proxy::with(ProxyOptions {
        tls: TlsMode::Required,
        ..ProxyOptions::default()
    })
    .await;

    let mut plain = proxy.pg_config("acme");
    plain.ssl_mode(SslMode::Disable);
    let err = plain.connect(NoTls).await.err().expect("plaintext refused");
    assert_eq!(common::sqlstate(&err), "28000", "{err}");

    let client = connect_tls(tls_config(&proxy, "acme"), "localhost")
        .await
        .expect("TLS login still works");
    client.simple_query("SELECT 1").await.unwrap();
}

/// With `tls = disabled`, SSLRequest is answered with `N` and the login continues in plaintext.
#[tokio::test(flavor = "multi_thread")]
async fn tls_disabled_answers_ssl_request_with_n() {
    let proxy = Proxy::with(ProxyOptions {
        tls: TlsMode::Disabled,
        ..ProxyOptions::default()
    })
    .await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();

    tcp.write_all(&wire::request_packet(SSL_REQUEST))
        .await
        .unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'N');

    let done = login(&mut tcp, "acme", 0).await;
    assert_eq!(done.last().map(|m| m.0), Some(b'Z'), "{done:?}");
}

/// With `tls = disabled`, a direct TLS ClientHello gets no handshake.
#[tokio::test(flavor = "multi_thread")]
async fn tls_disabled_refuses_direct_tls() {
    let proxy = Proxy::with(ProxyOptions {
        tls: TlsMode::Disabled,
        ..ProxyOptions::default()
    })
    .await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();

    let mut config = tls_client_config(&[&rustls::version::TLS13]);
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    assert!(tls_connect(tcp, config, "localhost").await.is_err());
}

/// GSSENCRequest is answered with `N` and the same connection can then log in.
#[tokio::test(flavor = "multi_thread")]
async fn gssenc_request_is_answered_with_n() {
    let proxy = Proxy::start().await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();

    tcp.write_all(&wire::request_packet(GSSENC_REQUEST))
        .await
        .unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'N');

    let done = login(&mut tcp, "acme", 0).await;
    assert_eq!(done.last().map(|m| m.0), Some(b'Z'), "{done:?}");
}

/// SCRAM-SHA-256 is the only mechanism offered, and the proxy proves it knows the verifier.
#[tokio::test(flavor = "multi_thread")]
async fn scram_is_the_only_mechanism_and_the_server_signature_verifies() {
    let proxy = Proxy::start().await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let t = fleet().tenant("globex");

    let params = [("user", t.user.as_str()), ("database", "globex")];
    tcp.write_all(&startup_packet(3, 0, &params)).await.unwrap();
    let (tag, body) = read_message(&mut tcp).await.unwrap();
    assert_eq!((tag, auth_code(&body)), (b'R', 10));
    let mechanisms: Vec<&[u8]> = body[4..]
        .split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .collect();
    assert_eq!(mechanisms, vec![&b"SCRAM-SHA-256"[..]]);

    // `scram` checks the server's final signature with postgres-protocol.
    let done = scram(&mut tcp, &t.user_password).await;
    assert!(
        done.iter().any(|m| m.0 == b'R' && auth_code(&m.1) == 0),
        "{done:?}"
    );
    assert_eq!(done.last().map(|m| m.0), Some(b'Z'), "{done:?}");
}

/// tokio-postgres and psql both log in with the tenant's password.
#[tokio::test(flavor = "multi_thread")]
async fn scram_login_succeeds_for_tokio_postgres_and_psql() {
    let proxy = Proxy::start().await;

    let client = proxy.connect("solo").await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    let t = fleet().tenant("solo");
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} dbname=solo sslmode=require",
        proxy.addr.port(),
        t.user
    );
    let output = tokio::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg("SELECT current_setting('pgtenant.tenant')")
        .arg(&conninfo)
        .env("PGPASSWORD", &t.user_password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("run psql");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "psql failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "solo");
}

/// Wrong password, unknown user and unknown tenant are indistinguishable: 28P01, same text.
#[tokio::test(flavor = "multi_thread")]
async fn auth_failures_are_indistinguishable() {
    let proxy = Proxy::start().await;
    let attempt = |user: &str, password: &str, database: &str| {
        let mut config = proxy.pg_config("acme");
        config.user(user).password(password).dbname(database);
        async move { config.connect(NoTls).await.err().expect("login must fail") }
    };
    let acme = fleet().tenant("acme");

    let wrong_password = attempt("app", "not-the-password", "acme").await;
    let unknown_user = attempt("ghost", &acme.user_password, "acme").await;
    let unknown_tenant = attempt("app", &acme.user_password, "initech").await;

    let described = |e: &tokio_postgres::Error| {
        let db = e
            .as_db_error()
            .unwrap_or_else(|| panic!("not a server error: {e}"));
        (db.code().code().to_owned(), db.message().to_owned())
    };
    let (code, message) = described(&wrong_password);
    assert_eq!(code, "28P01");
    assert_eq!(described(&unknown_tenant), (code.clone(), message.clone()));

    // PostgreSQL names the user it was given; everything else must be identical.
    let expected = message.replace("\"app\"", "\"ghost\"");
    assert_ne!(
        expected, message,
        "the message should name the user: {message}"
    );
    assert_eq!(described(&unknown_user), (code, expected));
}

/// An unknown user or tenant gets a full SCRAM exchange with a salt that is stable per user
/// and tenant name, so the salt cannot reveal that either does not exist.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_user_gets_a_stable_decoy_salt() {
    let proxy = Proxy::start().await;
    let addr = proxy.addr;
    let salt = |user: &'static str, database: &'static str| async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        wire::server_first(&mut tcp, user, database).await
    };

    let first = salt("ghost", "acme").await;
    assert_eq!(salt("ghost", "acme").await, first);
    assert_ne!(salt("phantom", "acme").await, first);
    assert_eq!(salt("app", "acme").await, salt("app", "acme").await);

    // Unknown tenants must not share one salt, or comparing salts would tell real tenants
    // (whose salts all differ) from made-up ones.
    let nosuch = salt("app", "nosuch1").await;
    assert_eq!(salt("app", "nosuch1").await, nosuch, "stable per tenant");
    assert_ne!(salt("app", "nosuch2").await, nosuch);
    assert_ne!(salt("app", "acme").await, nosuch);
}

/// A client asking for protocol 3.1 is told 3.0 with NegotiateProtocolVersion, then logs in.
#[tokio::test(flavor = "multi_thread")]
async fn protocol_3_1_is_negotiated_down_to_3_0() {
    let proxy = Proxy::start().await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();

    let done = login(&mut tcp, "acme", 1).await;
    let (tag, body) = &done[0];
    assert_eq!(
        *tag, b'v',
        "NegotiateProtocolVersion expected first: {done:?}"
    );
    assert_eq!(
        &body[..8],
        &[0, 0, 0, 0, 0, 0, 0, 0],
        "newest minor 0, no options"
    );
    assert_eq!((done[1].0, auth_code(&done[1].1)), (b'R', 10), "{done:?}");
    assert_eq!(done.last().map(|m| m.0), Some(b'Z'), "{done:?}");
}

/// Unknown `_pq_.` protocol options are listed back in NegotiateProtocolVersion.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_protocol_options_are_listed_back() {
    let proxy = Proxy::start().await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();

    let params = [
        ("user", "app"),
        ("database", "acme"),
        ("_pq_.frobnicate", "on"),
    ];
    tcp.write_all(&startup_packet(3, 0, &params)).await.unwrap();
    let (tag, body) = read_message(&mut tcp).await.unwrap();
    assert_eq!(tag, b'v');
    let mut expected = vec![0, 0, 0, 0, 0, 0, 0, 1];
    expected.extend_from_slice(b"_pq_.frobnicate\0");
    assert_eq!(body, expected);

    let (tag, body) = read_message(&mut tcp).await.unwrap();
    assert_eq!((tag, auth_code(&body)), (b'R', 10));
}

/// A startup packet claiming more than 10,000 bytes is refused with 08P01 before it is read.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_startup_packet_is_refused() {
    let proxy = Proxy::start().await;
    assert_eq!(refused_length(&proxy, 10_001).await, "08P01");
    assert_eq!(refused_length(&proxy, u32::MAX).await, "08P01");
}

/// A startup packet claiming fewer than 8 bytes is refused with 08P01.
#[tokio::test(flavor = "multi_thread")]
async fn undersized_startup_packet_is_refused() {
    let proxy = Proxy::start().await;
    assert_eq!(refused_length(&proxy, 7).await, "08P01");
    assert_eq!(refused_length(&proxy, 0).await, "08P01");
}

/// A StartupMessage of exactly 10,000 bytes is within the limit and reaches authentication.
#[tokio::test(flavor = "multi_thread")]
async fn startup_packet_at_the_limit_is_accepted() {
    let proxy = Proxy::start().await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();

    let short = startup_packet(3, 0, &[("user", "app"), ("database", "acme"), ("x", "")]);
    let padding = "p".repeat(10_000 - short.len());
    let params = [
        ("user", "app"),
        ("database", "acme"),
        ("x", padding.as_str()),
    ];
    let packet = startup_packet(3, 0, &params);
    assert_eq!(packet.len(), 10_000);

    tcp.write_all(&packet).await.unwrap();
    let (tag, body) = read_message(&mut tcp).await.unwrap();
    assert_eq!(
        (tag, auth_code(&body)),
        (b'R', 10),
        "{:?}",
        error_fields(&body)
    );
}

/// A protocol 2.0 startup packet is refused with 0A000.
#[tokio::test(flavor = "multi_thread")]
async fn protocol_2_is_refused() {
    let proxy = Proxy::start().await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();

    // The 2.0 layout: version, then fixed-width database, user, options, unused, tty.
    let mut body = vec![0, 2, 0, 0];
    let mut field = |text: &str, width: usize| {
        let mut bytes = text.as_bytes().to_vec();
        bytes.resize(width, 0);
        body.extend(bytes);
    };
    field("acme", 64);
    field("app", 32);
    field("", 64);
    field("", 64);
    field("", 64);
    tcp.write_all(&wire::with_length(&body)).await.unwrap();

    let (tag, body) = read_message(&mut tcp).await.unwrap();
    assert_eq!(tag, b'E');
    let fields = error_fields(&body);
    assert_eq!(fields[&'C'], "0A000", "{fields:?}");
    assert_eq!(fields[&'S'], "FATAL");
}

/// A replication connection is refused with 0A000.
#[tokio::test(flavor = "multi_thread")]
async fn replication_connection_is_refused() {
    let proxy = Proxy::start().await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();

    let params = [
        ("user", "app"),
        ("database", "acme"),
        ("replication", "database"),
    ];
    tcp.write_all(&startup_packet(3, 0, &params)).await.unwrap();
    let (tag, body) = read_message(&mut tcp).await.expect("an ErrorResponse");
    assert_eq!(tag, b'E');
    assert_eq!(error_fields(&body)[&'C'], "0A000");
}

/// A StartupMessage without a user name gets an ErrorResponse (08P01), not a silent close.
#[tokio::test(flavor = "multi_thread")]
async fn startup_without_user_is_refused_with_an_error() {
    let proxy = Proxy::start().await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();

    tcp.write_all(&startup_packet(3, 0, &[("database", "acme")]))
        .await
        .unwrap();
    let (tag, body) = read_message(&mut tcp).await.expect("an ErrorResponse");
    assert_eq!(tag, b'E');
    assert_eq!(error_fields(&body)[&'C'], "08P01");
}

/// Malformed `options` get an ErrorResponse the client can show (08P01), not a silent close.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_options_are_refused_with_an_error() {
    let proxy = Proxy::start().await;
    let mut config = proxy.pg_config("acme");
    config.options("-x");

    let err = config.connect(NoTls).await.err().expect("refused");
    assert_eq!(common::sqlstate(&err), "08P01", "{err}");
}

/// Asking for SCRAM-SHA-256-PLUS, which is not offered, fails like a wrong password.
#[tokio::test(flavor = "multi_thread")]
async fn unoffered_mechanism_fails_like_a_wrong_password() {
    let proxy = Proxy::start().await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();

    let params = [("user", "app"), ("database", "acme")];
    tcp.write_all(&startup_packet(3, 0, &params)).await.unwrap();
    let (tag, body) = read_message(&mut tcp).await.unwrap();
    assert_eq!((tag, auth_code(&body)), (b'R', 10));

    let mut buf = bytes::BytesMut::new();
    let first = b"p=tls-server-end-point,,n=,r=abcdef";
    postgres_protocol::message::frontend::sasl_initial_response(
        "SCRAM-SHA-256-PLUS",
        first,
        &mut buf,
    )
    .unwrap();
    tcp.write_all(&buf).await.unwrap();

    let (tag, body) = read_message(&mut tcp).await.unwrap();
    assert_eq!(tag, b'E');
    assert_eq!(error_fields(&body)[&'C'], "28P01");
}

/// `pgtenant passwd` prints a verifier that parses and lets a SCRAM login in with that password.
#[tokio::test(flavor = "multi_thread")]
async fn passwd_verifier_logs_in() {
    let output = run_with_stdin(&["passwd"], "secret\n").await;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let verifier_text = stdout.trim();
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let verifier = pgtenant::frontend::scram::Verifier::parse(verifier_text).expect("parses");

    // A proxy whose `acme` tenant also accepts `ops` with that verifier.
    let mut config = ProxyOptions::default().config();
    let mut acme = (*config.tenants["acme"]).clone();
    acme.users.insert("ops".into(), verifier);
    config.tenants.insert("acme".into(), Arc::new(acme));
    let server = pgtenant::server::Server::bind(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.handle();
    tokio::spawn(server.run());

    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1")
        .port(addr.port())
        .user("ops")
        .dbname("acme")
        .connect_timeout(Duration::from_secs(10));
    let mut good = pg.clone();
    good.password("secret");
    pg.password("Secret");
    let good = common::connect_plain(good).await;
    let bad = common::connect_plain(pg).await;
    handle.shutdown();

    let client = good.expect("login with the passwd password");
    drop(client);
    assert_eq!(common::sqlstate(&bad.expect_err("wrong password")), "28P01");
}

/// `pgtenant passwd` with nothing on stdin fails instead of printing a verifier.
#[tokio::test(flavor = "multi_thread")]
async fn passwd_refuses_an_empty_password() {
    let output = run_with_stdin(&["passwd"], "\n").await;
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "{output:?}");
}

/// `pgtenant check` accepts a complete, valid file.
#[tokio::test(flavor = "multi_thread")]
async fn check_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "", "");

    let output = check(&path).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok"));
}

/// `pgtenant check` names an unknown key in a one-line error and exits non-zero.
#[tokio::test(flavor = "multi_thread")]
async fn check_names_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "listen_addr = \"127.0.0.1:7000\"\n", "");

    assert_check_fails(&path, &["listen_addr"]).await;
}

/// `pgtenant check` names the key of a value that does not parse, in one line.
#[tokio::test(flavor = "multi_thread")]
async fn check_names_a_value_of_the_wrong_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "login_timeout = \"soon\"\n", "");
    assert_check_fails(&path, &["login_timeout", "soon"]).await;

    let path = write_config(dir.path(), "", "connect_timeout = \"five\"\n");
    assert_check_fails(&path, &["connect_timeout", "five"]).await;
}

/// `pgtenant check` names the dotted key of a value that parses but is not valid.
#[tokio::test(flavor = "multi_thread")]
async fn check_names_an_invalid_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "", "connect_timeout = \"0s\"\n");
    assert_check_fails(&path, &["backend.connect_timeout"]).await;

    let path = write_config(dir.path(), "listen = \"nowhere\"\n", "");
    assert_check_fails(&path, &["proxy.listen", "nowhere"]).await;
}

/// `pgtenant check` names the user whose verifier is malformed.
#[tokio::test(flavor = "multi_thread")]
async fn check_names_a_malformed_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "", "");
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text.replace("verifier = \"SCRAM-SHA-256$", "verifier = \"md5$");
    assert_ne!(broken, text);
    std::fs::write(&path, broken).unwrap();

    assert_check_fails(&path, &["tenants[0].users[0].verifier"]).await;
}

// ---- helpers ----

/// A tenant's `app` login with no host: `common::connect_tls` adds the host (as the TLS
/// server name) and a host address, and tokio-postgres refuses two hosts for one address.
fn tls_config(proxy: &Proxy, tenant: &str) -> tokio_postgres::Config {
    let t = fleet().tenant(tenant);
    let mut config = tokio_postgres::Config::new();
    config
        .port(proxy.addr.port())
        .user(&t.user)
        .password(&t.user_password)
        .dbname(tenant)
        .connect_timeout(Duration::from_secs(10));
    config
}

/// A TLS handshake over `tcp`, naming `server_name` for SNI and certificate checks.
async fn tls_connect(
    tcp: TcpStream,
    config: rustls::ClientConfig,
    server_name: &'static str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name).expect("valid server name");
    connector.connect(name, tcp).await
}

/// Opens a PostgreSQL 17 direct TLS connection (ALPN `postgresql`, no SSLRequest).
async fn direct_tls(proxy: &Proxy) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(proxy.addr).await?;
    let mut config = tls_client_config(&[&rustls::version::TLS13]);
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    tls_connect(tcp, config, "localhost").await
}

/// Logs in as `tenant`'s `app` with a raw StartupMessage of protocol 3.`minor`; returns
/// every message up to ReadyForQuery or ErrorResponse.
async fn login<S>(stream: &mut S, tenant: &str, minor: u16) -> Vec<Msg>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let t = fleet().tenant(tenant);
    let params = [("user", t.user.as_str()), ("database", tenant)];
    stream
        .write_all(&startup_packet(3, minor, &params))
        .await
        .unwrap();

    let mut before = Vec::new();
    loop {
        let (tag, body) = read_message(stream).await.unwrap();
        let sasl = tag == b'R' && auth_code(&body) == 10;
        let end = tag == b'E';
        before.push((tag, body));
        if sasl {
            break;
        }
        assert!(!end, "login refused: {before:?}");
    }
    before.extend(scram(stream, &t.user_password).await);
    before
}

/// Sends only a startup length field and returns the SQLSTATE of the answer.
async fn refused_length(proxy: &Proxy, length: u32) -> String {
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    // Only the length: the proxy must judge it before reading on, and unread bytes left
    // behind would turn its close into a reset that could swallow the answer.
    tcp.write_all(&length.to_be_bytes()).await.unwrap();

    let (tag, body) = read_message(&mut tcp).await.expect("an ErrorResponse");
    assert_eq!(tag, b'E', "length {length}: expected ErrorResponse");
    error_fields(&body)[&'C'].clone()
}

/// Runs the pgtenant binary with `args`, feeding `stdin`.
async fn run_with_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = tokio::process::Command::new(common::pgtenant_bin())
        .args(args)
        .env("PGTENANT_LOG", "error")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pgtenant");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

/// Runs `pgtenant check --config path`.
async fn check(path: &std::path::Path) -> std::process::Output {
    tokio::process::Command::new(common::pgtenant_bin())
        .arg("check")
        .arg("--config")
        .arg(path)
        .env("PGTENANT_LOG", "error")
        .env_remove("PGTENANT_CONFIG")
        .output()
        .await
        .expect("run pgtenant check")
}

/// `check` fails with exactly one line on stderr that mentions every word in `names`.
async fn assert_check_fails(path: &std::path::Path, names: &[&str]) {
    let output = check(path).await;
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success(), "check accepted a bad file");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    for name in names {
        assert!(stderr.contains(name), "{name:?} not named in: {stderr}");
    }
}

/// Writes a valid configuration with its own certificate, with extra lines appended to
/// `[proxy]` and `[backend]`. Returns its path.
fn write_config(
    dir: &std::path::Path,
    proxy_extra: &str,
    backend_extra: &str,
) -> std::path::PathBuf {
    let (cert, key) = pgtenant::tls::write_self_signed(dir, &["localhost"]).unwrap();
    let verifier = postgres_protocol::password::scram_sha_256(b"pw");
    let text = format!(
        "[proxy]\n{proxy_extra}tls = \"preferred\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n\
         [backend]\n{backend_extra}host = \"127.0.0.1\"\nport = 5432\n\n\
         [[tenants]]\nname = \"acme\"\n\n\
         [[tenants.users]]\nname = \"app\"\nverifier = \"{verifier}\"\n",
        cert.display(),
        key.display(),
    );
    let path = dir.join("pgtenant.toml");
    std::fs::write(&path, text).unwrap();
    path
}
