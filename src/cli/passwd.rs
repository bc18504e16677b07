//! `pgtenant passwd`: read a password on stdin, print a PostgreSQL SCRAM-SHA-256 verifier.

use std::io::BufRead;

/// Reads one line from stdin and prints its verifier.
pub fn run() -> Result<(), String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;

    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err("empty password on stdin".into());
    }
    println!(
        "{}",
        postgres_protocol::password::scram_sha_256(password.as_bytes())
    );
    Ok(())
}
