//! Certificates from an ACME server (RFC 8555, through `instant-acme`):
//! the names of `[acme]` are ordered over HTTP-01 (answered on the plain
//! listener before any routing or session check) or TLS-ALPN-01 (answered on
//! the TLS listener before the handshake reaches the gateway's own TLS
//! settings, `alpn.rs`), only for challenges this gateway is waiting on.
//! The account and the issued chain and key are kept in `[acme] storage`,
//! so a restart serves the certificate without ordering again; it is renewed
//! at two thirds of its lifetime, with backoff and jitter after a failure,
//! the old one serving until the new one is in place (installed through the
//! same resolver as a reload).
//!
//! With `share_key`, a fleet shares one account and one certificate
//! through `[redis]` (under `redis_prefix`): a lock lets one gateway order,
//! the challenge answers are readable by every gateway (the ACME server may
//! validate through any of them), and the issued chain and key (the key and
//! the account's credentials sealed with AES-256-GCM under `share_key`) are
//! stored there for every gateway to serve.

mod alpn;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use crate::config::{AcmeChallenge, AcmeKeyType, AcmeSettings};
use crate::metrics;
use crate::tls::CertificateFiles;

pub use alpn::TlsAlpnChallenges;

/// Where HTTP-01 challenges are answered.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The challenges this gateway is waiting on: `token:<token>` (HTTP-01) to
/// its key authorization, `alpn:<name>` (TLS-ALPN-01) to the hex SHA-256 of
/// its key authorization.
static CHALLENGES: LazyLock<Mutex<HashMap<String, String>>> = LazyLock::new(Default::default);

/// The longest wait between two looks at the certificate.
const LOOK_EVERY: Duration = Duration::from_secs(3600);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fleet's Redis connection and key prefix, for challenge lookups.
static SHARED: OnceLock<(redis::aio::MultiplexedConnection, String)> = OnceLock::new();

/// The answer to the challenge `key` (`token:<token>` or `alpn:<name>`),
/// when this gateway (or, with `share_key`, another of its fleet) is
/// waiting on it.
async fn answer(key: &str) -> Option<String> {
    if let Some(answer) = lock(&CHALLENGES).get(key).cloned() {
        return Some(answer);
    }
    let (conn, prefix) = SHARED.get()?;
    let mut conn = conn.clone();
    let mut get = redis::cmd("GET");
    get.arg(format!("{prefix}{key}"));
    let get = get.query_async::<Option<String>>(&mut conn);
    tokio::time::timeout(Duration::from_millis(500), get)
        .await
        .ok()?
        .ok()?
}

/// The answer to an HTTP-01 validation request for `path`, when it names a
/// token this gateway (or, with `share_key`, another of its fleet) is
/// waiting on.
pub async fn http01(path: &[u8]) -> Option<String> {
    let token = path.strip_prefix(CHALLENGE_PREFIX.as_bytes())?;
    let token = std::str::from_utf8(token).ok()?;
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    answer(&format!("token:{token}")).await
}

/// Where the issued chain and key are kept.
pub fn files(settings: &AcmeSettings) -> CertificateFiles {
    CertificateFiles {
        cert: settings.storage.join("cert.pem").display().to_string(),
        key: settings.storage.join("key.pem").display().to_string(),
        default: false,
    }
}

/// Starts the manager on a thread of its own; `install` is called after a
/// certificate was issued and stored, to serve it.
pub fn spawn(settings: AcmeSettings, install: Arc<dyn Fn() + Send + Sync>) -> std::io::Result<()> {
    crate::background::spawn("sessiongate-acme", "ACME: could not start", move || {
        run(settings, install)
    })
}

