//! The bot's Matrix session: the client on its encrypted store, logging
//! in the first time and restoring the same device after that, and the
//! profile (display name, avatar) from the config.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::RequestConfig;
use matrix_sdk::encryption::EncryptionSettings;
use matrix_sdk::{Client, SqliteStoreConfig};
use tracing::{debug, error, info, warn};

use super::scrub_err;
use crate::config::{Config, MatrixConfig, Secrets};
use crate::store::{self, Sealer};
use matrix_sdk_crypto::types::SecretsBundle;

/// The SDK's four SQLite stores (state, crypto, event cache, media) with
/// SQLite's page cache kept small.
///
/// By default each store opens up to four connections per CPU core, each
/// with a 2 MB page cache: up to 64 MB of the bot's heap on two cores, for
/// databases that hold a few MB. The low-memory settings (one connection
/// per core, 500 kB each, WAL capped at 2 MB) bound that to 4 MB; the bot's
/// reads are small and mostly served from the SDK's own in-memory state.
fn store_config(matrix_dir: &Path, passphrase: &str) -> SqliteStoreConfig {
    SqliteStoreConfig::with_low_memory_config(matrix_dir).passphrase(Some(passphrase))
}

/// Builds the client on the encrypted store and logs in or restores the
/// saved session (same device, so E2EE keeps working).
/// Returns whether this was a fresh login (no saved session).
pub async fn connect(config: &Config, secrets: &Secrets) -> Result<(Client, bool)> {
    let data_dir = &config.storage.data_dir;
    let matrix_dir = store::matrix_dir(data_dir);
    let session_path = store::session_file(data_dir);
    if device_change_interrupted(data_dir) && matrix_dir.exists() {
        // A device change was cut off after the old session was dropped:
        // the old device's store goes, as the change would have done.
        warn!("finishing an interrupted device change: removing the old device's store");
        std::fs::remove_dir_all(&matrix_dir).with_context(|| format!("removing {}", matrix_dir.display()))?;
    }
    store::create_private_dir(&matrix_dir)?;
    let client = Client::builder()
        .homeserver_url(&config.matrix.homeserver_url)
        .sqlite_store_with_config_and_cache_path(store_config(&matrix_dir, &secrets.store_passphrase), None::<&Path>)
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
    let sealer = Sealer::from_secret(&secrets.store_passphrase);
    if let Some(session) = read_session(data_dir, &sealer)? {
        anyhow::ensure!(
            session.meta.user_id.as_str() == config.matrix.user_id,
            "{} belongs to another account than matrix.user_id; use a fresh data_dir for a new account",
            session_path.display()
        );
        client.restore_session(session).await.context("restoring the saved Matrix session")?;
        info!("restored the saved Matrix session");
        return Ok((client, false));
    }
    client
        .matrix_auth()
        .login_username(&config.matrix.user_id, &secrets.password)
        .initial_device_display_name(&config.matrix.device_name)
        .await
        .map_err(|e| anyhow::anyhow!("logging in as matrix.user_id failed: {}", scrub_err(&e)))?;
    let session = client.matrix_auth().session().context("no session after login")?;
    write_private(&session_path, &sealer.seal(&serde_json::to_vec(&session)?))?;
    info!("logged in with a new device; session saved (sealed)");
    if store::identity_file(data_dir).exists() {
        adopt_identity(&client, data_dir, &sealer).await?;
    } else if let Some(pass) = &secrets.recovery_passphrase {
        restore_identity(&client, pass).await;
    }
    delete_other_devices(&client, &config.matrix.user_id, &secrets.password).await;
    Ok((client, true))
}

/// Whether a device change was cut off after it dropped the old session
/// (its sealed identity is there, no session is): the next [`connect`]
/// finishes it.
pub(crate) fn device_change_interrupted(data_dir: &Path) -> bool {
    !store::session_file(data_dir).exists() && store::identity_file(data_dir).exists()
}

/// After a fresh login: deletes the bot account's other devices (a device
/// change cut off before its logout, a lost or stolen `data_dir`), so that
/// nobody encrypts for a device whose keys may be in someone else's hands.
/// The bot's account is the bot's alone. Failures are logged, not fatal.
async fn delete_other_devices(client: &Client, user_id: &str, password: &str) {
    use matrix_sdk::ruma::api::client::uiaa;
    let own = client.device_id().map(ToOwned::to_owned);
    let others: Vec<_> = match client.devices().await {
        Ok(r) => r.devices.into_iter().map(|d| d.device_id).filter(|d| Some(d) != own.as_ref()).collect(),
        Err(e) => {
            warn!(error = %scrub_err(&e), "could not list the bot's devices");
            return;
        }
    };
    if others.is_empty() {
        return;
    }
    let result = match client.delete_devices(&others, None).await {
        Err(e) if e.as_uiaa_response().is_some() => {
            let session = e.as_uiaa_response().and_then(|i| i.session.clone());
            let mut auth = uiaa::Password::new(
                uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new(user_id.to_owned())),
                password.to_owned(),
            );
            auth.session = session;
            client.delete_devices(&others, Some(uiaa::AuthData::Password(auth))).await.map(drop)
        }
        other => other.map(drop),
    };
    match result {
        Ok(()) => info!(devices = others.len(), "the bot's old devices deleted on the homeserver"),
        Err(e) => warn!(error = %scrub_err(&e), "deleting the bot's old devices failed; they stay listed"),
    }
}

