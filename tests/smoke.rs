//! The shortest path through the proxy: log in, read the tenant's own data.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::{Proxy, fleet};

/// A tenant client sees its pinned schema and its own rows.
#[tokio::test(flavor = "multi_thread")]
async fn tenant_reads_its_own_rows() {
    let proxy = Proxy::start().await;
    let client = proxy.connect("acme").await;

    let path: String = client
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path, "acme");

    let rows = client
        .query("SELECT name FROM customers ORDER BY id", &[])
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(names.iter().all(|n| n.starts_with("Acme")), "{names:?}");
    assert!(!fleet().tenants.is_empty());
}