async fn run(settings: AcmeSettings, install: Arc<dyn Fn() + Send + Sync>) {
    let shared = match settings.share_key {
        Some(key) => loop {
            match Shared::connect(&settings, key).await {
                Ok(shared) => break Some(shared),
                Err(e) => {
                    tracing::warn!(error = %e, "ACME: the fleet's Redis is unreachable; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        },
        None => None,
    };
    let mut failures: u32 = 0;
    loop {
        if let Some(shared) = &shared {
            match shared.pull(&settings).await {
                Ok(true) => {
                    tracing::info!(names = ?settings.names, "ACME: the fleet's certificate stored and served");
                    install();
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "ACME: could not read the fleet's certificate")
                }
            }
        }
        // A fleet looks for a certificate another gateway renewed often.
        let look = if shared.is_some() {
            FLEET_LOOK
        } else {
            LOOK_EVERY
        };
        let wait = match renew_in(&settings) {
            Some(wait) if !wait.is_zero() => wait.min(look),
            _ => {
                if let Some(shared) = &shared {
                    match shared.lock().await {
                        Ok(true) => {}
                        // Another gateway is ordering: its certificate comes
                        // through Redis.
                        Ok(false) => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ACME: could not take the fleet's lock");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            continue;
                        }
                    }
                }
                let ordered = order(&settings, shared.as_ref()).await;
                let ordered = match (ordered, &shared) {
                    (Ok(()), Some(shared)) => shared.push(&settings).await,
                    (result, _) => result,
                };
                if let Some(shared) = &shared {
                    shared.unlock().await;
                }
                match ordered {
                    Ok(()) => {
                        metrics::acme_order("issued");
                        tracing::info!(names = ?settings.names, "ACME: certificate issued and stored");
                        install();
                        failures = 0;
                        continue;
                    }
                    Err(e) => {
                        metrics::acme_order("failed");
                        failures = failures.saturating_add(1);
                        let wait = backoff(failures);
                        tracing::warn!(error = %e, retry_in = ?wait, "ACME: order failed; the current certificate (if any) keeps serving");
                        wait
                    }
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// 5 s after the first failure, doubling to an hour, with up to a quarter
/// of jitter so that a fleet does not retry in step.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(5)
        .saturating_mul(1 << failures.saturating_sub(1).min(10))
        .min(LOOK_EVERY);
    let jitter = rand::random::<f64>() * 0.25;
    base.mul_f64(1.0 + jitter)
}

/// How long until the stored certificate is due for renewal (two thirds of
/// its lifetime); `None` when there is none that covers every name.
fn renew_in(settings: &AcmeSettings) -> Option<Duration> {
    let files = files(settings);
    let loaded = crate::tls::load(&files).ok()?;
    if !settings
        .names
        .iter()
        .all(|n| crate::tls::covers(&loaded.names, n))
    {
        return None;
    }
    let lifetime = loaded
        .not_after
        .duration_since(loaded.not_before)
        .unwrap_or_default();
    let due = loaded.not_before + lifetime * 2 / 3;
    Some(due.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Orders a certificate for every name and stores it.
async fn order(settings: &AcmeSettings, shared: Option<&Shared>) -> anyhow::Result<()> {
    let account = account(settings, shared).await?;
    let identifiers: Vec<Identifier> = settings
        .names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut waiting = Vec::new();
    let answered = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => anyhow::bail!("authorization is {other:?}"),
            }
            let kind = match settings.challenge {
                AcmeChallenge::Http01 => ChallengeType::Http01,
                AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let mut challenge = authz.challenge(kind).ok_or_else(|| {
                anyhow::anyhow!(
                    "the server offers no {} challenge",
                    settings.challenge.as_str()
                )
            })?;
            let key_authorization = challenge.key_authorization();
            let (key, value) = match settings.challenge {
                AcmeChallenge::Http01 => (
                    format!("token:{}", challenge.token),
                    key_authorization.as_str().to_owned(),
                ),
                AcmeChallenge::TlsAlpn01 => (
                    format!(
                        "alpn:{}",
                        challenge.identifier().to_string().to_ascii_lowercase()
                    ),
                    alpn::hex(key_authorization.digest().as_ref()),
                ),
            };
            if let Some(shared) = shared {
                shared.publish(&key, &value).await?;
            }
            lock(&CHALLENGES).insert(key.clone(), value);
            waiting.push(key);
            challenge.set_ready().await?;
        }
        anyhow::Ok(())
    }
    .await;
    let status = match answered {
        Ok(()) => order
            .poll_ready(&RetryPolicy::default())
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    // Answered or not, the challenges are over.
    forget(&waiting);
    if let Some(shared) = shared {
        shared.forget(&waiting).await;
    }
    let status = status?;
    if status != OrderStatus::Ready {
        anyhow::bail!("the order is {status:?}");
    }
    let key = finalize(settings, &mut order).await?;
    let chain = order.poll_certificate(&RetryPolicy::default()).await?;
    let files = files(settings);
    write_private(Path::new(&files.key), key.as_bytes())?;
    write_private(Path::new(&files.cert), chain.as_bytes())?;
    Ok(())
}

/// Finalizes `order` with a new key of `[acme] key_type`; its PEM.
async fn finalize(
    settings: &AcmeSettings,
    order: &mut instant_acme::Order,
) -> anyhow::Result<String> {
    let algorithm = match settings.key_type {
        AcmeKeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        AcmeKeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
    };
    let key = rcgen::KeyPair::generate_for(algorithm)?;
    let mut params = rcgen::CertificateParams::new(settings.names.clone())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    Ok(key.serialize_pem())
}

/// Ends the challenges `keys` name (`token:…`, `alpn:…`) on this gateway.
fn forget(keys: &[String]) {
    let mut challenges = lock(&CHALLENGES);
    for key in keys {
        challenges.remove(key);
    }
}

/// The account: the fleet's (with `share_key`), else from
/// `storage/account.json`, else created (and stored there and in Redis).
async fn account(settings: &AcmeSettings, shared: Option<&Shared>) -> anyhow::Result<Account> {
    let builder = match &settings.ca {
        Some(ca) => Account::builder_with_root(ca)?,
        None => Account::builder()?,
    };
    let stored = settings.storage.join("account.json");
    if let Some(shared) = shared {
        if let Some(bytes) = shared.get_sealed("account").await? {
            write_private(&stored, &bytes)?;
        }
    }
    if let Ok(bytes) = std::fs::read(&stored) {
        let credentials: AccountCredentials = serde_json::from_slice(&bytes)?;
        return Ok(builder.from_credentials(credentials).await?);
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await?;
    let json = serde_json::to_string(&credentials)?;
    write_private(&stored, json.as_bytes())?;
    if let Some(shared) = shared {
        shared.set_sealed("account", json.as_bytes()).await?;
    }
    Ok(account)
}

/// How often a fleet's gateway looks in Redis for a certificate another
/// one renewed.
const FLEET_LOOK: Duration = Duration::from_secs(30);

/// How long the fleet's order lock and challenge tokens live.
const FLEET_HOLD_MS: u64 = 600_000;

/// The fleet's state in `[redis]`.
struct Shared {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
    key: ring::aead::LessSafeKey,
    /// This gateway, as the lock's holder.
    id: String,
}

impl Shared {
    async fn connect(settings: &AcmeSettings, key: [u8; 32]) -> anyhow::Result<Shared> {
        let client = redis::Client::open(settings.redis_url.as_str())?;
        let conn = client.get_multiplexed_async_connection().await?;
        let _ = SHARED.set((conn.clone(), settings.redis_prefix.clone()));
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key)
            .map_err(|_| anyhow::anyhow!("share_key is not an AES-256 key"))?;
        Ok(Shared {
            conn,
            prefix: settings.redis_prefix.clone(),
            key: ring::aead::LessSafeKey::new(key),
            id: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
        })
    }

    fn name(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    /// Takes the fleet's order lock; false when another gateway holds it.
    async fn lock(&self) -> anyhow::Result<bool> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.name("lock"))
            .arg(&self.id)
            .arg("NX")
            .arg("PX")
            .arg(FLEET_HOLD_MS)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(taken.is_some())
    }

    /// Releases the lock if this gateway still holds it.
    async fn unlock(&self) {
        let released: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            )
            .arg(1)
            .arg(self.name("lock"))
            .arg(&self.id)
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "ACME: could not release the fleet's lock (it expires by itself)");
        }
    }

    /// Makes a challenge's answer readable by every gateway.
    async fn publish(&self, key: &str, answer: &str) -> anyhow::Result<()> {
        let () = redis::cmd("SET")
            .arg(self.name(key))
            .arg(answer)
            .arg("PX")
            .arg(FLEET_HOLD_MS)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn forget(&self, keys: &[String]) {
        for key in keys {
            let _: redis::RedisResult<i64> = redis::cmd("DEL")
                .arg(self.name(key))
                .query_async(&mut self.conn.clone())
                .await;
        }
    }

    /// Stores the issued chain, and its key sealed.
    async fn push(&self, settings: &AcmeSettings) -> anyhow::Result<()> {
        let files = files(settings);
        let chain = std::fs::read(&files.cert)?;
        let key = std::fs::read(&files.key)?;
        self.set_sealed("key", &key).await?;
        let () = redis::cmd("SET")
            .arg(self.name("cert"))
            .arg(chain)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Takes the fleet's certificate when it is not the one stored here;
    /// true when it did.
    async fn pull(&self, settings: &AcmeSettings) -> anyhow::Result<bool> {
        let chain: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.name("cert"))
            .query_async(&mut self.conn.clone())
            .await?;
        let Some(chain) = chain else {
            return Ok(false);
        };
        let files = files(settings);
        if std::fs::read(&files.cert).ok().as_deref() == Some(&chain[..]) {
            return Ok(false);
        }
        let Some(key) = self.get_sealed("key").await? else {
            return Ok(false);
        };
        write_private(Path::new(&files.key), &key)?;
        write_private(Path::new(&files.cert), &chain)?;
        Ok(true)
    }

    async fn set_sealed(&self, what: &str, plain: &[u8]) -> anyhow::Result<()> {
        use base64::Engine;
        let mut nonce = [0u8; 12];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(what.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut all = nonce.to_vec();
        all.extend(sealed);
        let text = base64::engine::general_purpose::STANDARD.encode(all);
        let () = redis::cmd("SET")
            .arg(self.name(what))
            .arg(text)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn get_sealed(&self, what: &str) -> anyhow::Result<Option<Vec<u8>>> {
        use base64::Engine;
        let text: Option<String> = redis::cmd("GET")
            .arg(self.name(what))
            .query_async(&mut self.conn.clone())
            .await?;
        let Some(text) = text else {
            return Ok(None);
        };
        let all = base64::engine::general_purpose::STANDARD.decode(text)?;
        if all.len() < 12 {
            anyhow::bail!("the fleet's {what} is not sealed");
        }
        let (nonce, sealed) = all.split_at(12);
        let mut sealed = sealed.to_vec();
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let plain = self
            .key
            .open_in_place(nonce, ring::aead::Aad::from(what.as_bytes()), &mut sealed)
            .map_err(|_| anyhow::anyhow!("the fleet's {what} does not open with share_key"))?;
        Ok(Some(plain.to_vec()))
    }
}

/// Writes `bytes` to `path` readable by this user only, through a
/// temporary file renamed over it (a reader never sees half a file).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp: PathBuf = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
