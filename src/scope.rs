//! Scopes: what a key may do.
//!
//! The built-in scopes nest: `read` ⊂ `write` ⊂ `admin`. A `write` key may read, an
//! `admin` key may do everything, including what custom scopes guard. A custom scope
//! (`billing:read`, `webhooks`) is held only by naming it (or by holding `admin`).
//!
//! ```
//! use tower_api_keys::scope::{Scope, Scopes};
//!
//! let scopes: Scopes = "write billing:read".parse().unwrap();
//! assert!(scopes.allows(&Scope::Read));
//! assert!(scopes.allows(&Scope::Write));
//! assert!(!scopes.allows(&Scope::Admin));
//! assert!(scopes.allows(&Scope::custom("billing:read")));
//! assert!(!scopes.allows(&Scope::custom("billing:write")));
//! ```
//!
//! Handlers guard themselves with [`RequireScope<S>`](crate::RequireScope) and a marker
//! type; [`scope_marker!`](crate::scope_marker) declares one for a custom scope.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// One permission.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Read access.
    Read,
    /// Read and write access.
    Write,
    /// Everything.
    Admin,
    /// A scope of the application's own, such as `billing:read`.
    Custom(Arc<str>),
}

/// A scope string is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {0:?}: scopes are 1-64 characters of letters, digits, and `:._-`")]
pub struct InvalidScope(pub String);

impl Scope {
    /// A custom scope.
    ///
    /// # Panics
    /// If the name is not a valid scope (see [`InvalidScope`]); use `str::parse` for
    /// input from users.
    #[must_use]
    pub fn custom(name: &str) -> Self {
        name.parse().expect("invalid custom scope")
    }

    /// The scope's name: `read`, `write`, `admin` or the custom string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
            Scope::Custom(name) => name,
        }
    }

    /// Whether holding `self` grants `required`.
    #[must_use]
    pub fn grants(&self, required: &Scope) -> bool {
        match (self, required) {
            (Scope::Admin, _) => true,
            (Scope::Write, Scope::Read | Scope::Write) => true,
            (Scope::Read, Scope::Read) => true,
            (Scope::Custom(held), Scope::Custom(wanted)) => held == wanted,
            _ => false,
        }
    }
}

impl FromStr for Scope {
    type Err = InvalidScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            _ if !s.is_empty()
                && s.len() <= 64
                && s.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-')
                }) =>
            {
                Ok(Scope::Custom(s.into()))
            }
            _ => Err(InvalidScope(s.chars().take(80).collect())),
        }
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The scopes a key holds. Sorted, without duplicates.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Scopes(Arc<[Scope]>);

impl Scopes {
    /// No scopes: such a key authenticates but passes no scope guard.
    #[must_use]
    pub fn none() -> Self {
        Scopes::default()
    }

    /// Whether any held scope grants `required`.
    #[must_use]
    pub fn allows(&self, required: &Scope) -> bool {
        self.0.iter().any(|held| held.grants(required))
    }

    /// The held scopes.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    /// Whether no scope is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Space-separated, as in OAuth: `read billing:read`.
    #[must_use]
    pub fn to_space_separated(&self) -> String {
        let mut out = String::new();
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(scope.as_str());
        }
        out
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut all: Vec<Scope> = iter.into_iter().collect();
        all.sort();
        all.dedup();
        Scopes(all.into())
    }
}

impl<const N: usize> From<[Scope; N]> for Scopes {
    fn from(scopes: [Scope; N]) -> Self {
        scopes.into_iter().collect()
    }
}

impl From<Scope> for Scopes {
    fn from(scope: Scope) -> Self {
        [scope].into()
    }
}

impl FromStr for Scopes {
    type Err = InvalidScope;

    /// Parses space- or comma-separated scope names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split([' ', ','])
            .filter(|part| !part.is_empty())
            .map(str::parse)
            .collect()
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

impl serde::Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<Scope>::deserialize(d)?.into_iter().collect())
    }
}

/// A type that names one scope, for [`RequireScope<S>`](crate::RequireScope) and
/// [`ScopeGuardLayer`](crate::guard::ScopeGuardLayer).
///
/// Use [`Read`], [`Write`], [`Admin`], or declare your own with
/// [`scope_marker!`](crate::scope_marker).
pub trait ScopeMarker: Send + Sync + 'static {
    /// The scope this marker requires.
    fn scope() -> Scope;
}

/// Requires the `read` scope (held by `read`, `write` and `admin` keys).
#[derive(Debug, Clone, Copy, Default)]
pub struct Read;
/// Requires the `write` scope (held by `write` and `admin` keys).
#[derive(Debug, Clone, Copy, Default)]
pub struct Write;
/// Requires the `admin` scope.
#[derive(Debug, Clone, Copy, Default)]
pub struct Admin;

