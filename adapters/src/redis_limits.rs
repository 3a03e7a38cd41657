//! Rate limits and login lockouts shared by the nodes of a cluster (`cluster::SharedLimits`),
//! in Redis: one key per limited thing, under the cluster's prefix, each changed by one Lua
//! script so that nodes racing on a key serialize in Redis, and timed by Redis's own clock
//! (`TIME`), never a node's.
//!
//! - a quota is GCRA: the key holds the theoretical arrival time of the next request, in
//!   milliseconds, and expires when it has fully decayed;
//! - a lockout is a hash (`count` of failures, `until` when the lock ends) that expires
//!   `forget` after the last failure (or when its lock ends, if later): the count starts over.
//!
//! Redis is not the source of truth here either: a restart forgets the counts, which only
//! lets a client start over, and while Redis is away or slow every call fails within
//! [`CALL`] and, for [`PAUSE`] after a failure, at once, so that each node decides alone (see
//! `SharedLimits`) without waiting on Redis for every request.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use deadpool_redis::redis;
use gatehouse_actors::cluster::{LockoutPolicy, Quota, SharedLimits};
use gatehouse_actors::ports::BoxFuture;
use tokio::time::Instant;

/// The longest a call waits for Redis.
pub const CALL: Duration = Duration::from_millis(250);
/// After a failure, calls fail at once for this long.
pub const PAUSE: Duration = Duration::from_secs(1);

/// Milliseconds now, by Redis's clock.
const NOW: &str = "local t = redis.call('TIME') \
                   local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) ";

/// GCRA on KEYS[1]; ARGV: period (ms), burst. Answers 0 when admitted, else the wait in ms.
const TAKE: &str = "local period = tonumber(ARGV[1]) \
     local tolerance = period * math.max(tonumber(ARGV[2]) - 1, 0) \
     local tat = tonumber(redis.call('GET', KEYS[1])) or now \
     if tat < now then tat = now end \
     local allowed_at = tat - tolerance \
     if allowed_at > now then return allowed_at - now end \
     local next_tat = tat + period \
     redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', string.format('%d', next_tat - now)) \
     return 0";

/// Counts a failure on KEYS[1]; ARGV: free, base (ms), max (ms), forget (ms). Answers 1 when
/// this failure is the one that locks.
const FAIL: &str = "local count = redis.call('HINCRBY', KEYS[1], 'count', 1) \
     local free = tonumber(ARGV[1]) \
     local keep = tonumber(ARGV[4]) \
     if count > free then \
       local doublings = math.min(count - free - 1, 30) \
       local lock = math.min(tonumber(ARGV[2]) * (2 ^ doublings), tonumber(ARGV[3])) \
       redis.call('HSET', KEYS[1], 'until', string.format('%d', now + lock)) \
       if lock > keep then keep = lock end \
     end \
     redis.call('PEXPIRE', KEYS[1], string.format('%d', keep)) \
     if count == free + 1 then return 1 end \
     return 0";

/// The longest lock still running among KEYS, in ms (0: none).
const LOCKED: &str = "local left = 0 \
     for _, key in ipairs(KEYS) do \
       local u = tonumber(redis.call('HGET', key, 'until')) \
       if u and u - now > left then left = u - now end \
     end \
     return left";

/// Why the shared limits could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cluster.redis_url: {0}")]
pub struct RedisLimitsError(String);

/// The cluster's shared limits in one Redis.
pub struct RedisLimits {
    pool: deadpool_redis::Pool,
    prefix: String,
    /// Until when calls fail at once (Redis failed lately).
    paused_until: Mutex<Option<Instant>>,
}

impl RedisLimits {
    /// Limits under `prefix` (the cluster's, so that several clusters share one Redis) in the
    /// Redis at `url`. Connects on first use.
    pub fn new(url: &str, prefix: &str) -> Result<RedisLimits, RedisLimitsError> {
        let pool = deadpool_redis::Config::from_url(url)
            .builder()
            .map_err(|e| RedisLimitsError(e.to_string()))?
            .max_size(8)
            .wait_timeout(Some(CALL))
            .create_timeout(Some(CALL))
            .recycle_timeout(Some(CALL))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| RedisLimitsError(e.to_string()))?;
        Ok(RedisLimits {
            pool,
            prefix: format!("{prefix}limit:"),
            paused_until: Mutex::new(None),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs `script` (after [`NOW`]) on `keys` with `args`: its integer answer.
    async fn eval(&self, script: &str, keys: &[String], args: &[i64]) -> Result<i64, String> {
        {
            let paused = self
                .paused_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if paused.is_some_and(|until| Instant::now() < until) {
                return Err("Redis failed lately; deciding on this node alone".into());
            }
        }
        let call = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            redis::cmd("EVAL")
                .arg(format!("{NOW}{script}"))
                .arg(keys.len())
                .arg(keys)
                .arg(args)
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        let result = match tokio::time::timeout(CALL, call).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer from Redis within {CALL:?}")),
        };
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &result {
            Ok(_) => {
                if paused.take().is_some() {
                    tracing::info!("shared rate limits are back in Redis");
                }
            }
            Err(e) => {
                if paused.is_none() {
                    tracing::warn!(error = %e, "shared rate limits are unavailable; each node \
                        limits on its own until Redis answers");
                }
                metrics::counter!(gatehouse_actors::telemetry::names::SHARED_LIMIT_FAILURES)
                    .increment(1);
                *paused = Some(Instant::now() + PAUSE);
            }
        }
        result
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn wait(ms: i64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms as u64))
}

impl SharedLimits for RedisLimits {
    fn take(&self, key: String, quota: Quota) -> BoxFuture<'_, Result<Option<Duration>, String>> {
        Box::pin(async move {
            let answer = self
                .eval(
                    TAKE,
                    &[self.key(&key)],
                    &[ms(quota.period).max(1), i64::from(quota.burst)],
                )
                .await?;
            Ok(wait(answer))
        })
    }

    fn locked(&self, keys: Vec<String>) -> BoxFuture<'_, Result<Option<Duration>, String>> {
        Box::pin(async move {
            let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
            Ok(wait(self.eval(LOCKED, &keys, &[]).await?))
        })
    }

    fn fail(&self, key: String, policy: LockoutPolicy) -> BoxFuture<'_, Result<bool, String>> {
        Box::pin(async move {
            let args = [
                i64::from(policy.free),
                ms(policy.base),
                ms(policy.max),
                ms(policy.forget).max(1),
            ];
            Ok(self.eval(FAIL, &[self.key(&key)], &args).await? == 1)
        })
    }

    fn clear(&self, key: String) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            // A script too, so that a cleared key is cleared under the same pause rules.
            self.eval(
                "redis.call('DEL', KEYS[1]) return 0",
                &[self.key(&key)],
                &[],
            )
            .await
            .map(|_| ())
        })
    }
}
