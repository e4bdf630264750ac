//! The request-time rules for a known key, as plain functions.
//!
//! Applied by the layer after the lookup, in this order; the first rule that fails
//! decides the answer:
//!
//! 1. revoked → 401 `api_key_revoked`
//! 2. expired → 401 `api_key_expired`
//! 3. environment (when the deployment declares one) → 401 `environment_mismatch`
//!
//! Scope checks are not here: they belong to each route, in the
//! [`RequireScope`](crate::RequireScope) extractor or the
//! [`ScopeGuardLayer`](crate::guard::ScopeGuardLayer).
//!
//! ```
//! use tower_api_keys::{AuthError, KeyRecord, clock::SystemClock, key::{Environment, KeyId}};
//! use tower_api_keys::policy::check_key;
//!
//! let record = KeyRecord::new(KeyId::new("ak_1"), "k", "acct", Environment::TEST);
//! assert_eq!(check_key(&record, Some(&Environment::TEST), &SystemClock), Ok(()));
//! assert_eq!(
//!     check_key(&record, Some(&Environment::LIVE), &SystemClock),
//!     Err(AuthError::EnvironmentMismatch)
//! );
//! ```

use crate::clock::Clock;
use crate::error::AuthError;
use crate::key::Environment;
use crate::record::KeyRecord;

/// Checks a known key against the request-time rules, in the documented order.
///
/// `deployment` is the environment this deployment serves (`None`: any). The clock is
/// read only when the key has an expiry.
pub fn check_key(
    record: &KeyRecord,
    deployment: Option<&Environment>,
    clock: &dyn Clock,
) -> Result<(), AuthError> {
    if record.is_revoked() {
        return Err(AuthError::Revoked);
    }
    if record.expires_at.is_some() && record.is_expired_at(clock.now()) {
        return Err(AuthError::Expired);
    }
    if deployment.is_some_and(|env| *env != record.environment) {
        return Err(AuthError::EnvironmentMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::key::KeyId;
    use time::macros::datetime;

    #[test]
    fn the_first_failing_rule_decides() {
        let clock = ManualClock::new(datetime!(2026-06-01 0:00 UTC));
        let base = KeyRecord::new(KeyId::new("ak_1"), "k", "a", Environment::TEST);
        let live = Some(&Environment::LIVE);

        // Revoked, expired and of the wrong environment: revoked wins.
        let all_wrong = base
            .clone()
            .with_revoked_at(Some(datetime!(2026-05-01 0:00 UTC)))
            .with_expires_at(Some(datetime!(2026-05-01 0:00 UTC)));
        assert_eq!(check_key(&all_wrong, live, &clock), Err(AuthError::Revoked));

        let expired = base
            .clone()
            .with_expires_at(Some(datetime!(2026-06-01 0:00 UTC)));
        assert_eq!(check_key(&expired, live, &clock), Err(AuthError::Expired));

        assert_eq!(
            check_key(&base, live, &clock),
            Err(AuthError::EnvironmentMismatch)
        );
        assert_eq!(check_key(&base, None, &clock), Ok(()));
    }

    #[test]
    fn expiry_is_exclusive_of_the_last_second() {
        let clock = ManualClock::new(datetime!(2026-06-01 0:00 UTC));
        let key = KeyRecord::new(KeyId::new("ak_1"), "k", "a", Environment::LIVE)
            .with_expires_at(Some(datetime!(2026-06-01 0:00:01 UTC)));
        assert_eq!(check_key(&key, None, &clock), Ok(()));
        clock.advance(time::Duration::seconds(1));
        assert_eq!(check_key(&key, None, &clock), Err(AuthError::Expired));
    }
}
