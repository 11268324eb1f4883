//! Durable state in sled, under `storage.data_dir`: cases in progress, the
//! routing state and the outcome records, with a schema version.
//!
//! Cases in progress are keyed by a keyed hash of their room id; the hash
//! key is derived from the store passphrase and never written down, so the
//! data directory alone cannot link a case to a room. Their values and the
//! routing state (which hold exact times) are sealed under a key derived
//! from the same passphrase (privacy rule 6); the outcome records, which
//! name nobody by design (rule 1), stay readable for `stats` and `export`
//! without it. One process at a time holds the directory, through an OS
//! file lock.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::intake::Case;
use crate::outcome::OutcomeRecord;
use crate::routing::Router;

/// The layout version this build reads and writes.
pub(crate) const SCHEMA_VERSION: u32 = 1;
const VERSION_KEY: &[u8] = b"schema_version";
const ROUTER_KEY: &[u8] = b"router";
const FORGET_KEY: &[u8] = b"forget_due";
/// Marks a sealed value; a value without it was written in the clear by an
/// older build (JSON, so it starts with `{`) and is sealed on its next write.
const SEALED: &[u8] = b"S1";

/// Errors a caller branches on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (a running bot) holds the data directory.
    #[error("the store in {0} is in use by another intake-bot process (a running bot?); stop it first")]
    InUse(PathBuf),
    /// Nothing has been stored yet.
    #[error("no intake-bot store in {0} yet (the bot has not run with this data_dir)")]
    Missing(PathBuf),
    /// The directory holds something this build cannot read.
    #[error("{0}")]
    Foreign(String),
}

/// Paths inside the data directory.
pub(crate) fn state_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("state")
}
/// The matrix-sdk store directory.
pub(crate) fn matrix_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("matrix")
}
/// The persisted Matrix session (device id and access token), sealed.
pub(crate) fn session_file(data_dir: &Path) -> PathBuf {
    data_dir.join("session.sealed")
}
/// Where older builds kept the session in the clear; read once, then removed.
pub(crate) fn legacy_session_file(data_dir: &Path) -> PathBuf {
    data_dir.join("session.json")
}
/// The bot's cross-signing secrets, sealed, while its device is replaced.
pub(crate) fn identity_file(data_dir: &Path) -> PathBuf {
    data_dir.join("identity.sealed")
}