/// A fresh login with a recovery passphrase (a lost `data_dir`): the
/// cross-signing keys come back from secret storage on the homeserver and
/// sign the new device. Where there is none yet, or it does not open, the
/// bot goes on unsigned and says so.
async fn restore_identity(client: &Client, passphrase: &str) {
    let ss = client.encryption().secret_storage();
    match ss.is_enabled().await {
        Ok(true) => {}
        Ok(false) => {
            info!("no secret storage on the homeserver yet; the bot's identity is stored there once it has one");
            return;
        }
        Err(e) => {
            warn!(error = %scrub_err(&e), "could not read secret storage; the new device stays unsigned");
            return;
        }
    }
    let store = match ss.open_secret_store(passphrase).await {
        Ok(s) => s,
        Err(e) => {
            error!(
                error = %scrub_err(&e),
                "the recovery passphrase does not open the bot's secret storage; the new device stays unsigned \
                 (counsellors' clients show it unverified)"
            );
            return;
        }
    };
    match store.import_secrets().await {
        Ok(()) => info!("the bot's identity restored from secret storage; the new device is signed with it"),
        Err(e) => error!(error = %scrub_err(&e), "restoring the bot's identity from secret storage failed"),
    }
}

/// With a recovery passphrase: makes sure the bot's cross-signing keys are
/// in secret storage on the homeserver (created with the passphrase the
/// first time), and nothing else: no room-key backup. In the background,
/// after the SDK has set up cross-signing.
pub async fn keep_identity_in_secret_storage(client: Client, passphrase: String) {
    use matrix_sdk::ruma::events::secret::request::SecretName;
    let encryption = client.encryption();
    encryption.wait_for_e2ee_initialization_tasks().await;
    if !encryption.cross_signing_status().await.is_some_and(|s| s.is_complete()) {
        warn!("the bot does not hold its cross-signing keys; nothing to keep in secret storage");
        return;
    }
    let ss = encryption.secret_storage();
    let store = match ss.is_enabled().await {
        Ok(true) => match ss.open_secret_store(&passphrase).await {
            Ok(s) => s,
            Err(e) => {
                error!(error = %scrub_err(&e), "the recovery passphrase does not open the bot's secret storage");
                return;
            }
        },
        Ok(false) => {
            match ss.create_secret_store().with_passphrase(&passphrase).await {
                Ok(_) => info!("secret storage created with the recovery passphrase; cross-signing keys stored"),
                Err(e) => warn!(error = %scrub_err(&e), "creating secret storage failed; retried at the next start"),
            }
            return;
        }
        Err(e) => {
            warn!(error = %scrub_err(&e), "could not read secret storage; retried at the next start");
            return;
        }
    };
    match store.get_secret(SecretName::CrossSigningMasterKey).await {
        Ok(Some(_)) => debug!("cross-signing keys already in secret storage"),
        _ => match store.export_secrets().await {
            Ok(()) => info!("cross-signing keys stored in secret storage"),
            Err(e) => warn!(error = %scrub_err(&e), "storing the cross-signing keys failed; retried at the next start"),
        },
    }
}

/// The saved session, opened with the store passphrase. A session an older
/// build saved in the clear is sealed now and its clear copy removed.
fn read_session(data_dir: &Path, sealer: &Sealer) -> Result<Option<MatrixSession>> {
    let path = store::session_file(data_dir);
    if path.exists() {
        let session = serde_json::from_slice(&read_sealed(&path, sealer)?)
            .with_context(|| format!("{} does not hold a saved session", path.display()))?;
        return Ok(Some(session));
    }
    let legacy = store::legacy_session_file(data_dir);
    if !legacy.exists() {
        return Ok(None);
    }
    let text = std::fs::read(&legacy).with_context(|| format!("reading {}", legacy.display()))?;
    let session: MatrixSession =
        serde_json::from_slice(&text).with_context(|| format!("{} is not a saved session", legacy.display()))?;
    write_private(&path, &sealer.seal(&text))?;
    wipe(&legacy)?;
    info!("the saved session is now sealed with the store passphrase; the clear copy is removed");
    Ok(Some(session))
}

/// A file written by [`Sealer::seal`], opened.
fn read_sealed(path: &Path, sealer: &Sealer) -> Result<Vec<u8>> {
    let sealed = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    sealer.open(&sealed).with_context(|| format!("{} does not open with the store passphrase", path.display()))
}

