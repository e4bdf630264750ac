//! Credits: a balance a key (or an account, shared by its keys) spends per request,
//! with an optional refill, kept **exactly** by the store ([`CreditStore`]).
//!
//! ```
//! use tower_api_keys::limit::credits::{Credits, Refill, RefillInterval};
//! use time::macros::datetime;
//!
//! let refill = Refill::monthly(1_000, 31);
//! // Day 31 is the last day of shorter months.
//! let next = refill.next_after(datetime!(2027-01-31 00:00 UTC));
//! assert_eq!(next, datetime!(2027-02-28 00:00 UTC));
//! let credits = Credits::new(500).with_refill(refill);
//! assert_eq!(credits.remaining, 500);
//! ```

use std::error::Error;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, Time};

/// The largest balance a key or an account carries (2^53 − 1: exact in JSON).
pub const MAX_CREDITS: u64 = (1 << 53) - 1;

/// How often a balance is refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefillInterval {
    /// Every day at 00:00 UTC.
    Daily,
    /// Every month at 00:00 UTC on [`Refill::day`].
    Monthly,
}

/// A refill: the balance is set to `amount` every interval (unused credits do not
/// carry over).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refill {
    /// Daily or monthly.
    pub interval: RefillInterval,
    /// The balance after a refill.
    pub amount: u64,
    /// For monthly refills, the day of the month (1–31; 31, 30 and 29 mean the last
    /// day of months that are shorter). Ignored for daily refills. `None`: the 1st.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<u8>,
}

impl Refill {
    /// Every day, to `amount`.
    #[must_use]
    pub fn daily(amount: u64) -> Self {
        Refill {
            interval: RefillInterval::Daily,
            amount,
            day: None,
        }
    }

    /// Every month on `day` (1–31), to `amount`.
    #[must_use]
    pub fn monthly(amount: u64, day: u8) -> Self {
        Refill {
            interval: RefillInterval::Monthly,
            amount,
            day: Some(day),
        }
    }

    /// Whether the fields make a refill.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.amount > MAX_CREDITS {
            return Err("refill.amount is too large");
        }
        if self.interval == RefillInterval::Monthly && !(1..=31).contains(&self.day.unwrap_or(1)) {
            return Err("refill.day must be 1 to 31");
        }
        Ok(())
    }

    /// The first refill strictly after `last`.
    #[must_use]
    pub fn next_after(&self, last: OffsetDateTime) -> OffsetDateTime {
        let last = last.to_offset(time::UtcOffset::UTC);
        match self.interval {
            RefillInterval::Daily => {
                let day = last.date().next_day().unwrap_or(Date::MAX);
                day.with_time(Time::MIDNIGHT).assume_utc()
            }
            RefillInterval::Monthly => {
                let want = self.day.unwrap_or(1).clamp(1, 31);
                let (mut year, mut month) = (last.year(), last.month());
                // This month's refill day if still ahead, else next month's.
                loop {
                    let at = refill_day(year, month, want);
                    if at > last {
                        return at;
                    }
                    if month == Month::December {
                        year += 1;
                    }
                    month = month.next();
                }
            }
        }
    }

    /// The latest refill at or before `now`, if one happened after `last`.
    #[must_use]
    pub fn due(&self, last: OffsetDateTime, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let mut at = self.next_after(last);
        if at > now {
            return None;
        }
        loop {
            let next = self.next_after(at);
            if next > now {
                return Some(at);
            }
            at = next;
        }
    }
}

/// Midnight UTC on `day` of `month`, or the month's last day if it is shorter.
fn refill_day(year: i32, month: Month, day: u8) -> OffsetDateTime {
    let day = day.min(time::util::days_in_month(month, year));
    Date::from_calendar_date(year, month, day)
        .unwrap_or(Date::MAX)
        .with_time(Time::MIDNIGHT)
        .assume_utc()
}

/// A balance: `{"remaining": 1000, "refill": {"interval": "monthly", "amount": 1000,
/// "day": 1}}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Credits {
    /// Credits left (in the store: credits that instances hold in leases are not
    /// counted here).
    pub remaining: u64,
    /// The refill, if any.
    #[serde(default)]
    pub refill: Option<Refill>,
    /// When the balance was last set or refilled (the refill schedule counts from it).
    #[serde(skip)]
    pub(crate) refilled_at: Option<OffsetDateTime>,
    /// Bumped whenever the balance is set by hand: a lease taken before is not returned.
    #[serde(skip)]
    pub(crate) epoch: i64,
}