/// One write waiting for the next [`Store::flush`].
#[derive(Debug, Clone)]
enum Write {
    /// A case in progress: saved (`Some`) or deleted (`None`).
    Case(String, Option<Vec<u8>>),
    /// A key of the `meta` tree: set or removed.
    Meta(&'static [u8], Option<Vec<u8>>),
    /// An outcome record; the first write of a record id wins.
    Record(String, Vec<u8>),
}

/// An open store; holds the directory lock for its lifetime.
///
/// Writes are staged in memory and reach the disk together at the next
/// [`Store::flush`], in one sled transaction over the trees: the cases,
/// the routing, the records and each case's handled-event marks that one
/// batch of events produced are durable all together or not at all.
pub struct Store {
    db: sled::Db,
    cases: sled::Tree,
    outcomes: sled::Tree,
    meta: sled::Tree,
    /// Seals case and routing values; `None` for `stats` and `export`,
    /// which read only the outcome records.
    sealer: Option<Sealer>,
    /// Writes not yet flushed, in order.
    staged: std::sync::Mutex<Vec<Write>>,
    _lock: File,
}

/// Takes the data directory's lock without blocking.
pub(crate) fn lock(data_dir: &Path) -> Result<File> {
    let path = data_dir.join("intake-bot.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(TryLockError::WouldBlock) => Err(StoreError::InUse(data_dir.to_owned()).into()),
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

impl Store {
    /// Opens (creating when `create`) the store in `data_dir`.
    pub fn open(data_dir: &Path, create: bool) -> Result<Store> {
        let dir = state_dir(data_dir);
        if !create && !dir.exists() {
            return Err(StoreError::Missing(data_dir.to_owned()).into());
        }
        if create {
            create_private_dir(data_dir)?;
        }
        let lock = lock(data_dir)?;
        let fresh = !dir.exists();
        if !fresh && !dir.join("conf").exists() {
            return Err(StoreError::Foreign(format!(
                "{} exists but is not a sled database written by intake-bot; refusing to touch it",
                dir.display()
            ))
            .into());
        }
        let db = sled::Config::new()
            .path(&dir)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(16 * 1024 * 1024)
            .open()
            .map_err(|e| StoreError::Foreign(format!("cannot open the store in {}: {e}", dir.display())))?;
        let meta = db.open_tree("meta")?;
        match meta.get(VERSION_KEY)? {
            None if fresh => {
                meta.insert(VERSION_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
                db.flush().context("flushing new store")?;
            }
            None => {
                return Err(StoreError::Foreign(format!(
                    "{} has no intake-bot schema version; it is corrupt or belongs to something else",
                    dir.display()
                ))
                .into());
            }
            Some(v) => {
                let v: u32 = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StoreError::Foreign(format!("{}: unreadable schema version", dir.display())))?;
                if v != SCHEMA_VERSION {
                    return Err(StoreError::Foreign(format!(
                        "{}: schema version {v}, this intake-bot reads version {SCHEMA_VERSION}",
                        dir.display()
                    ))
                    .into());
                }
            }
        }
        Ok(Store {
            cases: db.open_tree("cases")?,
            outcomes: db.open_tree("outcomes")?,
            meta,
            db,
            sealer: None,
            staged: std::sync::Mutex::default(),
            _lock: lock,
        })
    }

    /// Seals (and opens) case and routing values with `sealer` from now on.
    pub(crate) fn sealed_with(mut self, sealer: Sealer) -> Store {
        self.sealer = Some(sealer);
        self
    }

    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>> {
        let sealer = self.sealer.as_ref().context("the store was opened without the passphrase")?;
        let mut out = SEALED.to_vec();
        out.extend(sealer.seal(plain));
        Ok(out)
    }

    /// The plaintext of a stored value: sealed, or clear from an older build.
    fn unseal(&self, stored: &[u8]) -> Result<Vec<u8>> {
        match stored.strip_prefix(SEALED) {
            Some(sealed) => self
                .sealer
                .as_ref()
                .context("the store was opened without the passphrase")?
                .open(sealed)
                .context("a sealed value does not open with this passphrase (or was altered)"),
            None => Ok(stored.to_vec()),
        }
    }

    /// Every case in progress, by case key. Unreadable entries are reported
    /// and skipped rather than stopping the bot.
    pub(crate) fn load_cases(&self) -> Result<BTreeMap<String, Case>> {
        let mut out = BTreeMap::new();
        for item in self.cases.iter() {
            let (k, v) = item.context("reading cases")?;
            let key = String::from_utf8_lossy(&k).into_owned();
            match self.unseal(&v).and_then(|v| serde_json::from_slice::<Case>(&v).map_err(anyhow::Error::from)) {
                Ok(c) => {
                    out.insert(key, c);
                }
                Err(e) => tracing::error!(error = %format!("{e:#}"), "skipping an unreadable case in progress"),
            }
        }
        Ok(out)
    }

    fn stage(&self, w: Write) {
        // A poisoned lock only means a panic elsewhere: the list is intact.
        self.staged.lock().unwrap_or_else(|e| e.into_inner()).push(w);
    }

    /// Saves a case in progress under its key (at the next flush).
    pub(crate) fn save_case(&self, key: &str, case: &Case) -> Result<()> {
        self.stage(Write::Case(key.to_owned(), Some(self.seal(&serde_json::to_vec(case)?)?)));
        Ok(())
    }

    /// Deletes a finished case's state (at the next flush).
    pub(crate) fn delete_case(&self, key: &str) -> Result<()> {
        self.stage(Write::Case(key.to_owned(), None));
        Ok(())
    }

    /// The saved routing state, if any.
    pub(crate) fn load_router(&self) -> Result<Option<Router>> {
        match self.meta.get(ROUTER_KEY)? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(&self.unseal(&v)?).context("reading routing state")?)),
        }
    }

    /// Saves the routing state (not yet flushed).
    pub(crate) fn save_router(&self, r: &Router) -> Result<()> {
        self.stage(Write::Meta(ROUTER_KEY, Some(self.seal(&serde_json::to_vec(r)?)?)));
        Ok(())
    }

    /// When the bot's Matrix device is next due to be replaced (Unix
    /// seconds), so that what it knew of finished cases goes with it.
    pub(crate) fn forget_due(&self) -> Result<Option<i64>> {
        match self.meta.get(FORGET_KEY)? {
            None => Ok(None),
            Some(v) => {
                let plain = self.unseal(&v)?;
                let at = std::str::from_utf8(&plain).ok().and_then(|s| s.parse().ok());
                Ok(Some(at.context("reading forget_due")?))
            }
        }
    }