impl ScopeMarker for Read {
    fn scope() -> Scope {
        Scope::Read
    }
}
impl ScopeMarker for Write {
    fn scope() -> Scope {
        Scope::Write
    }
}
impl ScopeMarker for Admin {
    fn scope() -> Scope {
        Scope::Admin
    }
}

/// Declares a marker type for a custom scope.
///
/// ```
/// tower_api_keys::scope_marker!(
///     /// Requires `billing:read`.
///     pub BillingRead = "billing:read"
/// );
/// use tower_api_keys::scope::{Scope, ScopeMarker};
/// assert_eq!(BillingRead::scope(), Scope::custom("billing:read"));
/// ```
#[macro_export]
macro_rules! scope_marker {
    ($(#[$meta:meta])* $vis:vis $name:ident = $scope:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default)]
        $vis struct $name;

        impl $crate::scope::ScopeMarker for $name {
            fn scope() -> $crate::scope::Scope {
                static SCOPE: ::std::sync::OnceLock<$crate::scope::Scope> =
                    ::std::sync::OnceLock::new();
                SCOPE.get_or_init(|| $crate::scope::Scope::custom($scope)).clone()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo mutants`: Display, Debug, iteration and emptiness.
    #[test]
    fn scopes_show_iterate_and_know_when_empty() {
        assert_eq!(Scope::Write.to_string(), "write");
        let scopes: Scopes = [Scope::Read, Scope::custom("reports")].into();
        assert_eq!(format!("{scopes:?}"), "{read, reports}");
        assert_eq!(scopes.iter().count(), 2);
        assert!(!scopes.is_empty());
        assert!(Scopes::none().is_empty());
    }

    #[test]
    fn built_in_names_parse_to_the_built_in_scopes() {
        // Not to custom scopes of the same name, which would not nest.
        assert_eq!("read".parse::<Scope>(), Ok(Scope::Read));
        assert_eq!("write".parse::<Scope>(), Ok(Scope::Write));
        assert_eq!("admin".parse::<Scope>(), Ok(Scope::Admin));
        let write: Scopes = "write".parse().unwrap();
        assert!(write.allows(&Scope::Read));
        let admin: Scopes = "admin".parse().unwrap();
        assert!(admin.allows(&Scope::Write));
        assert_eq!(format!("{:?}", Scope::Write), "write");
        assert_eq!(
            format!("{:?}", Scope::custom("reports:export")),
            "reports:export"
        );
    }

    #[test]
    fn built_in_scopes_nest() {
        let read = Scopes::from(Scope::Read);
        let write = Scopes::from(Scope::Write);
        let admin = Scopes::from(Scope::Admin);
        assert!(read.allows(&Scope::Read));
        assert!(!read.allows(&Scope::Write));
        assert!(!read.allows(&Scope::Admin));
        assert!(write.allows(&Scope::Read) && write.allows(&Scope::Write));
        assert!(!write.allows(&Scope::Admin));
        assert!(admin.allows(&Scope::Read) && admin.allows(&Scope::Admin));
        assert!(admin.allows(&Scope::custom("anything:else")));
        assert!(!Scopes::none().allows(&Scope::Read));
    }

    #[test]
    fn custom_scopes_are_held_by_name_only() {
        let scopes: Scopes = "read,reports:export".parse().unwrap();
        assert!(scopes.allows(&Scope::custom("reports:export")));
        assert!(!scopes.allows(&Scope::custom("reports:delete")));
        assert!(!scopes.allows(&Scope::Write));
        assert_eq!(scopes.to_space_separated(), "read reports:export");
    }

    #[test]
    fn invalid_scopes_are_rejected() {
        assert!("".parse::<Scope>().is_err());
        assert!("has space".parse::<Scope>().is_err());
        assert!("quote\"".parse::<Scope>().is_err());
        assert!("x".repeat(65).parse::<Scope>().is_err());
        assert!(serde_json::from_str::<Scopes>(r#"["read", "bad scope"]"#).is_err());
    }

    #[test]
    fn scopes_deduplicate_and_serialize_as_strings() {
        let scopes: Scopes = serde_json::from_str(r#"["write","read","write"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&scopes).unwrap(),
            r#"["read","write"]"#
        );
    }

    scope_marker!(pub(crate) Reports = "reports:export");

    #[test]
    fn declared_markers_name_their_scope() {
        assert_eq!(Reports::scope().as_str(), "reports:export");
        assert_eq!(Write::scope(), Scope::Write);
    }
}
