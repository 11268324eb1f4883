//! The secrets the bot needs at run time: from the environment, or from
//! files the config names; never from the config file itself.

use std::fmt;
use std::path::Path;

use super::MatrixConfig;

/// The secrets the bot needs at run time, never read from the config itself.
pub struct Secrets {
    /// The bot's account password (needed for the first login only).
    pub password: String,
    /// Encrypts the SDK's store; also keys the hashes of room ids.
    pub store_passphrase: String,
    /// A Synapse admin token (`INTAKE_BOT_ADMIN_TOKEN`, else
    /// `matrix.admin_token_file`, else `privacy.purge_admin_token_file`).
    pub admin_token: Option<String>,
    /// Opens the bot's secret storage on the homeserver
    /// (`INTAKE_BOT_RECOVERY_PASSPHRASE`, else `matrix.recovery_passphrase_file`).
    pub recovery_passphrase: Option<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

impl Secrets {
    /// From `INTAKE_BOT_PASSWORD` / `INTAKE_BOT_STORE_PASSPHRASE`, else from
    /// the files named in `[matrix]`.
    pub fn load(m: &MatrixConfig, purge_token_file: Option<&Path>) -> anyhow::Result<Secrets> {
        let admin_token = match (m.admin_token_file.as_deref(), purge_token_file) {
            (Some(f), _) => Some(secret("INTAKE_BOT_ADMIN_TOKEN", Some(f), "matrix.admin_token_file")?),
            (None, Some(f)) => Some(secret("INTAKE_BOT_ADMIN_TOKEN", Some(f), "privacy.purge_admin_token_file")?),
            (None, None) => std::env::var("INTAKE_BOT_ADMIN_TOKEN").ok().filter(|v| !v.is_empty()),
        };
        let recovery_passphrase = match m.recovery_passphrase_file.as_deref() {
            Some(f) => Some(secret("INTAKE_BOT_RECOVERY_PASSPHRASE", Some(f), "matrix.recovery_passphrase_file")?),
            None => std::env::var("INTAKE_BOT_RECOVERY_PASSPHRASE").ok().filter(|v| !v.is_empty()),
        };
        Ok(Secrets {
            admin_token,
            recovery_passphrase,
            password: secret("INTAKE_BOT_PASSWORD", m.password_file.as_deref(), "matrix.password_file")?,
            store_passphrase: secret(
                "INTAKE_BOT_STORE_PASSPHRASE",
                m.store_passphrase_file.as_deref(),
                "matrix.store_passphrase_file",
            )?,
        })
    }
}

fn secret(var: &str, file: Option<&Path>, key: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    if let Ok(v) = std::env::var(var)
        && !v.is_empty()
    {
        return Ok(v);
    }
    let Some(file) = file else {
        anyhow::bail!("no secret: set {var} or the config key `{key}`");
    };
    let v = std::fs::read_to_string(file).with_context(|| format!("reading `{key}` ({})", file.display()))?;
    let v = v.trim_end_matches(['\n', '\r']).to_owned();
    anyhow::ensure!(!v.is_empty(), "`{key}` ({}) is empty", file.display());
    Ok(v)
}
