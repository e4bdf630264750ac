//! Over real HTTP on 127.0.0.1, with a raw client that can send what a library would
//! refuse to (two Authorization headers, bytes outside ASCII).

mod support;

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_api_keys::CachedVerifier;

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Sends `GET {path}` with the given raw header lines and reads the whole reply.
async fn raw_get(addr: SocketAddr, path: &str, header_lines: &[&[u8]]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").into_bytes();
    for line in header_lines {
        request.extend_from_slice(line);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn over_real_http() {
    let keys = support::keys().await;
    let addr = serve(support::app(support::live_layer(
        &keys,
        CachedVerifier::new(keys.store.clone()),
    )))
    .await;
    let auth = format!("Authorization: {}", support::bearer(&keys.read));

    let ok = raw_get(addr, "/whoami", &[auth.as_bytes()]).await;
    assert_eq!(ok.status, 200);
    assert!(ok.body.contains("\"key_name\":\"read\""));

    let missing = raw_get(addr, "/whoami", &[]).await;
    assert_eq!(missing.status, 401);
    assert!(
        missing
            .head
            .contains("www-authenticate: bearer realm=\"api\"")
    );
    assert!(missing.body.contains("missing_api_key"));

    let twice = raw_get(addr, "/whoami", &[auth.as_bytes(), auth.as_bytes()]).await;
    assert_eq!(twice.status, 400);
    assert!(twice.body.contains("invalid_request"));

    let non_ascii = raw_get(
        addr,
        "/whoami",
        &[b"Authorization: Bearer sk_live_\xc3\xa9\xff"],
    )
    .await;
    assert_eq!(non_ascii.status, 400);
    assert!(non_ascii.body.contains("invalid_request"));

    let huge = format!("Authorization: Bearer sk_live_{}", "a".repeat(8 * 1024));
    let huge = raw_get(addr, "/whoami", &[huge.as_bytes()]).await;
    assert_eq!(huge.status, 401);
    assert!(huge.body.contains("invalid_api_key"));

    let lowercase = format!("authorization: bearer   {}", keys.read.expose_secret());
    assert_eq!(
        raw_get(addr, "/whoami", &[lowercase.as_bytes()])
            .await
            .status,
        200
    );

    let revoked = format!("Authorization: {}", support::bearer(&keys.revoked));
    let revoked = raw_get(addr, "/whoami", &[revoked.as_bytes()]).await;
    assert_eq!(revoked.status, 401);
    assert!(revoked.body.contains("api_key_revoked"));
}
