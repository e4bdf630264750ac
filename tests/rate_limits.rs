//! Rate limits every key has (`ApiKeyLayer::rate_limit`), in process: 429 with the
//! exact headers at limit + 1, the `RateLimit` fields on accepted responses, keys apart,
//! and the window coming back.

mod support;

use std::time::Duration;

use http::StatusCode;
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use support::{app, bearer, body_json, get_with, keys, live_layer, send};
use tower_api_keys::CachedVerifier;
use tower_api_keys::limit::RateLimit;

#[tokio::test]
async fn the_request_past_the_limit_is_429_with_its_headers() {
    let keys = keys().await;
    let limit = RateLimit::new("requests", 2, Duration::from_secs(60)).unwrap();
    let app = app(live_layer(&keys, CachedVerifier::new(keys.store.clone())).rate_limit(limit));
    let auth = bearer(&keys.read);
    let header = |response: &http::Response<_>, name: &str| {
        response.headers()[name].to_str().unwrap().to_owned()
    };

    let first = send(&app, get_with("/whoami", Some(&auth))).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "ratelimit"), r#""requests";r=1;t=30"#);
    assert_eq!(header(&first, "ratelimit-policy"), r#""requests";q=2;w=60"#);
    let second = send(&app, get_with("/whoami", Some(&auth))).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(header(&second, "ratelimit"), r#""requests";r=0;t=60"#);

    let refused = send(&app, get_with("/whoami", Some(&auth))).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "30");
    assert_eq!(header(&refused, "ratelimit"), r#""requests";r=0;t=60"#);
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        r#""requests";q=2;w=60"#
    );
    assert!(refused.headers().get(WWW_AUTHENTICATE).is_none());
    let body = body_json(refused).await;
    assert_eq!(body["error"]["code"], "rate_limited");

    // Another key has its own quota; a request without a key is not limited.
    let other = send(&app, get_with("/whoami", Some(&bearer(&keys.write)))).await;
    assert_eq!(other.status(), StatusCode::OK);
    let anonymous = send(&app, get_with("/whoami", None)).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers().get("ratelimit").is_none());
}

#[tokio::test]
async fn the_window_comes_back_and_the_closest_limit_is_shown() {
    let keys = keys().await;
    let per_second = RateLimit::new("burst", 1, Duration::from_secs(1)).unwrap();
    let per_hour = RateLimit::new("hourly", 1_000, Duration::from_secs(3_600)).unwrap();
    let layer = live_layer(&keys, CachedVerifier::new(keys.store.clone()))
        .rate_limit(per_hour)
        .rate_limit(per_second);
    let app = app(layer);
    let auth = bearer(&keys.read);
    let first = send(&app, get_with("/whoami", Some(&auth))).await;
    assert_eq!(first.status(), StatusCode::OK);
    // The per-second limit is the closer to exhaustion (0 left of 1).
    assert_eq!(first.headers()["ratelimit"], r#""burst";r=0;t=1"#);
    let refused = send(&app, get_with("/whoami", Some(&auth))).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()[RETRY_AFTER], "1");
    // Within about a second the quota is back (polled, not slept on).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = send(&app, get_with("/whoami", Some(&auth))).await;
        if again.status() == StatusCode::OK {
            break;
        }
        assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            std::time::Instant::now() < deadline,
            "the window never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn retrying_against_a_short_limit_does_not_drain_a_long_one() {
    let keys = keys().await;
    let long = RateLimit::new("daily", 2, Duration::from_secs(86_400)).unwrap();
    let short = RateLimit::new("burst", 1, Duration::from_secs(1)).unwrap();
    let layer = live_layer(&keys, CachedVerifier::new(keys.store.clone()))
        .rate_limit(long)
        .rate_limit(short);
    let app = app(layer);
    let auth = bearer(&keys.read);
    assert_eq!(
        send(&app, get_with("/whoami", Some(&auth))).await.status(),
        StatusCode::OK
    );
    // Refused by the short limit, again and again, until it comes back: none of these
    // spends the daily one (one unit left of two).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut refused = 0;
    loop {
        let again = send(&app, get_with("/whoami", Some(&auth))).await;
        if again.status() == StatusCode::OK {
            // The daily limit had one unit left, now none (`t`: about a day).
            let state = again.headers()["ratelimit"].to_str().unwrap().to_owned();
            let t: u64 = state
                .strip_prefix(r#""daily";r=0;t="#)
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("{state}"));
            assert!((86_000..=86_400).contains(&t), "{state}");
            break;
        }
        refused += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "the burst never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused > 3, "{refused}");
    let spent = send(&app, get_with("/whoami", Some(&auth))).await;
    assert_eq!(spent.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        spent.headers()["ratelimit-policy"],
        r#""daily";q=2;w=86400"#
    );
}

#[tokio::test]
async fn the_keys_of_one_account_share_an_account_limit() {
    let keys = keys().await;
    let per_account = RateLimit::new("account", 2, Duration::from_secs(60)).unwrap();
    let per_key = RateLimit::new("key", 10, Duration::from_secs(60)).unwrap();
    let layer = live_layer(&keys, CachedVerifier::new(keys.store.clone()))
        .rate_limit(per_key)
        .rate_limit_per_account(per_account);
    let app = app(layer);
    let (read, write) = (bearer(&keys.read), bearer(&keys.write));
    for auth in [&read, &write] {
        let response = send(&app, get_with("/whoami", Some(auth))).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    // Both keys of acct_1 spent the account's two; each key has 9 of its own left.
    for auth in [&read, &write] {
        let refused = send(&app, get_with("/whoami", Some(auth))).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            refused.headers()["ratelimit-policy"],
            r#""account";q=2;w=60"#
        );
    }
}

#[test]
#[should_panic(expected = "unique")]
fn two_limits_of_one_name_are_refused_at_configuration() {
    let store = tower_api_keys::MemoryStore::new();
    let limit = RateLimit::new("requests", 1, Duration::from_secs(1)).unwrap();
    let _ = tower_api_keys::ApiKeyLayer::new(
        tower_api_keys::KeyFormat::new("sk"),
        CachedVerifier::new(store),
    )
    .rate_limit(limit.clone())
    .rate_limit(limit);
}