impl PartialEq for Credits {
    fn eq(&self, other: &Self) -> bool {
        self.remaining == other.remaining && self.refill == other.refill
    }
}

impl Eq for Credits {}

impl Credits {
    /// A balance of `remaining`, never refilled.
    #[must_use]
    pub fn new(remaining: u64) -> Self {
        Credits {
            remaining,
            refill: None,
            refilled_at: None,
            epoch: 0,
        }
    }

    /// Refills the balance.
    #[must_use]
    pub fn with_refill(mut self, refill: Refill) -> Self {
        self.refill = Some(refill);
        self
    }

    /// Whether the fields make a balance.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.remaining > MAX_CREDITS {
            return Err("credits.remaining is too large");
        }
        self.refill.as_ref().map_or(Ok(()), Refill::check)
    }

    /// The balance at `now`: refilled if a refill fell due since the last one.
    #[must_use]
    pub fn at(mut self, now: OffsetDateTime) -> Self {
        if let (Some(refill), Some(last)) = (self.refill, self.refilled_at) {
            if let Some(at) = refill.due(last, now) {
                self.remaining = refill.amount;
                self.refilled_at = Some(at);
            }
        }
        self
    }

    /// Whether `self` gives no more than `other`: no more remaining, and a refill no
    /// larger nor more frequent (none where `other` has none).
    #[must_use]
    pub fn within(&self, other: &Credits) -> bool {
        if self.remaining > other.remaining {
            return false;
        }
        match (&self.refill, &other.refill) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => {
                mine.amount <= theirs.amount
                    && !(mine.interval == RefillInterval::Daily
                        && theirs.interval == RefillInterval::Monthly)
            }
        }
    }
}

/// Whose balance: a key's own, or its account's (shared by all its keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CreditSubject<'a> {
    /// A key, by id.
    Key(&'a str),
    /// An account, by id.
    Account(&'a str),
}

/// What [`CreditStore::take_credits`] handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreditGrant {
    /// Credits taken from the balance (at most what was asked).
    pub granted: u64,
    /// The balance's epoch: credits returned under another epoch are dropped.
    pub epoch: i64,
    /// When the balance is refilled next: credits granted before must not be spent
    /// after.
    pub until: Option<OffsetDateTime>,
    /// `false` when the subject has no balance at all (nothing to spend).
    pub limited: bool,
    /// What the balance holds after the take.
    pub remaining: u64,
}

impl CreditGrant {
    /// A grant of `granted` under `epoch`, valid `until` the next refill.
    #[must_use]
    pub fn new(granted: u64, epoch: i64, until: Option<OffsetDateTime>) -> Self {
        CreditGrant {
            granted,
            epoch,
            until,
            limited: true,
            remaining: 0,
        }
    }

    /// The subject has no balance.
    #[must_use]
    pub fn unlimited() -> Self {
        CreditGrant {
            granted: 0,
            epoch: 0,
            until: None,
            limited: false,
            remaining: 0,
        }
    }
}

/// A credit store failed.
pub type CreditError = Box<dyn Error + Send + Sync>;

/// Where balances live, exactly: every [`KeyStore`](crate::KeyStore) is one. The layer
/// takes credits in blocks (leases) and spends them in memory, so the store is written
/// once per block, not once per request, and never more is spent than it handed out.
#[async_trait]
pub trait CreditStore: Send + Sync + 'static {
    /// Takes up to `want` credits from `subject`'s balance at `now` (refilling it first
    /// if a refill fell due), atomically: concurrent takes, on any instance, never
    /// hand out more than the balance.
    async fn take_credits(
        &self,
        subject: CreditSubject<'_>,
        want: u64,
        now: OffsetDateTime,
    ) -> Result<CreditGrant, CreditError>;

    /// Gives `units` back to `subject`'s balance, unless its epoch is no longer
    /// `epoch` (the balance was set since) or `until` has passed (it was refilled).
    async fn return_credits(
        &self,
        subject: CreditSubject<'_>,
        units: u64,
        epoch: i64,
        until: Option<OffsetDateTime>,
    ) -> Result<(), CreditError>;
}

