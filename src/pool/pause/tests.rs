use std::future::Future;

use super::*;

/// Long enough to be sure a closed gate holds; never an upper bound on anything.
const HOLD: Duration = Duration::from_millis(100);
/// Turns a hang into a failure.
const HANG: Duration = Duration::from_secs(30);
/// A pause that will not expire during a test.
const LONG: Duration = Duration::from_secs(3600);

async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG, fut).await {
        Ok(value) => value,
        Err(_) => panic!("no answer within {HANG:?}"),
    }
}

#[tokio::test]
async fn open_gate_passes_at_once_and_counts_in_flight() {
    let gate = PauseGate::new("t");
    let first = bounded(gate.pass()).await;
    let second = bounded(gate.pass()).await;
    assert_eq!(gate.in_flight(), 2);

    drop(first);
    drop(second);
    assert_eq!(gate.in_flight(), 0);
}

#[tokio::test]
async fn closed_gate_holds_new_callers_until_resumed() {
    let gate = PauseGate::new("t");
    assert_eq!(gate.close("k1", "test", LONG), Closing::Paused);

    let waiter = tokio::spawn({
        let gate = gate.clone();
        async move { drop(gate.pass().await) }
    });
    tokio::time::sleep(HOLD).await;
    assert!(!waiter.is_finished(), "a closed gate must hold the caller");
    assert_eq!(gate.in_flight(), 0, "a waiter is not in flight");

    assert!(gate.resume());
    bounded(waiter).await.expect("waiter");
    assert!(gate.pause().is_none());
}

#[tokio::test]
async fn gate_opens_on_its_own_at_the_deadline() {
    let gate = PauseGate::new("t");
    gate.close("k1", "test", Duration::from_millis(50));

    drop(bounded(gate.pass()).await);
    assert!(gate.pause().is_none());
    assert_eq!(gate.close("k1", "test", LONG), Closing::Lapsed);
    assert!(
        gate.pause().is_none(),
        "an expired pause is not taken again"
    );
}

#[tokio::test]
async fn drain_waits_for_the_caller_in_flight() {
    let gate = PauseGate::new("t");
    let in_flight = bounded(gate.pass()).await;
    gate.close("k1", "test", LONG);

    let drain = tokio::spawn({
        let gate = gate.clone();
        async move { gate.drained("k1").await }
    });
    tokio::time::sleep(HOLD).await;
    assert!(!drain.is_finished(), "a caller is still in flight");

    drop(in_flight);
    assert!(bounded(drain).await.expect("drain"));
}

#[tokio::test]
async fn drain_ends_unacknowledged_when_the_pause_ends_or_changes() {
    let gate = PauseGate::new("t");
    let in_flight = bounded(gate.pass()).await;
    gate.close("k1", "test", LONG);

    let first = tokio::spawn({
        let gate = gate.clone();
        async move { gate.drained("k1").await }
    });
    assert_eq!(gate.close("k2", "test", LONG), Closing::Replaced);
    assert!(!bounded(first).await.expect("drain"));
    assert!(
        gate.pause().is_some(),
        "a replaced pause keeps the gate closed"
    );

    let second = tokio::spawn({
        let gate = gate.clone();
        async move { gate.drained("k2").await }
    });
    gate.resume();
    assert!(!bounded(second).await.expect("drain"));
    drop(in_flight);
}

#[tokio::test]
async fn gates_survive_until_no_longer_served_and_idle() {
    let gates = PauseGates::default();
    let kept = gates.for_tenant("a");
    assert!(Arc::ptr_eq(&kept, &gates.for_tenant("a")));
    gates.for_tenant("b").close("k", "test", LONG);
    gates.for_tenant("c");

    gates.prune(|name| name == "a");
    let names: Vec<String> = gates.closed().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["b"], "a closed gate stays");
    assert!(Arc::ptr_eq(&kept, &gates.for_tenant("a")));
}
