//! `apikeys`: bootstrap and operate API keys without the HTTP API.
//!
//! ```text
//! apikeys --database-url apikeys.db migrate
//! apikeys --database-url apikeys.db create --account acct_1 --name bootstrap --scopes admin
//! apikeys --database-url apikeys.db list --account acct_1
//! apikeys --database-url apikeys.db revoke ak_…
//! apikeys --database-url apikeys.db account-limits --account acct_1 \
//!     --ratelimit requests:1000:60 --credits 10000 --refill monthly:10000:1
//! apikeys --database-url apikeys.db import --account-field org_id < keys.ndjson
//! ```
//!
//! `import` reads keys made elsewhere from standard input, one JSON object per line
//! (`{"key_hash", "name", "account_id", "environment", "scopes", "prefix"?, "hint"?,
//! "created_at"?, "expires_at"?, "project_id"?}`, the account field named by
//! `--account-field`; see `KeyManager::import`), and stores them all or none: a bad
//! line is named (`line 3: …`) and nothing is written; keys already present are
//! skipped.
//!
//! `--database-url` (or `DATABASE_URL`) is a SQLite path or a `postgres://` URL.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tower_api_keys::audit::{Actor, verify_chain};
use tower_api_keys::key::KeyId;
use tower_api_keys::limit::RateLimit;
use tower_api_keys::limit::credits::{Credits, Refill};
use tower_api_keys::manage::{ImportError, NewKey};
use tower_api_keys::record::AccountLimits;
use tower_api_keys::scope::{Scope, Scopes};
use tower_api_keys::store::{KeyStore, StoreError};
use tower_api_keys::{CachedVerifier, Environment, KeyFormat, KeyManager, SqlStore};

#[derive(Parser)]
#[command(name = "apikeys", version, about = "Create, list and revoke API keys")]
struct Cli {
    /// A SQLite path (created if missing) or a postgres:// URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "apikeys.db",
        global = true
    )]
    database_url: String,
    /// The key prefix, as in `sk_live_…`.
    #[arg(long, default_value = "sk", global = true)]
    prefix: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates or upgrades the tables.
    Migrate,
    /// Creates a key and prints it, once.
    Create {
        /// The owning account.
        #[arg(long)]
        account: String,
        /// The key's name.
        #[arg(long)]
        name: String,
        /// Scopes, comma-separated (read, write, admin, or custom).
        #[arg(long, default_value = "admin")]
        scopes: String,
        /// `live`, `test`, or a custom environment tag.
        #[arg(long = "env", default_value = "live")]
        environment: String,
        /// Locks the key to a project.
        #[arg(long)]
        project: Option<String>,
    },
    /// Lists an account's active keys (never the keys themselves).
    List {
        /// The account.
        #[arg(long)]
        account: String,
    },
    /// Revokes a key by id.
    Revoke {
        /// The key id (`ak_…`).
        id: String,
    },
    /// Sets (or, with nothing given, shows) an account's rate limits and credit
    /// balance, shared by all its keys. `--ratelimit`s replace the account's rate
    /// limits and `--credits` its balance; what is not given stays.
    AccountLimits {
        /// The account.
        #[arg(long)]
        account: String,
        /// A rate limit `name:limit:window_seconds` (repeatable, at most five).
        #[arg(long = "ratelimit")]
        ratelimits: Vec<String>,
        /// The credit balance.
        #[arg(long)]
        credits: Option<u64>,
        /// A refill of the balance: `daily:AMOUNT` or `monthly:AMOUNT[:DAY]`.
        #[arg(long, requires = "credits")]
        refill: Option<String>,
        /// Removes the account's limits and balance.
        #[arg(long, conflicts_with_all = ["ratelimits", "credits"])]
        clear: bool,
    },
    /// Imports keys made elsewhere, known by the SHA-256 of each key, from NDJSON on
    /// standard input. All or nothing: a bad line is named and nothing is written;
    /// keys already present are skipped.
    Import {
        /// The name of each line's account field (`org_id` for an export that calls it
        /// so).
        #[arg(long, default_value = "account_id")]
        account_field: String,
        /// Also accepts this custom scope (repeatable; read, write and admin always).
        #[arg(long = "allow-scope")]
        allow_scopes: Vec<String>,
        /// Also accepts this environment tag (repeatable; live and test always).
        #[arg(long = "allow-env")]
        allow_environments: Vec<String>,
    },
    /// The audit trail: verify its hash chains, or export an account's events.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walks the hash chain of each account (or one) and fails naming the first
    /// broken event.
    Verify {
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
    },
    /// Prints an account's events, oldest first, one JSON object per line.
    Export {
        /// The account.
        #[arg(long)]
        account: String,
    },
}

