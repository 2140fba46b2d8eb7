//! In-process rate limits: token buckets keyed by client IP (failed
//! authentications) or user id (requests), in a sharded map of bounded size.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimit;

const SHARDS: usize = 16;
/// Buckets kept per shard (so at most `SHARDS * MAX_PER_SHARD` per limiter).
const MAX_PER_SHARD: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets of `burst` tokens refilled at `burst / per`, one per key.
pub struct Limiter<K> {
    limit: RateLimit,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<K, Bucket>>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(limit: RateLimit) -> Limiter<K> {
        Limiter {
            limit,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn rate(&self) -> f64 {
        f64::from(self.limit.burst) / self.limit.per.as_secs_f64().max(1e-9)
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate()).min(f64::from(self.limit.burst));
        bucket.at = now;
    }

    /// Seconds until one token is available (at least 1).
    fn retry_after(&self, tokens: f64) -> u64 {
        let wait = (1.0 - tokens).max(0.0) / self.rate();
        (wait.ceil() as u64).max(1)
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, Bucket>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        &self.shards[i]
    }

    /// Takes a token for `key`: `None` when one was there, else how many
    /// seconds until the next one.
    pub fn take(&self, key: &K) -> Option<u64> {
        self.apply(key, true)
    }

    /// Whether `key` is out of tokens (`Some(retry_after)`), taking none.
    pub fn exhausted(&self, key: &K) -> Option<u64> {
        self.apply(key, false)
    }

    fn apply(&self, key: &K, take: bool) -> Option<u64> {
        let now = Instant::now();
        let mut map = match self.shard(key).lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(bucket) = map.get_mut(key) {
            self.refill(bucket, now);
            if bucket.tokens >= 1.0 {
                if take {
                    bucket.tokens -= 1.0;
                }
                return None;
            }
            return Some(self.retry_after(bucket.tokens));
        }
        if !take {
            return None;
        }
        if map.len() >= MAX_PER_SHARD {
            self.prune(&mut map, now);
        }
        map.insert(
            key.clone(),
            Bucket {
                tokens: f64::from(self.limit.burst) - 1.0,
                at: now,
            },
        );
        None
    }

    /// Drops full buckets (they are the same as no bucket); if the shard is
    /// still full, the least recently used half goes.
    fn prune(&self, map: &mut HashMap<K, Bucket>, now: Instant) {
        let burst = f64::from(self.limit.burst);
        map.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * self.rate() < burst
        });
        if map.len() >= MAX_PER_SHARD {
            let mut ages: Vec<Instant> = map.values().map(|b| b.at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            map.retain(|_, b| b.at > cut);
        }
    }
}

/// The Redis key of `ip`'s shared failed-authentication counter.
pub fn shared_key(ip: IpAddr) -> String {
    format!("sessiongate:rl:failed_auth:{ip}")
}

/// The key failed authentications are counted under: the IPv4 address, or
/// the /64 of an IPv6 address (one host usually holds a whole /64).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        },
        v4 => v4,
    }
}

/// The limiters of one configuration.
pub struct RateLimits {
    pub failed_auth: Option<Limiter<IpAddr>>,
    pub per_user: Option<Limiter<String>>,
}

impl RateLimits {
    pub fn new(settings: &crate::config::RateLimitSettings) -> RateLimits {
        RateLimits {
            failed_auth: settings.failed_auth_per_ip.map(Limiter::new),
            per_user: settings.requests_per_user.map(Limiter::new),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(burst: u32, per: u64) -> RateLimit {
        RateLimit {
            burst,
            per: Duration::from_secs(per),
        }
    }

    #[test]
    fn burst_then_refused_with_retry_after() {
        let l: Limiter<u32> = Limiter::new(limit(3, 60));
        assert_eq!(l.exhausted(&1), None);
        for _ in 0..3 {
            assert_eq!(l.take(&1), None);
        }
        assert_eq!(l.exhausted(&1), Some(20));
        assert_eq!(l.take(&1), Some(20));
        assert_eq!(l.take(&2), None);
    }

    #[test]
    fn memory_stays_bounded() {
        let l: Limiter<u32> = Limiter::new(limit(2, 3600));
        for k in 0..(SHARDS * MAX_PER_SHARD * 2) as u32 {
            let _ = l.take(&k);
        }
        let total: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= SHARDS * MAX_PER_SHARD, "{total}");
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(client_key(v6), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
