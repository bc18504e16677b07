//! Specification of the throwaway cluster: it starts, answers and stops; URLs encode
//! credentials; a start retries only when the port was taken; versions sort as numbers.

use std::fs;
use std::net::TcpStream;

use super::binaries::parse_version;
use super::postmaster::{Launch, startup_exit};
use super::{Cluster, ClusterOptions, HOST, percent_encode};

/// A started cluster answers `SELECT 1` as the superuser; `stop` frees its port and may repeat.
#[tokio::test]
async fn starts_answers_and_stops() {
    let mut cluster = Cluster::start(ClusterOptions::default()).expect("cluster starts");
    let port = cluster.port();
    assert_eq!(cluster.host(), "127.0.0.1");
    assert!(cluster.data_dir().join("PG_VERSION").exists());

    let client = cluster
        .connect_superuser()
        .await
        .expect("superuser connects");
    let row = client
        .query_one("SELECT 1", &[])
        .await
        .expect("SELECT 1 runs");
    assert_eq!(row.get::<_, i32>(0), 1);

    cluster.stop();
    cluster.stop();
    assert!(
        TcpStream::connect((HOST, port)).is_err(),
        "port {port} still accepts"
    );
}

/// Reserved characters in user names and passwords are percent-encoded for URLs.
#[test]
fn url_encodes_credentials() {
    let cluster_url = format!(
        "postgres://{}:{}@",
        percent_encode("a b"),
        percent_encode("p@ss:/")
    );
    assert_eq!(cluster_url, "postgres://a%20b:p%40ss%3A%2F@");
}

/// An exit on a bind error asks for another port; any other exit fails quoting the log.
#[test]
fn taken_port_is_retried_other_exits_fail() {
    use std::os::unix::process::ExitStatusExt;

    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("postgres.log");
    let status = std::process::ExitStatus::from_raw(256);

    fs::write(
        &log,
        "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n",
    )
    .expect("log written");
    assert!(matches!(
        startup_exit(status, 1, &log),
        Ok(Launch::PortTaken)
    ));

    fs::write(&log, "FATAL:  unrecognized configuration parameter \"x\"\n").expect("log written");
    let error = startup_exit(status, 1, &log)
        .err()
        .expect("other exits fail");
    assert!(
        error
            .to_string()
            .contains("unrecognized configuration parameter"),
        "{error}"
    );
}

/// Version directories compare as numbers (16 after 9.6), and non-numeric names are skipped.
#[test]
fn versions_sort_numerically() {
    assert!(parse_version("16") > parse_version("9.6"));
    assert_eq!(parse_version("main"), None);
}