/// `name:limit:window_seconds`.
fn parse_ratelimit(text: &str) -> Result<RateLimit, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let [name, limit, window] = parts[..] else {
        return Err(format!(
            "--ratelimit {text:?}: expected name:limit:window_seconds"
        ));
    };
    let number = |n: &str| {
        n.parse::<u32>()
            .map_err(|_| format!("--ratelimit {text:?}: {n:?} is not a whole number"))
    };
    RateLimit::new(
        name,
        number(limit)?,
        Duration::from_secs(u64::from(number(window)?)),
    )
    .map_err(|e| format!("--ratelimit {text:?}: {e}"))
}

/// `daily:AMOUNT` or `monthly:AMOUNT[:DAY]`.
fn parse_refill(text: &str) -> Result<Refill, String> {
    let bad = || format!("--refill {text:?}: expected daily:AMOUNT or monthly:AMOUNT[:DAY]");
    let parts: Vec<&str> = text.split(':').collect();
    let amount = |n: &str| n.parse::<u64>().map_err(|_| bad());
    match parts[..] {
        ["daily", n] => Ok(Refill::daily(amount(n)?)),
        ["monthly", n] => Ok(Refill::monthly(amount(n)?, 1)),
        ["monthly", n, day] => Ok(Refill::monthly(amount(n)?, day.parse().map_err(|_| bad())?)),
        _ => Err(bad()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("apikeys: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let format = KeyFormat::try_new(&cli.prefix).map_err(|e| e.to_string())?;
    // The error names host, port and database, never the URL's credentials.
    let store = SqlStore::open(&cli.database_url)
        .await
        .map_err(|e| match e {
            StoreError::Backend(cause) => cause.to_string(),
            other => other.to_string(),
        })?;
    store
        .migrate()
        .await
        .map_err(|e| format!("cannot migrate: {e}"))?;
    let environment_of =
        |tag: &str| Environment::parse(tag).ok_or_else(|| format!("invalid environment {tag:?}"));
    let manager = |environment: &Environment| {
        let format = format.clone().with_environment(environment.clone());
        KeyManager::new(store.clone(), CachedVerifier::new(store.clone()), format)
            .acting(Actor::Cli, None)
    };
    match cli.command {
        Command::Migrate => println!("migrated"),
        Command::Create {
            account,
            name,
            scopes,
            environment,
            project,
        } => {
            let scopes: Scopes = scopes.parse().map_err(|e| format!("{e}"))?;
            let environment = environment_of(&environment)?;
            let mut request = NewKey::named(name).scopes(scopes);
            if let Some(project) = project {
                request = request.project(project);
            }
            let created = manager(&environment)
                .create_for_account(&account, environment, request)
                .await
                .map_err(|e| e.to_string())?;
            println!("id={}", created.info.id);
            println!("key={}", created.key.expose_secret());
            eprintln!("Store the key now: it cannot be shown again.");
        }
        Command::List { account } => {
            let keys = manager(&Environment::LIVE).list(&account).await;
            for key in keys.map_err(|e| e.to_string())? {
                let last_used = key
                    .last_used_at
                    .map_or_else(|| "never".to_owned(), |at| at.to_string());
                println!(
                    "{}\t{}\t{}_…{}\t{}\tlast used: {}",
                    key.id,
                    key.name,
                    key.prefix,
                    key.hint,
                    key.scopes.to_space_separated(),
                    last_used
                );
            }
        }
        Command::Revoke { id } => {
            let id = KeyId::new(id);
            let key = store
                .find_by_id(&id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no key with id {id}"))?;
            manager(&key.environment)
                .revoke(&key.account_id, &id)
                .await
                .map_err(|e| e.to_string())?;
            println!("revoked {id}");
        }
        Command::AccountLimits {
            account,
            ratelimits,
            credits,
            refill,
            clear,
        } => {
            let manager = manager(&Environment::LIVE);
            if clear || !ratelimits.is_empty() || credits.is_some() {
                // What is not given stays as it is; `--clear` removes everything.
                let mut limits = if clear {
                    AccountLimits::none()
                } else {
                    manager
                        .account_limits(&account)
                        .await
                        .map_err(|e| e.to_string())?
                };
                if !ratelimits.is_empty() {
                    limits.ratelimits = Vec::new();
                }
                for text in &ratelimits {
                    limits = limits.ratelimit(parse_ratelimit(text)?);
                }
                if let Some(credits) = credits {
                    let mut balance = Credits::new(credits);
                    if let Some(refill) = &refill {
                        balance = balance.with_refill(parse_refill(refill)?);
                    }
                    limits = limits.credits(balance);
                }
                manager
                    .set_account_limits(&account, limits)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let limits = manager
                .account_limits(&account)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string(&limits).map_err(|e| e.to_string())?
            );
        }
        Command::Import {
            account_field,
            allow_scopes,
            allow_environments,
        } => {
            let mut format = format.clone();
            for tag in &allow_environments {
                format = format.with_environment(environment_of(tag)?);
            }
            let mut manager =
                KeyManager::new(store.clone(), CachedVerifier::new(store.clone()), format)
                    .acting(Actor::Cli, None);
            for name in &allow_scopes {
                let scope: Scope = name.parse().map_err(|e| format!("--allow-scope: {e}"))?;
                manager = manager.allow_scope(scope);
            }
            let input = std::io::read_to_string(std::io::stdin())
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            let report = manager
                .import(&input, &account_field)
                .await
                .map_err(|e| match &e {
                    ImportError::Store(cause) => format!("{e}: {cause}; nothing was imported"),
                    _ => format!("{e}; nothing was imported"),
                })?;
            println!(
                "imported {} keys, skipped {} already present",
                report.imported.len(),
                report.skipped
            );
        }
        Command::Audit {
            command: AuditCommand::Verify { account },
        } => {
            let accounts = match account {
                Some(account) => vec![account],
                None => store.audited_accounts().await.map_err(|e| e.to_string())?,
            };
            // Every account is checked, whatever an earlier one showed; the error names
            // each broken (or unreadable) one, on one line.
            let (mut events, mut broken_accounts) = (0, Vec::new());
            for account in &accounts {
                let problem = match store.audit_trail(account).await {
                    Ok(trail) => {
                        events += trail.len();
                        verify_chain(&trail)
                            .err()
                            .map(|broken| format!("is broken at event {broken}"))
                    }
                    Err(error) => Some(format!("cannot be read: {error}")),
                };
                if let Some(problem) = problem {
                    broken_accounts.push(format!("the audit trail of account {account} {problem}"));
                }
            }
            if !broken_accounts.is_empty() {
                return Err(broken_accounts.join("; "));
            }
            println!("verified {events} events in {} accounts", accounts.len());
        }
        Command::Audit {
            command: AuditCommand::Export { account },
        } => {
            let trail = store
                .audit_trail(&account)
                .await
                .map_err(|e| e.to_string())?;
            for event in trail {
                println!(
                    "{}",
                    serde_json::to_string(&event).map_err(|e| e.to_string())?
                );
            }
        }
    }
    Ok(())
}
