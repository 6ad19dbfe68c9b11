//! A node's secrets: its WireGuard private key, kept in a state file so that the node's identity
//! survives restarts, and the seed of its other random choices, fresh from the OS on every
//! start.
//!
//! The key file holds the key in base64, as WireGuard's private key files do, and is created
//! with mode 0600 in a directory of mode 0700. A key file that others may read is refused, as
//! ssh refuses a private key others can read: the key is then no longer the node's alone.
//!
//! `--seed` derives everything from a 64-bit number instead, so that tests are reproducible;
//! 64 bits are far from a key's 252, so the binaries warn when it is used.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use node_core::StaticSecret;
use rand::rngs::OsRng;
use rand::RngCore as _;

/// The file in the state directory that holds the private key.
pub const KEY_FILE: &str = "private-key";

/// What a node is started with.
pub enum Secrets {
    /// From the OS's random source, the key from the state directory.
    Random {
        /// The WireGuard private key.
        private_key: StaticSecret,
        /// The seed of the node's generator (ICE credentials, tie-breakers, session indices).
        rng_seed: [u8; 32],
    },
    /// Everything derived from `--seed`, for tests.
    Seeded(u64),
}

impl Secrets {
    /// The node's secrets: derived from `seed` when one is given (with a warning), otherwise
    /// the key from `state_dir` (created on the first start) and a seed from the OS.
    pub fn load(seed: Option<u64>, state_dir: &Path) -> anyhow::Result<Self> {
        if let Some(seed) = seed {
            tracing::warn!(
                seed,
                "--seed makes the node's keys predictable from 64 bits: for tests only"
            );
            return Ok(Self::Seeded(seed));
        }
        let mut rng_seed = [0; 32];
        OsRng.fill_bytes(&mut rng_seed);
        Ok(Self::Random {
            private_key: load_or_create_key(state_dir)?,
            rng_seed,
        })
    }

    /// A seed for what needs no secrecy (reconnect jitter).
    pub fn jitter_seed(&self) -> u64 {
        match self {
            Self::Random { .. } => OsRng.next_u64(),
            Self::Seeded(seed) => seed.rotate_left(32),
        }
    }
}

/// The private key in `dir`'s [`KEY_FILE`]; a new one from the OS's random source, written
/// there, when there is none yet.
pub fn load_or_create_key(dir: &Path) -> anyhow::Result<StaticSecret> {
    let path = dir.join(KEY_FILE);
    match fs::symlink_metadata(&path) {
        Ok(meta) => {
            anyhow::ensure!(
                meta.file_type().is_file(),
                "{} is not a regular file",
                path.display()
            );
            let mode = meta.permissions().mode();
            anyhow::ensure!(
                mode & 0o077 == 0,
                "{} may be read by others (mode {:o}): run `chmod 600 {}`, or remove it for a new key",
                path.display(),
                mode & 0o777,
                path.display()
            );
            let text = fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            parse_key(&text).with_context(|| format!("{} holds no private key", path.display()))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => create_key(dir, &path),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn create_key(dir: &Path, path: &PathBuf) -> anyhow::Result<StaticSecret> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let mut bytes = [0; 32];
    OsRng.fill_bytes(&mut bytes);
    // `create_new`: two nodes started at once on one directory must not both write a key.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(format!("{}\n", STANDARD.encode(bytes)).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), "New private key");
    Ok(StaticSecret::from(bytes))
}

fn parse_key(text: &str) -> anyhow::Result<StaticSecret> {
    let bytes = STANDARD.decode(text.trim()).context("not base64")?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("{} bytes instead of 32", b.len()))?;
    Ok(StaticSecret::from(bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use node_core::PublicKey;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zta-identity-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn public(key: &StaticSecret) -> [u8; 32] {
        PublicKey::from(key).to_bytes()
    }

    #[test]
    fn the_key_is_created_private_and_kept_across_starts() {
        let dir = temp_dir("kept").join("state");
        let first = load_or_create_key(&dir).unwrap();
        let meta = fs::metadata(dir.join(KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let again = load_or_create_key(&dir).unwrap();
        assert_eq!(
            public(&first),
            public(&again),
            "the identity survives a restart"
        );
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn keys_of_two_nodes_differ() {
        let (a, b) = (temp_dir("a"), temp_dir("b"));
        let (ka, kb) = (
            load_or_create_key(&a).unwrap(),
            load_or_create_key(&b).unwrap(),
        );
        assert_ne!(public(&ka), public(&kb));
        fs::remove_dir_all(a).unwrap();
        fs::remove_dir_all(b).unwrap();
    }

    #[test]
    fn a_key_others_may_read_or_a_malformed_one_is_refused() {
        let dir = temp_dir("refused");
        load_or_create_key(&dir).unwrap();
        let path = dir.join(KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create_key(&dir).err().unwrap().to_string();
        assert!(error.contains("may be read by others"), "{error}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not a key\n").unwrap();
        let error = format!("{:#}", load_or_create_key(&dir).err().unwrap());
        assert!(error.contains("holds no private key"), "{error}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn seeds_from_the_os_differ_and_a_test_seed_is_kept() {
        let dir = temp_dir("seeds");
        let seeds: Vec<[u8; 32]> = (0..2)
            .map(|_| match Secrets::load(None, &dir).unwrap() {
                Secrets::Random { rng_seed, .. } => rng_seed,
                Secrets::Seeded(_) => unreachable!(),
            })
            .collect();
        assert_ne!(seeds[0], seeds[1]);
        assert!(matches!(
            Secrets::load(Some(7), &dir).unwrap(),
            Secrets::Seeded(7)
        ));
        fs::remove_dir_all(dir).unwrap();
    }
}
