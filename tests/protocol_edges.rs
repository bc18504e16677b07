//! Protocol edge cases seen from a raw client: errors that arrive before the client's Sync,
//! several session changes in one extended batch, state left by logins and syncs, rejected
//! requests that end with Flush, and COPY failures. Each one once left a client hanging or
//! leaked state to another client sharing the backend.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::wire::{Msg, read_message};
use common::{Proxy, ProxyOptions};

fn parse(buf: &mut BytesMut, name: &str, sql: &str) {
    frontend::parse(name, sql, std::iter::empty(), buf).unwrap();
}
fn bind(buf: &mut BytesMut, stmt: &str) {
    frontend::bind(
        "",
        stmt,
        std::iter::empty::<i16>(),
        std::iter::empty::<Option<i32>>(),
        |_: Option<i32>,
         _: &mut BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            Ok(postgres_protocol::IsNull::Yes)
        },
        Some(0),
        buf,
    )
    .map_err(|_| ())
    .unwrap();
}
fn execute(buf: &mut BytesMut) {
    frontend::execute("", 0, buf).unwrap();
}

async fn read_until<F: Fn(&Msg) -> bool>(s: &mut TcpStream, stop: F) -> Vec<Msg> {
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), read_message(s))
            .await
            .expect("timeout")
            .expect("read");
        let done = stop(&m);
        out.push(m);
        if done {
            return out;
        }
    }
}

/// An error read before the client's Sync: the messages sent after it up to Sync earn only
/// a ReadyForQuery, and the session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn error_before_sync_skips_to_the_clients_sync() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let mut s = proxy.raw_login(&[]).await;
    let mut b = BytesMut::new();
    parse(&mut b, "", "SELECT 1/0");
    bind(&mut b, "");
    execute(&mut b);
    frontend::flush(&mut b);
    s.write_all(&b).await.unwrap();
    let _ = read_until(&mut s, |m| m.0 == b'E').await;

    let mut b = BytesMut::new();
    parse(&mut b, "", "SELECT 1");
    bind(&mut b, "");
    execute(&mut b);
    frontend::sync(&mut b);
    s.write_all(&b).await.unwrap();
    let got = read_until(&mut s, |m| {
        m.0 == b'Z' || (m.0 == b'E' && String::from_utf8_lossy(&m.1).contains("FATAL"))
    })
    .await;
    assert_eq!(got.last().unwrap().0, b'Z', "expected only ReadyForQuery");
}

/// Two SETs in one extended batch are both tracked, so neither leaks to another client.
#[tokio::test(flavor = "multi_thread")]
async fn every_set_in_one_extended_batch_is_tracked() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let mut s = proxy.raw_login(&[]).await;
    let mut b = BytesMut::new();
    parse(&mut b, "", "SET statement_timeout = '4321s'");
    bind(&mut b, "");
    execute(&mut b);
    parse(&mut b, "", "SET lock_timeout = '2s'");
    bind(&mut b, "");
    execute(&mut b);
    frontend::sync(&mut b);
    s.write_all(&b).await.unwrap();
    let _ = read_until(&mut s, |m| m.0 == b'Z').await;

    let other = proxy.connect("acme").await;
    let v: String = other
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "0", "leaked");
}

/// A login's startup settings, applied on a pooled backend, never reach another client.
#[tokio::test(flavor = "multi_thread")]
async fn login_settings_do_not_leak_to_the_next_client() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let _ = a.simple_query("SELECT 1").await.unwrap();

    let _l = proxy
        .raw_login(&[("options", "-c statement_timeout=98765")])
        .await;

    let rows = a.simple_query("SHOW statement_timeout").await.unwrap();
    let v = match &rows[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_owned(),
        _ => match &rows[0] {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_owned(),
            _ => panic!(),
        },
    };
    assert_eq!(v, "0", "leaked");
}

/// An unnamed statement parsed in one transaction binds in a later one, even after another
/// client's settings were applied on the backend in between.
#[tokio::test(flavor = "multi_thread")]
async fn unnamed_statement_survives_another_clients_sync() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let mut a = proxy.raw_login(&[]).await;
    let mut b = BytesMut::new();
    parse(&mut b, "", "SELECT 42");
    frontend::sync(&mut b);
    a.write_all(&b).await.unwrap();
    let _ = read_until(&mut a, |m| m.0 == b'Z').await;

    let mut c = proxy.raw_login(&[("application_name", "other")]).await;
    let mut b = BytesMut::new();
    parse(&mut b, "named", "SELECT 1");
    frontend::sync(&mut b);
    c.write_all(&b).await.unwrap();
    let _ = read_until(&mut c, |m| m.0 == b'Z').await;

    let mut b = BytesMut::new();
    bind(&mut b, "");
    execute(&mut b);
    frontend::sync(&mut b);
    a.write_all(&b).await.unwrap();
    let got = read_until(&mut a, |m| m.0 == b'Z').await;
    assert!(
        !got.iter().any(|m| m.0 == b'E'),
        "bind of own unnamed statement failed"
    );
}

/// With the pool exhausted, a client that sent Parse/Bind/Execute/Flush still hears 53300
/// before it sends Sync.
#[tokio::test(flavor = "multi_thread")]
async fn rejection_reaches_a_client_that_ended_with_flush() {
    let mut opts = ProxyOptions::one_backend();
    opts.query_wait_timeout = Duration::from_millis(300);
    let proxy = Proxy::with(opts).await;
    let mut s = proxy.raw_login(&[]).await;
    let holder = proxy.connect("acme").await;
    holder.simple_query("BEGIN").await.unwrap();
    let mut b = BytesMut::new();
    parse(&mut b, "", "SELECT 1");
    bind(&mut b, "");
    execute(&mut b);
    frontend::flush(&mut b);
    s.write_all(&b).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(3), read_message(&mut s)).await;
    assert!(r.is_ok(), "client hangs: no error before Sync");
}

/// An extended-protocol COPY that fails keeps its backend until the client's Sync, so no
/// other client's query lands on a backend that ignores it.
#[tokio::test(flavor = "multi_thread")]
async fn failed_copy_keeps_its_backend_until_sync() {
    let mut o = ProxyOptions::one_backend();
    o.query_wait_timeout = Duration::from_millis(800);
    let proxy = Proxy::with(o).await;
    let mut s = proxy.raw_login(&[]).await;
    let other = proxy.connect("acme").await;
    let mut b = BytesMut::new();
    frontend::query("SELECT 1", &mut b).unwrap();
    parse(&mut b, "", "COPY customers FROM STDIN");
    bind(&mut b, "");
    execute(&mut b);
    frontend::sync(&mut b);
    s.write_all(&b).await.unwrap();
    let _ = read_until(&mut s, |m| m.0 == b'G').await;
    let mut b = BytesMut::new();
    let data = b"notanumber\tx\tyy\t2020-01-01\n";
    b.extend_from_slice(b"d");
    b.extend_from_slice(&((data.len() + 4) as u32).to_be_bytes());
    b.extend_from_slice(data);
    frontend::flush(&mut b);
    s.write_all(&b).await.unwrap();
    let _ = read_until(&mut s, |m| m.0 == b'E').await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = tokio::time::timeout(Duration::from_secs(3), other.simple_query("SELECT 2")).await;
    assert!(
        r.is_ok(),
        "other client hangs on a backend waiting for Sync"
    );
}
