//! The bot's Matrix session: the client on its encrypted store, logging
//! in the first time and restoring the same device after that, and the
//! profile (display name, avatar) from the config.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use matrix_sdk::Client;
use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::RequestConfig;
use matrix_sdk::encryption::EncryptionSettings;
use tracing::{debug, info, warn};

use super::scrub_err;
use crate::config::{Config, MatrixConfig, Secrets};
use crate::store;

/// Builds the client on the encrypted store and logs in or restores the
/// saved session (same device, so E2EE keeps working).
/// Returns whether this was a fresh login (no saved session).
pub async fn connect(config: &Config, secrets: &Secrets) -> Result<(Client, bool)> {
    let data_dir = &config.storage.data_dir;
    let matrix_dir = store::matrix_dir(data_dir);
    store::create_private_dir(&matrix_dir)?;
    let session_path = store::session_file(data_dir);
    let client = Client::builder()
        .homeserver_url(&config.matrix.homeserver_url)
        .sqlite_store(&matrix_dir, Some(&secrets.store_passphrase))
        .request_config(RequestConfig::new().timeout(Duration::from_secs(60)).max_retry_time(Duration::from_secs(60)))
        .with_encryption_settings(EncryptionSettings { auto_enable_cross_signing: true, ..Default::default() })
        // The SDK would otherwise hand each invited counsellor the keys to
        // the room's whole history (uploaded as a file to the homeserver's
        // media store, which a room purge does not remove), also to one who
        // then declines. The summary carries what the counsellor needs.
        .with_enable_share_history_on_invite(false)
        .build()
        .await
        .context("building the Matrix client (wrong store passphrase or a damaged store?)")?;
    debug!("Matrix client built on the encrypted store");
    if session_path.exists() {
        let text =
            std::fs::read_to_string(&session_path).with_context(|| format!("reading {}", session_path.display()))?;
        let session: MatrixSession = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a saved session", session_path.display()))?;
        anyhow::ensure!(
            session.meta.user_id.as_str() == config.matrix.user_id,
            "{} belongs to another account than matrix.user_id; use a fresh data_dir for a new account",
            session_path.display()
        );
        client.restore_session(session).await.context("restoring the saved Matrix session")?;
        info!("restored the saved Matrix session");
    } else {
        client
            .matrix_auth()
            .login_username(&config.matrix.user_id, &secrets.password)
            .initial_device_display_name(&config.matrix.device_name)
            .await
            .map_err(|e| anyhow::anyhow!("logging in as matrix.user_id failed: {}", scrub_err(&e)))?;
        let session = client.matrix_auth().session().context("no session after login")?;
        write_private(&session_path, &serde_json::to_vec(&session)?)?;
        info!("logged in with a new device; session saved");
        return Ok((client, true));
    }
    Ok((client, false))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Sets the bot's display name and avatar from the config where they
/// differ. The avatar is uploaded again only when the file changed (its
/// hash is kept in the data directory). Failures are logged, never fatal.
pub async fn apply_profile(client: Client, m: MatrixConfig, data_dir: std::path::PathBuf) {
    let account = client.account();
    if let Some(name) = &m.display_name {
        match account.get_display_name().await {
            Ok(current) if current.as_deref() == Some(name.as_str()) => {}
            _ => match account.set_display_name(Some(name)).await {
                Ok(()) => info!("display name set from matrix.display_name"),
                Err(e) => warn!(error = %scrub_err(&e), "could not set the display name"),
            },
        }
    }
    let Some(path) = &m.avatar_file else { return };
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read matrix.avatar_file; avatar left as it is");
            return;
        }
    };
    let mime: mime::Mime = match crate::config::avatar_mime(path).and_then(|m| m.parse().ok()) {
        Some(m) => m,
        None => return,
    };
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    let marker = data_dir.join("avatar.sha256");
    if std::fs::read_to_string(&marker).is_ok_and(|h| h.trim() == hash) {
        return;
    }
    match account.upload_avatar(&mime, data).await {
        Ok(_) => {
            info!("avatar uploaded from matrix.avatar_file");
            if let Err(e) = std::fs::write(&marker, &hash) {
                warn!(error = %e, "could not remember the avatar's hash; it is uploaded again next start");
            }
        }
        Err(e) => warn!(error = %scrub_err(&e), "could not upload the avatar"),
    }
}

/// Empties the bot's `m.direct` account data on the homeserver, which
/// would list visitors' user ids next to their rooms. The bot joins new
/// rooms without adding to it; this clears what an older version or
/// another client left there.
pub async fn forget_direct_rooms(client: Client) {
    use matrix_sdk::ruma::events::direct::DirectEventContent;
    let account = client.account();
    let listed = match account.account_data::<DirectEventContent>().await {
        Ok(Some(raw)) => !raw.deserialize().is_ok_and(|d| d.is_empty()),
        Ok(None) => false,
        Err(e) => {
            debug!(error = %scrub_err(&e), "could not read m.direct");
            false
        }
    };
    if listed {
        match account.set_account_data(DirectEventContent::default()).await {
            Ok(_) => info!("m.direct account data emptied (it listed visitors)"),
            Err(e) => warn!(error = %scrub_err(&e), "could not empty m.direct account data"),
        }
    }
}
