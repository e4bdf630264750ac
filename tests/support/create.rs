//! Creating keys in tests: through [`KeyManager`], the crate's one way to make a key,
//! in the shape the tests were written in (`store.create(&format, NewKey::new(..))`).

use async_trait::async_trait;
use time::OffsetDateTime;
use tower_api_keys::key::{Environment, KeyFormat, KeyHash, KeyId};
use tower_api_keys::manage::{self, ManageError};
use tower_api_keys::restriction::Restrictions;
use tower_api_keys::scope::Scopes;
use tower_api_keys::store::{CreatedKey, KeyChanges, KeyInfo, KeyStore, StoreError};
use tower_api_keys::{CachedVerifier, KeyManager, KeyRecord, VerifyError};

/// A key for an account and environment, as tests ask for it.
#[derive(Debug, Clone)]
pub struct NewKey {
    account_id: String,
    environment: Environment,
    request: manage::NewKey,
}

impl NewKey {
    pub fn new(
        account_id: impl Into<String>,
        name: impl Into<String>,
        environment: Environment,
    ) -> Self {
        NewKey {
            account_id: account_id.into(),
            environment,
            request: manage::NewKey::named(name),
        }
    }

    pub fn scopes(mut self, scopes: impl Into<Scopes>) -> Self {
        self.request = self.request.scopes(scopes);
        self
    }

    pub fn project(mut self, project_id: impl Into<String>) -> Self {
        self.request = self.request.project(project_id);
        self
    }

    pub fn expires_at(mut self, at: OffsetDateTime) -> Self {
        self.request = self.request.expires_at(at);
        self
    }

    pub fn restrictions(mut self, restrictions: Restrictions) -> Self {
        self.request = self.request.restrictions(restrictions);
        self
    }
}

/// `create`, `rename` and `find_by_hash` on any store, for tests.
#[async_trait]
pub trait StoreForTests {
    /// Creates a key through a [`KeyManager`] over this store. A key asked to have
    /// expired already is created, then set to expire then (the manager refuses past
    /// expiries).
    async fn create(&self, format: &KeyFormat, key: NewKey) -> Result<CreatedKey, StoreError>;
    async fn rename(&self, account_id: &str, id: &KeyId, name: &str)
    -> Result<KeyInfo, StoreError>;
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError>;
}

#[async_trait]
impl<S: KeyStore + Clone> StoreForTests for S {
    async fn create(&self, format: &KeyFormat, key: NewKey) -> Result<CreatedKey, StoreError> {
        let NewKey {
            account_id,
            environment,
            mut request,
        } = key;
        let past = request
            .expires_at
            .filter(|at| *at <= OffsetDateTime::now_utc());
        if past.is_some() {
            request.expires_at = None;
        }
        let format = format.clone().with_environment(environment.clone());
        let manager = KeyManager::new(self.clone(), CachedVerifier::new(self.clone()), format);
        let mut created = manager
            .create_for_account(&account_id, environment, request)
            .await
            .map_err(|error| match error {
                ManageError::LimitReached { limit } => StoreError::LimitReached { limit },
                ManageError::NotFound => StoreError::NotFound,
                ManageError::Unavailable(error) => error,
                other => panic!("the test asked for a key the manager refuses: {other}"),
            })?;
        if let Some(at) = past {
            created.info = self
                .update(
                    &account_id,
                    &created.info.id,
                    &KeyChanges::default().expires_at(Some(at)),
                )
                .await?;
        }
        Ok(created)
    }

    async fn rename(
        &self,
        account_id: &str,
        id: &KeyId,
        name: &str,
    ) -> Result<KeyInfo, StoreError> {
        self.update(account_id, id, &KeyChanges::name(name)).await
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, VerifyError> {
        self.verify(hash).await
    }
}
