//! Looking a key up: the [`KeyVerifier`] trait.
//!
//! A verifier answers one question: which key has this hash? It returns the
//! [`KeyRecord`], `None` for "no such key", or a [`VerifyError`] when it could not tell
//! (the database is down). The three are different answers: an unknown key is a 401
//! and is cached briefly; a backend failure is a 503 and is never cached.
//!
//! Every store in [`store`](crate::store) is a verifier. A verifier of your own, here
//! one that asks another service:
//!
//! ```
//! use tower_api_keys::{KeyRecord, KeyVerifier, VerifyError, key::KeyHash};
//!
//! struct AuthService { /* an HTTP client, a pool, … */ }
//!
//! #[async_trait::async_trait]
//! impl KeyVerifier for AuthService {
//!     async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
//!         let _ = hash.to_hex(); // send the hash, never the key
//!         Err(VerifyError::backend("auth service unreachable"))
//!     }
//! }
//! ```

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::key::{KeyHash, KeyId};
use crate::limit::credits::CreditStore;
use crate::record::KeyRecord;

/// Finds the key record for a key hash.
///
/// Wrap it in a [`CachedVerifier`](crate::CachedVerifier) to put it behind the layer.
#[async_trait]
pub trait KeyVerifier: Send + Sync + 'static {
    /// The record of the key with this hash; `Ok(None)` if there is none.
    ///
    /// Return revoked and expired keys as records (with `revoked_at` / `expires_at`
    /// set) so that callers get `api_key_revoked` / `api_key_expired` rather than
    /// `invalid_api_key`.
    async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError>;

    /// Where the balances of the keys this verifier returns live, if they carry credits
    /// (every store returns itself). The layer spends credits through it; a key with
    /// credits from a verifier without one is refused (503), never let through free.
    fn credit_store(&self) -> Option<Arc<dyn CreditStore>> {
        None
    }
}

#[async_trait]
impl<V: KeyVerifier + ?Sized> KeyVerifier for Arc<V> {
    async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
        (**self).verify(hash).await
    }

    fn credit_store(&self) -> Option<Arc<dyn CreditStore>> {
        (**self).credit_store()
    }
}

#[async_trait]
impl<V: KeyVerifier + ?Sized> KeyVerifier for Box<V> {
    async fn verify(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
        (**self).verify(hash).await
    }

    fn credit_store(&self) -> Option<Arc<dyn CreditStore>> {
        (**self).credit_store()
    }
}

/// What a cache of verified keys forgets when keys change:
/// [`CachedVerifier`](crate::CachedVerifier) is one. The PostgreSQL store's listener
/// calls it for changes made on other instances, and
/// [`KeyManager`](crate::manage::KeyManager) for its own, so neither needs to know the
/// cache's type.
pub trait Invalidate: Send + Sync + 'static {
    /// Forgets every cached answer for key `id`.
    fn invalidate_key_id(&self, id: &KeyId);
    /// Forgets every cached answer for the keys of `account_id`.
    fn invalidate_account(&self, account_id: &str);
    /// Forgets everything.
    fn invalidate_all(&self);
}

/// The verifier could not answer: its backend failed or timed out.
///
/// Answered with 503 `auth_unavailable`; the cause goes to `tracing` at `error` level
/// and never into a response body. Cheap to clone (callers waiting on the same lookup
/// share it).
#[derive(Clone)]
pub struct VerifyError {
    kind: VerifyErrorKind,
    source: Option<Arc<dyn Error + Send + Sync>>,
}

/// What went wrong in a [`VerifyError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyErrorKind {
    /// The backend answered with an error or could not be reached.
    Backend,
    /// The backend did not answer in time.
    Timeout,
}

impl VerifyError {
    /// The backend failed with `source`.
    pub fn backend(source: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        VerifyError {
            kind: VerifyErrorKind::Backend,
            source: Some(Arc::from(source.into())),
        }
    }

    /// The backend did not answer in time.
    #[must_use]
    pub fn timeout() -> Self {
        VerifyError {
            kind: VerifyErrorKind::Timeout,
            source: None,
        }
    }

    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> VerifyErrorKind {
        self.kind
    }
}

impl fmt::Debug for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.source) {
            (VerifyErrorKind::Timeout, _) => f.write_str("key verifier timed out"),
            (_, Some(source)) => write!(f, "key verifier backend failed: {source}"),
            (_, None) => f.write_str("key verifier backend failed"),
        }
    }
}

impl Error for VerifyError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}
