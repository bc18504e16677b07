//! Hostile input: random bytes before login and malformed frames after it end only the
//! connection that sent them. The proxy keeps serving everyone else.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::Proxy;
use common::wire::startup_packet;

/// Panics anywhere in this process, proxy tasks included (tokio would otherwise swallow a
/// panicking session task and the proxy would look healthy).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
}

/// A small deterministic generator, so a failing case can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Reads until the proxy closes the connection or stays quiet for a while.
async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// The proxy still logs a real client in and answers it, and nothing panicked.
async fn still_serving(proxy: &Proxy) {
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a proxy task panicked");
    let client = proxy.connect("acme").await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Random bytes, with or without a plausible length prefix, never stop the proxy.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_before_login_never_takes_the_proxy_down() {
    count_panics();
    let proxy = Proxy::start().await;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);

    for case in 0..150 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let len = rng.below(64) as usize;
        let body = rng.bytes(len);
        let packet = match case % 3 {
            0 => body,
            1 => {
                let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
                p.extend_from_slice(&body);
                p
            }
            _ => {
                let mut p = startup_packet(3, 0, &[("user", "app")]);
                let cut = rng.below(p.len() as u64) as usize;
                p.truncate(cut);
                p.extend_from_slice(&body);
                p
            }
        };
        let _ = stream.write_all(&packet).await;
        let _ = stream.shutdown().await;
        drain(&mut stream).await;
    }

    still_serving(&proxy).await;
}

/// A frame with a real message type and a random (often truncated or inconsistent) body.
fn hostile_frame(rng: &mut XorShift) -> Vec<u8> {
    const TAGS: &[u8] = b"QPBDCESHFdcfpXz\x00\xff";
    let tag = TAGS[rng.below(TAGS.len() as u64) as usize];
    let len = rng.below(48) as usize;
    let body = rng.bytes(len);

    let declared = match rng.below(4) {
        0 => body.len() as u32 + 4,
        1 => rng.below(1 << 31) as u32,
        2 => rng.below(4) as u32,
        _ => body.len() as u32,
    };
    let mut frame = vec![tag];
    frame.extend_from_slice(&declared.to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Malformed frames after login end that session at most; other sessions are unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_after_login_ends_only_that_session() {
    count_panics();
    let proxy = Proxy::start().await;
    let bystander = proxy.connect("acme").await;
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);

    for _ in 0..60 {
        let mut stream = proxy.raw_login(&[]).await;
        for _ in 0..rng.below(4) + 1 {
            let _ = stream.write_all(&hostile_frame(&mut rng)).await;
        }
        let _ = stream.shutdown().await;
        drain(&mut stream).await;

        let n: i64 = bystander
            .query_one("SELECT count(*) FROM customers", &[])
            .await
            .unwrap()
            .get(0);
        assert!(n > 0);
    }

    still_serving(&proxy).await;
}
