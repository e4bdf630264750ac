//! A raw HTTP/1.1 client over loopback: sends exactly the bytes asked for.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves `app` on 127.0.0.1:0 in the background.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// [`serve`], with each connection's peer address in the requests (what IP
/// restrictions, the audit trail and usage per address read).
#[allow(dead_code)]
pub async fn serve_with_peer(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

pub struct Reply {
    pub status: u16,
    /// The status line and headers, lowercased.
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends one request with raw header lines and an optional body; reads the reply.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    header_lines: &[&[u8]],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n").into_bytes();
    // The peer's address as Host, unless the caller sends its own.
    if !header_lines
        .iter()
        .any(|line| line.len() > 5 && line[..5].eq_ignore_ascii_case(b"host:"))
    {
        request.extend_from_slice(format!("Host: {addr}\r\n").as_bytes());
    }
    for line in header_lines {
        request.extend_from_slice(line);
        request.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || method != "GET" {
        request.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
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

pub async fn raw_get(addr: SocketAddr, path: &str, header_lines: &[&[u8]]) -> Reply {
    raw_request(addr, "GET", path, header_lines, b"").await
}

/// A client bound to one server and one key.
pub struct Client {
    pub addr: SocketAddr,
    pub authorization: String,
}

impl Client {
    pub fn new(addr: SocketAddr, key: &str) -> Self {
        Client {
            addr,
            authorization: format!("Authorization: Bearer {key}"),
        }
    }

    pub async fn send(&self, method: &str, path: &str, body: &str) -> Reply {
        let mut headers: Vec<&[u8]> = vec![self.authorization.as_bytes()];
        if !body.is_empty() {
            headers.push(b"Content-Type: application/json");
        }
        raw_request(self.addr, method, path, &headers, body.as_bytes()).await
    }
}

/// One keep-alive HTTP/1.1 connection: requests in sequence, replies read by
/// Content-Length (enough for the servers under test).
pub struct KeepAlive {
    stream: tokio::io::BufReader<TcpStream>,
    addr: SocketAddr,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> Self {
        KeepAlive {
            stream: tokio::io::BufReader::new(TcpStream::connect(addr).await.unwrap()),
            addr,
        }
    }

    /// Sends a request; returns status and body.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        authorization: &str,
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        use tokio::io::AsyncBufReadExt;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {authorization}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line).await?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