    /// Sets the due time (at the next flush); the caller keeps the earliest.
    pub(crate) fn note_forget_due(&self, at: i64) -> Result<()> {
        self.stage(Write::Meta(FORGET_KEY, Some(self.seal(at.to_string().as_bytes())?)));
        Ok(())
    }

    /// Clears the due time once the device has been replaced.
    pub(crate) async fn clear_forget_due(&self) -> Result<()> {
        self.stage(Write::Meta(FORGET_KEY, None));
        self.flush().await
    }

    /// Stages an outcome record for the next flush, with the rest of its
    /// event. Writing the same record id twice keeps the first record.
    pub(crate) fn stage_record(&self, r: &OutcomeRecord) -> Result<()> {
        self.stage(Write::Record(r.record.clone(), serde_json::to_vec(r)?));
        Ok(())
    }

    /// Writes an outcome record (and whatever else is staged) to disk
    /// before returning.
    pub async fn record(&self, r: &OutcomeRecord) -> Result<()> {
        self.stage_record(r)?;
        self.flush().await
    }

    /// All outcome records, ordered by week then case id.
    pub fn outcomes(&self) -> Result<Vec<OutcomeRecord>> {
        let mut out = Vec::new();
        for item in self.outcomes.iter() {
            let (_, v) = item.context("reading outcomes")?;
            out.push(serde_json::from_slice::<OutcomeRecord>(&v).context("reading an outcome record")?);
        }
        out.sort_by(|a, b| a.week.cmp(&b.week).then(a.record.cmp(&b.record)));
        Ok(out)
    }

