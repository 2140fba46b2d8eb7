//! What revocation tests ask the real gateway: whether a session is served
//! from the cache (its hit counter), and how long after a Redis command the
//! gateway stops passing it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{get, TestGateway};

/// The value of one sample of `/metrics`: `name` with exactly `labels`.
pub fn sample(gateway: &TestGateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = get(gateway.admin_addr(), "/metrics", &[]).body;
    let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, got) = match series.split_once('{') {
                Some((metric, rest)) => (metric, labels_of(rest.strip_suffix('}')?)),
                None => (series, BTreeMap::new()),
            };
            (metric == name && got == want).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

fn labels_of(text: &str) -> BTreeMap<&str, &str> {
    text.split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once("=\"")?;
            Some((k, v.trim_end_matches('"')))
        })
        .collect()
}

pub fn cache_hits(gateway: &TestGateway) -> f64 {
    sample(
        gateway,
        "sessiongate_session_lookups_total",
        &[("source", "cache"), ("result", "hit")],
    )
}

/// The role the gateway passes upstream for `id`, or the status when it refuses.
pub fn seen(gateway: &TestGateway, id: &str) -> Result<String, u16> {
    let resp = get(gateway.addr, "/", &[("Cookie", &format!("sid={id}"))]);
    if resp.status != 200 {
        return Err(resp.status);
    }
    Ok(resp.echoed("X-User-Role").join(","))
}

/// Requests `id` until one is served from the cache (the hit counter moves):
/// the cache is live and holds the session.
pub fn cached(gateway: &TestGateway, id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = cache_hits(gateway);
        let role = seen(gateway, id);
        // A hit that answered 401 was a remembered "no such key" from before
        // the session was written (its SET evicts that within milliseconds).
        if cache_hits(gateway) > before {
            if let Ok(role) = &role {
                return role.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{id} was never served from the cache ({role:?}):\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Requests `id` until the gateway no longer passes it as `role`; returns
/// how long after `since` that was, failing past `limit`.
pub fn gone(
    gateway: &TestGateway,
    id: &str,
    role: &str,
    since: Instant,
    limit: Duration,
) -> Duration {
    loop {
        let now = seen(gateway, id);
        if now.as_deref() != Ok(role) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "{id} was still served as {role} {:?} after the command",
            since.elapsed()
        );
    }
}
