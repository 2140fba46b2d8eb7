//! Certificates from an ACME server (RFC 8555, through `instant-acme`):
//! the names of `[acme]` are ordered over HTTP-01, answered on the plain
//! listener before any routing or session check, and only for tokens this
//! gateway is waiting on. The account and the issued chain and key are
//! kept in `[acme] storage`, so a restart serves the certificate without
//! ordering again; it is renewed at two thirds of its lifetime, with backoff
//! and jitter after a failure, the old one serving until the new one is in
//! place (installed through the same resolver as a reload).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use crate::config::AcmeSettings;
use crate::metrics;
use crate::tls::CertificateFiles;

/// Where HTTP-01 challenges are answered.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The HTTP-01 tokens this gateway is waiting on, with their key authorizations.
static CHALLENGES: LazyLock<Mutex<HashMap<String, String>>> = LazyLock::new(Default::default);

/// The longest wait between two looks at the certificate.
const LOOK_EVERY: Duration = Duration::from_secs(3600);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The answer to an HTTP-01 validation request for `path`, when it names a
/// token this gateway is waiting on.
pub fn http01(path: &[u8]) -> Option<String> {
    let token = path.strip_prefix(CHALLENGE_PREFIX.as_bytes())?;
    let token = std::str::from_utf8(token).ok()?;
    lock(&CHALLENGES).get(token).cloned()
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
    let mut failures: u32 = 0;
    loop {
        let wait = match renew_in(&settings) {
            Some(wait) if !wait.is_zero() => wait.min(LOOK_EVERY),
            _ => match order(&settings).await {
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
            },
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
async fn order(settings: &AcmeSettings) -> anyhow::Result<()> {
    let account = account(settings).await?;
    let identifiers: Vec<Identifier> = settings
        .names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut tokens = Vec::new();
    let answered = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => anyhow::bail!("authorization is {other:?}"),
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| anyhow::anyhow!("the server offers no http-01 challenge"))?;
            let key_authorization = challenge.key_authorization().as_str().to_owned();
            lock(&CHALLENGES).insert(challenge.token.clone(), key_authorization);
            tokens.push(challenge.token.clone());
            challenge.set_ready().await?;
        }
        anyhow::Ok(())
    }
    .await;
    let status = match answered {
        Ok(()) => order.poll_ready(&RetryPolicy::default()).await,
        Err(e) => {
            forget(&tokens);
            return Err(e);
        }
    };
    forget(&tokens);
    let status = status?;
    if status != OrderStatus::Ready {
        anyhow::bail!("the order is {status:?}");
    }
    let key = order.finalize().await?;
    let chain = order.poll_certificate(&RetryPolicy::default()).await?;
    let files = files(settings);
    write_private(Path::new(&files.key), key.as_bytes())?;
    write_private(Path::new(&files.cert), chain.as_bytes())?;
    Ok(())
}

fn forget(tokens: &[String]) {
    let mut challenges = lock(&CHALLENGES);
    for token in tokens {
        challenges.remove(token);
    }
}

/// The account, from `storage/account.json` or created (and stored).
async fn account(settings: &AcmeSettings) -> anyhow::Result<Account> {
    let builder = match &settings.ca {
        Some(ca) => Account::builder_with_root(ca)?,
        None => Account::builder()?,
    };
    let stored = settings.storage.join("account.json");
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
    write_private(&stored, serde_json::to_string(&credentials)?.as_bytes())?;
    Ok(account)
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
