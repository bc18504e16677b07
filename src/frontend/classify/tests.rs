//! Specification of the statement classifier.

use super::*;

fn set_item(name: &str, sql: &str) -> Effect {
    Effect::SetItem {
        kind: ItemKind::Setting,
        name: name.into(),
        sql: sql.into(),
    }
}

#[test]
fn plain_queries_have_no_effect() {
    assert_eq!(classify_query("select 1"), Effect::None);
    assert_eq!(classify_query("update t set x = 1"), Effect::None);
    assert_eq!(classify_query("BEGIN; SELECT 1; COMMIT"), Effect::None);
}

#[test]
fn reported_parameters_are_left_to_parameter_status() {
    assert_eq!(classify_query("SET application_name = 'x'"), Effect::None);
    assert_eq!(classify_query("set time zone 'UTC'"), Effect::None);
    assert_eq!(
        classify_query("SET LOCAL statement_timeout = 5"),
        Effect::None
    );
}

#[test]
fn other_settings_are_replayed() {
    let sql = "SET statement_timeout = '5s'";
    assert_eq!(classify_query(sql), set_item("statement_timeout", sql));
    assert_eq!(
        classify_query("set search_path to other;"),
        set_item("search_path", "set search_path to other")
    );
    assert_eq!(
        classify_query("RESET work_mem"),
        Effect::ResetItem {
            kind: ItemKind::Setting,
            name: "work_mem".into()
        }
    );
}

#[test]
fn unplaceable_state_pins() {
    assert_eq!(classify_query("SET ROLE other"), Effect::Pin("SET ROLE"));
    assert!(matches!(classify_query("LISTEN ch"), Effect::Pin(_)));
    assert!(matches!(
        classify_query("create temp table t (x int)"),
        Effect::Pin(_)
    ));
    assert!(matches!(
        classify_query("CREATE GLOBAL TEMPORARY TABLE t()"),
        Effect::Pin(_)
    ));
    assert!(matches!(
        classify_query("select pg_advisory_lock(1)"),
        Effect::Pin(_)
    ));
    assert!(matches!(
        classify_query("SELECT pg_catalog.set_config('search_path', '', false)"),
        Effect::Pin(_)
    ));
    assert!(matches!(
        classify_query("SET SESSION AUTHORIZATION x"),
        Effect::Pin(_)
    ));
    assert!(matches!(
        classify_query("select 1; set work_mem = 1"),
        Effect::Pin(_)
    ));
}

#[test]
fn xact_advisory_locks_do_not_pin() {
    assert_eq!(
        classify_query("select pg_advisory_xact_lock(1)"),
        Effect::None
    );
}

#[test]
fn keywords_inside_strings_and_comments_are_ignored() {
    assert_eq!(
        classify_query("select 'LISTEN x; set role y'"),
        Effect::None
    );
    assert_eq!(classify_query("select $$set role y$$"), Effect::None);
    assert_eq!(classify_query("select $f$ ; listen a $f$"), Effect::None);
    assert_eq!(classify_query("-- listen x\nselect 1"), Effect::None);
    assert_eq!(
        classify_query("/* a /* nested */ listen */ select 1"),
        Effect::None
    );
    assert_eq!(classify_query("select E'it\\'s; listen x'"), Effect::None);
    assert_eq!(classify_query("select \"listen\" from t"), Effect::None);
}

#[test]
fn sql_prepared_statements_are_items() {
    assert_eq!(
        classify_query("PREPARE q1 (int) AS SELECT $1"),
        Effect::SetItem {
            kind: ItemKind::Prepared,
            name: "q1".into(),
            sql: "PREPARE q1 (int) AS SELECT $1".into()
        }
    );
    assert_eq!(classify_query("deallocate all"), Effect::DeallocateAll);
    assert_eq!(
        classify_query("DEALLOCATE PREPARE ALL"),
        Effect::DeallocateAll
    );
    assert_eq!(classify_query("DISCARD ALL"), Effect::DiscardAll);
    assert_eq!(classify_query("RESET ALL"), Effect::ResetAll);
}

#[test]
fn parse_reports_effects_for_the_relay_to_place() {
    assert_eq!(classify_parse("select $1"), Effect::None);
    assert_eq!(
        classify_parse("SET extra_float_digits = 3"),
        set_item("extra_float_digits", "SET extra_float_digits = 3")
    );
    assert_eq!(classify_parse("SET application_name = 'x'"), Effect::None);
}

#[test]
fn driver_reset_batches_are_tracked_not_pinned() {
    let sql = "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;";
    assert_eq!(classify_query(sql), Effect::ResetAll);
    assert_eq!(
        classify_query("RESET ALL; DEALLOCATE ALL"),
        Effect::DiscardAll
    );
}

#[test]
fn garbage_never_panics() {
    for sql in [
        "'", "$", "$a", "$a$", "/*", "\"", "E'\\", "--", ";;;", "é'", "$é$x",
    ] {
        let _ = classify_query(sql);
    }
}

#[test]
fn late_session_functions_are_found_in_any_case() {
    let sql = "SELECT a, b, c, d, e, f, g FROM t WHERE PG_CATALOG.PG_ADVISORY_LOCK(1) IS NULL";
    assert!(matches!(classify_query(sql), Effect::Pin(_)));
    let sql = "select a, b, c, d, e, f, g from PG_TEMP.t";
    assert!(matches!(classify_query(sql), Effect::Pin(_)));
}

#[test]
fn common_statements_with_session_effects_are_still_seen() {
    let pinned = |sql: &str| matches!(classify_query(sql), Effect::Pin(_));
    assert!(pinned("SELECT PG_ADVISORY_LOCK(1)"));
    assert!(pinned("Select Set_Config('work_mem', '1MB', false)"));
    assert!(pinned("SELECT * INTO TEMP t FROM x"));
    assert!(pinned("select * into temporary table t from x"));
    assert!(pinned("INSERT INTO pg_temp.t VALUES (1)"));
    assert!(pinned(
        "WITH a AS (SELECT 1) SELECT public.pg_try_advisory_lock(2)"
    ));
    assert!(pinned("SELECT 1; SET work_mem = '1MB'"));
    assert!(pinned("BEGIN; SET statement_timeout = 1; COMMIT"));
}

#[test]
fn quoted_words_are_not_keywords() {
    assert_eq!(classify_query("\"SET\" x = 1"), Effect::None);
    assert_eq!(
        classify_query("SELECT \"pg_advisory_lock\" FROM t"),
        Effect::Pin("session advisory lock"),
        "a quoted name of a session function still pins: erring on the safe side"
    );
}

#[test]
fn transaction_control_is_found_outside_quotes_and_bodies() {
    assert_eq!(transaction_control("CREATE TABLE t (id int)"), None);
    assert_eq!(
        transaction_control("create table t (id int);\ncommit;"),
        Some("commit".into())
    );
    assert_eq!(
        transaction_control("BEGIN; CREATE TABLE t ()"),
        Some("BEGIN".into())
    );
    assert_eq!(
        transaction_control("SAVEPOINT a; ROLLBACK TO SAVEPOINT a; RELEASE a"),
        None
    );
    assert_eq!(
        transaction_control("ROLLBACK TRANSACTION TO a"),
        None,
        "a rollback to a savepoint stays inside the transaction"
    );
    assert_eq!(
        transaction_control("PREPARE TRANSACTION 'x'"),
        Some("PREPARE TRANSACTION".into())
    );
    assert_eq!(transaction_control("PREPARE q AS SELECT 1"), None);
    let body = "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN \
                COMMIT; END $$; SELECT 'commit'; -- commit";
    assert_eq!(transaction_control(body), None);
}
