//! Unit tests of configuration loading and validation: defaults, the budget fit, and the
//! one-line errors that name the offending key.

use super::*;

#[test]
fn identifiers_must_be_plain_lowercase() {
    assert!(check_identifier("acme_2").is_ok());
    assert!(check_identifier("Acme").is_err());
    assert!(check_identifier("2acme").is_err());
    assert!(check_identifier("a;drop").is_err());
    assert!(check_identifier("").is_err());
}

#[test]
fn example_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgtenant.toml");
    let config = Config::from_file(&path).expect("example config must stay valid");
    assert_eq!(config.tenants.len(), 2);
    assert_eq!(config.tenants["globex"].pool_mode, PoolMode::Session);
}

#[test]
fn bad_values_name_their_key() {
    let file: ConfigFile =
        toml::from_str("[proxy]\ntls = \"disabled\"\n[[tenants]]\nname = \"Bad Name\"\n")
            .expect("parses");
    let err = Config::from_parsed(file, Path::new("/")).expect_err("invalid name");
    assert!(err.to_string().starts_with("tenants[0].name"), "{err}");
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    let file: ConfigFile = toml::from_str(text).expect("parses");
    Config::from_parsed(file, Path::new("/"))
}

#[test]
fn max_wave_failures_above_one_hundred_is_refused() {
    let err = parse("[proxy]\ntls = \"disabled\"\n[migrations]\nmax_wave_failures = 150\n")
        .expect_err("not a percentage");
    let expected = "migrations.max_wave_failures: 150 is not a percentage; use 0 to 100";
    assert_eq!(err.to_string(), expected);
}

#[test]
fn reserve_must_leave_room_for_tenants() {
    let err = parse("[proxy]\ntls = \"disabled\"\n[budget]\nmax_connections = 20\nreserve = 20\n")
        .expect_err("no room");
    assert!(err.to_string().starts_with("budget.reserve"), "{err}");
}

#[test]
fn tenants_that_cannot_fit_are_refused() {
    let mut text =
        String::from("[proxy]\ntls = \"disabled\"\n[budget]\nmax_connections = 12\nreserve = 2\n");
    for i in 0..6 {
        text.push_str(&format!("[[tenants]]\nname = \"t{i}\"\npool_size = 2\n"));
    }
    let err = parse(&text).expect_err("12 needed, 10 available");
    assert!(err.to_string().contains("need at least 12"), "{err}");
}

/// More ranked tenants than the budget has connections still load: their pools open
/// connections on demand and share the budget by eviction.
#[test]
fn unpinned_tenants_are_promised_nothing() {
    let mut text =
        String::from("[proxy]\ntls = \"disabled\"\n[budget]\nmax_connections = 10\nreserve = 2\n");
    for i in 0..50 {
        text.push_str(&format!("[[tenants]]\nname = \"t{i}\"\n"));
    }
    assert!(parse(&text).is_ok());
}

#[test]
fn pinned_tiers_count_at_their_size() {
    let mut text =
        String::from("[proxy]\ntls = \"disabled\"\n[budget]\nmax_connections = 10\nreserve = 2\n");
    for i in 0..3 {
        text.push_str(&format!("[[tenants]]\nname = \"t{i}\"\ntier = \"hot\"\n"));
    }
    let err = parse(&text).expect_err("3 hot tenants need 15, 8 available");
    assert!(err.to_string().contains("need at least 15"), "{err}");
}

#[test]
fn unknown_key_is_named() {
    let err = toml::from_str::<ConfigFile>("[proxy]\nlisten_addr = \"x\"\n")
        .expect_err("unknown key must fail");
    assert!(err.to_string().contains("listen_addr"), "{err}");
}