/// What a take does to a balance as stored: `(granted, balance after)`, refilling it
/// first when due. Shared by every store.
pub(crate) fn take_from(credits: &mut Credits, want: u64, now: OffsetDateTime) -> CreditGrant {
    *credits = credits.at(now);
    let granted = want.min(credits.remaining);
    credits.remaining -= granted;
    let until = credits
        .refill
        .zip(credits.refilled_at)
        .map(|(refill, last)| refill.next_after(last));
    let mut grant = CreditGrant::new(granted, credits.epoch, until);
    grant.remaining = credits.remaining;
    grant
}

/// Whether credits returned under `epoch` and `until` go back into `credits` at `now`.
pub(crate) fn may_return(
    credits: &Credits,
    epoch: i64,
    until: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> bool {
    credits.epoch == epoch
        && until.is_none_or(|until| {
            now < until && credits.refilled_at.is_none_or(|refilled| refilled < until)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn monthly_refills_fall_on_the_last_day_of_shorter_months() {
        let refill = Refill::monthly(10, 31);
        assert_eq!(
            refill.next_after(datetime!(2027-01-31 00:00 UTC)),
            datetime!(2027-02-28 00:00 UTC)
        );
        assert_eq!(
            refill.next_after(datetime!(2028-01-31 00:00 UTC)),
            datetime!(2028-02-29 00:00 UTC),
            "leap year"
        );
        assert_eq!(
            refill.next_after(datetime!(2027-02-28 00:00 UTC)),
            datetime!(2027-03-31 00:00 UTC)
        );
        assert_eq!(
            Refill::monthly(1, 1).next_after(datetime!(2027-12-15 10:00 UTC)),
            datetime!(2028-01-01 00:00 UTC)
        );
        assert_eq!(
            Refill::daily(1).next_after(datetime!(2027-02-28 23:59 UTC)),
            datetime!(2027-03-01 00:00 UTC)
        );
    }

    #[test]
    fn a_balance_is_refilled_once_when_due_and_spent_exactly() {
        let mut credits = Credits::new(3).with_refill(Refill::monthly(100, 31));
        credits.refilled_at = Some(datetime!(2027-01-31 00:00 UTC));
        let feb = datetime!(2027-02-27 12:00 UTC);
        let grant = take_from(&mut credits, 5, feb);
        assert_eq!((grant.granted, credits.remaining), (3, 0));
        assert_eq!(grant.until, Some(datetime!(2027-02-28 00:00 UTC)));
        // The last day of February refills.
        let grant = take_from(&mut credits, 5, datetime!(2027-02-28 00:00:01 UTC));
        assert_eq!((grant.granted, credits.remaining), (5, 95));
        assert_eq!(grant.until, Some(datetime!(2027-03-31 00:00 UTC)));
        // Returned before the next refill and in the same epoch: back; else dropped.
        assert!(may_return(
            &credits,
            0,
            grant.until,
            datetime!(2027-03-01 00:00 UTC)
        ));
        assert!(!may_return(
            &credits,
            0,
            grant.until,
            datetime!(2027-03-31 00:00 UTC)
        ));
        assert!(!may_return(
            &credits,
            1,
            grant.until,
            datetime!(2027-03-01 00:00 UTC)
        ));
        // Months skipped: refilled once, to the amount.
        let grant = take_from(&mut credits, 1, datetime!(2027-07-01 00:00 UTC));
        assert_eq!((grant.granted, credits.remaining), (1, 99));
        assert_eq!(credits.refilled_at, Some(datetime!(2027-06-30 00:00 UTC)));
    }

    #[test]
    fn shapes_are_checked_and_compared() {
        assert!(serde_json::from_str::<Credits>(r#"{"remaining": -1}"#).is_err());
        assert!(
            serde_json::from_str::<Credits>(
                r#"{"remaining": 1, "refill": {"interval": "weekly", "amount": 1}}"#
            )
            .is_err()
        );
        let monthly: Credits = serde_json::from_str(
            r#"{"remaining": 10, "refill": {"interval": "monthly", "amount": 10}}"#,
        )
        .unwrap();
        assert_eq!(monthly.refill.unwrap().day, None, "the first of the month");
        assert!(Refill::monthly(1, 32).check().is_err());
        assert!(Credits::new(MAX_CREDITS + 1).check().is_err());
        let daily = Credits::new(10).with_refill(Refill::daily(10));
        assert!(Credits::new(10).within(&monthly));
        assert!(!Credits::new(11).within(&monthly));
        assert!(!daily.within(&monthly), "daily refills more often");
        assert!(monthly.within(&daily));
        assert!(!monthly.within(&Credits::new(10)), "a refill where none is");
    }
}