/// Overwrites a file with zeros, then removes it, so that a secret is not
/// left in the file's old blocks on a filesystem that writes in place.
fn wipe(path: &Path) -> Result<()> {
    use std::io::Write;
    let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    let mut f =
        std::fs::OpenOptions::new().write(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    f.write_all(&vec![0u8; usize::try_from(len).unwrap_or(0)])?;
    f.sync_all()?;
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
}

/// After the device was replaced: signs the new device with the bot's
/// cross-signing keys kept from the old one, so counsellors' and visitors'
/// clients see the same identity, and removes the sealed copy.
async fn adopt_identity(client: &Client, data_dir: &Path, sealer: &Sealer) -> Result<()> {
    let path = store::identity_file(data_dir);
    let bundle: SecretsBundle = serde_json::from_slice(&read_sealed(&path, sealer)?)
        .with_context(|| format!("{} does not hold cross-signing keys", path.display()))?;
    let encryption = client.encryption();
    encryption
        .import_secrets_bundle(&bundle)
        .await
        .map_err(|e| anyhow::anyhow!("importing the bot's cross-signing keys failed: {}", scrub_err(&e)))?;
    // The import signs the device keys it uploads; where the SDK had
    // uploaded them already, this adds the signature.
    match encryption.get_own_device().await {
        Ok(Some(device)) => {
            if let Err(e) = device.verify().await {
                warn!(error = %scrub_err(&e), "signing the new device with the cross-signing key failed");
            }
        }
        Ok(None) => warn!("the new device is not known to the store yet; it is signed by the import alone"),
        Err(e) => warn!(error = %scrub_err(&e), "reading the new device failed"),
    }
    wipe(&path)?;
    info!("new device signed with the bot's cross-signing identity, kept across the device change");
    Ok(())
}

/// Replaces the bot's Matrix device, so that its store forgets the cases
/// that have ended: their visitors' devices and Olm sessions, their rooms'
/// keys and state, which the SDK has no call to delete one by one (privacy
/// rule 6). Called only when no chat is open. The cross-signing keys are
/// exported from the store and kept sealed until the new device has taken
/// them ([`adopt_identity`]); the old device is logged out (deleted on the
/// homeserver) and its store and session removed. The caller restarts the
/// process, which logs in anew.
///
/// Without a complete set of cross-signing keys the device is kept (a new
/// identity would warn every counsellor) and the bot restarts anyway.
pub async fn replace_device(
    client: Client,
    config: &Config,
    secrets: &Secrets,
    store: store::Store,
) -> Result<super::Ran> {
    let data_dir = &config.storage.data_dir;
    let matrix_dir = store::matrix_dir(data_dir);
    info!("no chat open and a finished case is due to be forgotten: replacing the bot's Matrix device");
    let sealer = Sealer::from_secret(&secrets.store_passphrase);
    // A second, short-lived handle on the store's directory: the sync has
    // stopped and the worker has ended, so nothing else writes meanwhile.
    let exported =
        matrix_sdk::encryption::export_secrets_bundle_from_store(&matrix_dir, Some(&secrets.store_passphrase)).await;
    let bundle = match exported {
        Ok(Some((_, bundle))) => bundle,
        other => {
            let why = other.err().map_or_else(|| "the Matrix store holds no account".to_owned(), |e| scrub_err(&e));
            warn!(error = %why, "the cross-signing keys could not be exported; device kept, identity unchanged");
            store.clear_forget_due().await?;
            return Ok(super::Ran::Restart);
        }
    };
    write_private(&store::identity_file(data_dir), &sealer.seal(&serde_json::to_vec(&bundle)?))?;
    drop(bundle);
    // From here a start without a session finishes the change (`connect`):
    // a kill at any point leaves a state the next start can go on from.
    let session_path = store::session_file(data_dir);
    if session_path.exists() {
        std::fs::remove_file(&session_path).with_context(|| format!("removing {}", session_path.display()))?;
    }
    super::worker::crash_point("device-change").await;
    match client.matrix_auth().logout().await {
        Ok(_) => info!("old device logged out and deleted on the homeserver"),
        Err(e) => warn!(error = %scrub_err(&e), "logging the old device out failed; it stays listed on the homeserver"),
    }
    drop(client);
    std::fs::remove_dir_all(&matrix_dir).with_context(|| format!("removing {}", matrix_dir.display()))?;
    store.clear_forget_due().await?;
    info!("old device's store removed; starting again with a new device");
    Ok(super::Ran::Restart)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_files_open_with_their_passphrase_and_are_wiped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.sealed");
        let sealer = Sealer::from_secret("p");
        write_private(&path, &sealer.seal(b"secret")).unwrap();
        assert_eq!(read_sealed(&path, &sealer).unwrap(), b"secret");
        let e = read_sealed(&path, &Sealer::from_secret("other")).unwrap_err();
        assert!(e.to_string().contains("does not open with the store passphrase"), "{e}");
        wipe(&path).unwrap();
        assert!(!path.exists());
    }
}