    /// Makes every staged write durable, all in one transaction. On an
    /// error nothing of it is applied and the writes stay staged, so a
    /// retry writes the same.
    pub async fn flush(&self) -> Result<()> {
        use sled::Transactional;
        use sled::transaction::ConflictableTransactionError;
        let writes = std::mem::take(&mut *self.staged.lock().unwrap_or_else(|e| e.into_inner()));
        if !writes.is_empty() {
            let applied = (&self.cases, &self.meta, &self.outcomes).transaction(|(cases, meta, outcomes)| {
                for w in &writes {
                    match w {
                        Write::Case(k, Some(v)) => drop(cases.insert(k.as_bytes(), v.as_slice())?),
                        Write::Case(k, None) => drop(cases.remove(k.as_bytes())?),
                        Write::Meta(k, Some(v)) => drop(meta.insert(*k, v.as_slice())?),
                        Write::Meta(k, None) => drop(meta.remove(*k)?),
                        Write::Record(k, v) => {
                            if outcomes.get(k.as_bytes())?.is_none() {
                                outcomes.insert(k.as_bytes(), v.as_slice())?;
                            }
                        }
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
            if let Err(e) = applied {
                let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
                let later = std::mem::replace(&mut *staged, writes);
                staged.extend(later);
                return Err(anyhow::anyhow!("writing the store failed: {e:?}"));
            }
        }
        self.db.flush_async().await.context("flushing store")?;
        Ok(())
    }
}

/// Creates a directory readable only by the bot's user.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    Ok(())
}

/// A 32-byte key for one purpose (`label`), derived from the store passphrase.
fn derive_key(secret: &str, label: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

/// Turns room ids into case keys with a secret-keyed hash.
#[derive(Clone)]
pub(crate) struct RoomKeyer {
    key: [u8; 32],
}

impl std::fmt::Debug for RoomKeyer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoomKeyer { .. }")
    }
}

impl RoomKeyer {
    /// Derives the hash key from the store passphrase.
    pub(crate) fn from_secret(secret: &str) -> RoomKeyer {
        RoomKeyer { key: derive_key(secret, b"intake-bot case key v1") }
    }

    /// The case key of a room: 32 hex characters.
    pub(crate) fn key(&self, room_id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(room_id.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

/// Seals small values the bot must keep but nobody without the store
/// passphrase may read (XChaCha20-Poly1305 under a key derived from it).
#[derive(Clone)]
pub(crate) struct Sealer {
    key: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer { .. }")
    }
}

impl Sealer {
    /// Derives the sealing key from the store passphrase.
    pub(crate) fn from_secret(secret: &str) -> Sealer {
        Sealer { key: derive_key(secret, b"intake-bot seal key v1") }
    }

    /// A random nonce followed by the ciphertext.
    pub(crate) fn seal(&self, plain: &[u8]) -> Vec<u8> {
        use chacha20poly1305::aead::{Aead, KeyInit};
        use rand::RngCore;
        let cipher = chacha20poly1305::XChaCha20Poly1305::new((&self.key).into());
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        // Encrypting a byte slice in memory cannot fail.
        out.extend(cipher.encrypt((&nonce).into(), plain).unwrap_or_default());
        out
    }

    /// The plaintext, or `None` if `sealed` was not sealed with this key or
    /// was altered.
    pub(crate) fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        use chacha20poly1305::aead::{Aead, KeyInit};
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, body) = sealed.split_at(24);
        let cipher = chacha20poly1305::XChaCha20Poly1305::new((&self.key).into());
        cipher.decrypt(chacha20poly1305::XNonce::from_slice(nonce), body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_passphrase_and_unaltered() {
        let s = Sealer::from_secret("passphrase one");
        let sealed = s.seal(b"!room:example.org");
        assert!(!contains(&sealed, b"room"), "sealed text shows the plaintext");
        assert_eq!(s.open(&sealed).as_deref(), Some(&b"!room:example.org"[..]));
        assert_ne!(s.seal(b"x"), s.seal(b"x"), "a fresh nonce each time");
        assert_eq!(Sealer::from_secret("passphrase two").open(&sealed), None);
        let mut bent = sealed;
        *bent.last_mut().unwrap() ^= 1;
        assert_eq!(s.open(&bent), None);
        assert_eq!(s.open(b"short"), None);
    }

    /// A closed case's record: intake completed, counsellor joined, `advice`.
    fn sample_record(id: &str) -> OutcomeRecord {
        OutcomeRecord {
            record: id.into(),
            week: "2026-W48".into(),
            language: "en".into(),
            answers: BTreeMap::new(),
            urgent: false,
            intake_completed: true,
            counsellor_joined: true,
            wait: "none".into(),
            duration: "<5m".into(),
            outcome: "advice".into(),
            step_reached: None,
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// Opens again after a drop. sled's flusher thread may still hold its
    /// file lock for a moment after the handle is dropped (seen under a
    /// loaded test run); a new process, as in production, never sees this.
    fn reopen(dir: &Path) -> Store {
        let mut last = None;
        for _ in 0..50 {
            match Store::open(dir, false) {
                Ok(s) => return s,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("store did not reopen: {last:?}");
    }

    #[test]
    fn keyer_is_keyed_and_stable() {
        let a = RoomKeyer::from_secret("one");
        let b = RoomKeyer::from_secret("two");
        assert_eq!(a.key("!room"), a.key("!room"));
        assert_ne!(a.key("!room"), b.key("!room"));
        assert_ne!(a.key("!room"), a.key("!other"));
        assert_eq!(a.key("!room").len(), 32);
        assert!(!a.key("!room").contains("room"));
    }

    #[tokio::test]
    async fn lock_version_and_records() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Store::open(dir.path(), false).err().and_then(|e| e.downcast::<StoreError>().ok()),
            Some(StoreError::Missing(_))
        ));
        let s = Store::open(dir.path(), true).unwrap();
        // A second holder is refused while the first is open.
        let e = Store::open(dir.path(), false).err().unwrap();
        assert!(matches!(e.downcast_ref::<StoreError>(), Some(StoreError::InUse(_))), "{e}");
        let r = OutcomeRecord {
            intake_completed: false,
            counsellor_joined: false,
            outcome: "stopped".into(),
            step_reached: Some("age".into()),
            ..sample_record("c1")
        };
        s.record(&r).await.unwrap();
        let mut r2 = r.clone();
        r2.outcome = "advice".into();
        s.record(&r2).await.unwrap();
        assert_eq!(s.outcomes().unwrap(), vec![r.clone()]);
        drop(s);
        let s = reopen(dir.path());
        assert_eq!(s.outcomes().unwrap().len(), 1);
        drop(s);
        // A foreign version is refused, never reset.
        {
            let db = sled::open(state_dir(dir.path())).unwrap();
            db.open_tree("meta").unwrap().insert(VERSION_KEY, b"99").unwrap();
            db.flush().unwrap();
        }
        let e = Store::open(dir.path(), true).err().unwrap();
        assert!(e.to_string().contains("schema version 99"), "{e}");
    }

    /// Every file under `dir`, read whole.
    fn all_bytes(dir: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        for e in walk(dir) {
            out.extend(std::fs::read(e).unwrap_or_default());
        }
        out
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
        out
    }

    #[tokio::test]
    async fn cases_routing_and_due_time_are_sealed_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::from_secret("pass");
        let settings = crate::intake::testing::settings_with(&["en"]);
        let (case, _) = Case::start(&settings, "CASEID7".into(), 1_764_000_123);
        let mut router = Router::new(&["@counsellor-planted:hs".to_owned()]);
        router.enqueue("key1", false, false, 1_764_000_456);
        {
            let s = Store::open(dir.path(), true).unwrap().sealed_with(sealer.clone());
            s.save_case("key1", &case).unwrap();
            s.save_router(&router).unwrap();
            s.note_forget_due(1_764_009_999).unwrap();
            // Staged: nothing on disk or readable before the flush.
            assert!(s.cases.is_empty() && s.forget_due().unwrap().is_none());
            s.flush().await.unwrap();
            assert_eq!(s.forget_due().unwrap(), Some(1_764_009_999));
        }
        let disk = all_bytes(dir.path());
        for planted in ["CASEID7", "1764000123", "1764000456", "1764009999", "counsellor-planted"] {
            assert!(!contains(&disk, planted.as_bytes()), "{planted} readable on disk");
        }
        // Positive control: the same search finds what is meant to be clear.
        assert!(contains(&disk, b"schema_version"));
        let s = reopen(dir.path()).sealed_with(sealer);
        assert_eq!(s.load_cases().unwrap().get("key1").map(|c| c.id.as_str()), Some("CASEID7"));
        assert_eq!(s.load_router().unwrap(), Some(router));
        assert_eq!(s.forget_due().unwrap(), Some(1_764_009_999));
        s.clear_forget_due().await.unwrap();
        assert_eq!(s.forget_due().unwrap(), None);
        drop(s);
        // Another passphrase opens nothing; without one, cases are refused too.
        let s = reopen(dir.path()).sealed_with(Sealer::from_secret("other"));
        assert!(s.load_cases().unwrap().is_empty());
        assert!(s.load_router().is_err());
    }

    #[tokio::test]
    async fn values_of_an_older_build_are_read_and_sealed_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::intake::testing::settings_with(&["en"]);
        let (case, _) = Case::start(&settings, "OLDCASE".into(), 1_764_000_000);
        {
            let s = Store::open(dir.path(), true).unwrap();
            s.cases.insert(b"k", serde_json::to_vec(&case).unwrap()).unwrap();
            s.meta.insert(ROUTER_KEY, serde_json::to_vec(&Router::default()).unwrap()).unwrap();
            s.flush().await.unwrap();
        }
        let s = reopen(dir.path()).sealed_with(Sealer::from_secret("pass"));
        let cases = s.load_cases().unwrap();
        assert_eq!(cases.get("k").map(|c| c.id.as_str()), Some("OLDCASE"));
        assert!(s.load_router().unwrap().is_some());
        s.save_case("k", &cases["k"]).unwrap();
        s.flush().await.unwrap();
        assert!(s.cases.get(b"k").unwrap().unwrap().starts_with(SEALED));
    }

    #[tokio::test]
    async fn staged_writes_land_together_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::intake::testing::settings_with(&["en"]);
        let (case, _) = Case::start(&settings, "C1".into(), 1);
        let s = Store::open(dir.path(), true).unwrap().sealed_with(Sealer::from_secret("p"));
        let mut rec = sample_record("r1");
        // One event: the case saved as closing, its record, its deletion.
        s.save_case("k", &case).unwrap();
        s.stage_record(&rec).unwrap();
        s.delete_case("k").unwrap();
        s.save_router(&Router::default()).unwrap();
        assert!(s.outcomes().unwrap().is_empty(), "nothing before the flush");
        s.flush().await.unwrap();
        assert_eq!(s.outcomes().unwrap(), vec![rec.clone()]);
        assert!(s.load_cases().unwrap().is_empty(), "the deletion came after the save");
        assert!(s.load_router().unwrap().is_some());
        // The first record of an id wins, also within a later batch.
        rec.outcome = "other".into();
        s.record(&rec).await.unwrap();
        assert_eq!(s.outcomes().unwrap()[0].outcome, "advice");
        // Without the passphrase nothing is staged at all.
        let plain = reopen_after(s, dir.path());
        assert!(plain.save_case("k2", &case).is_err());
        assert!(plain.staged.lock().unwrap().is_empty());
    }

    fn reopen_after(s: Store, dir: &Path) -> Store {
        drop(s);
        reopen(dir)
    }

    #[test]
    fn foreign_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(state_dir(dir.path())).unwrap();
        std::fs::write(state_dir(dir.path()).join("something"), b"not ours").unwrap();
        let e = Store::open(dir.path(), true).err().unwrap();
        assert!(e.to_string().contains("not a sled database"), "{e}");
        assert!(state_dir(dir.path()).join("something").exists());
    }
}
