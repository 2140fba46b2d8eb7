//! An upstream that speaks only TLS (HTTP/1.1, or HTTP/2 alone) and answers
//! every request with a JSON document of what it received, as the echo
//! upstream does, plus how: `"version"` and whether the client presented a
//! certificate (`"client_cert"`). Optionally it demands a client certificate
//! signed by a given CA (mTLS). It counts requests and refused handshakes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tls::CertFiles;

pub struct TlsUpstream {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn ders(pem: &Path) -> Vec<CertificateDer<'static>> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(pem).expect("read pem");
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|rest| {
            let b64: String = rest
                .split("-----END CERTIFICATE-----")
                .next()
                .unwrap()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            CertificateDer::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .expect("base64"),
            )
        })
        .collect()
}

fn key_der(pem: &Path) -> PrivateKeyDer<'static> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(pem).expect("read key");
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 key");
    PrivateKeyDer::try_from(der).expect("private key")
}

impl TlsUpstream {
    /// Serves `cert` on a free loopback port; `h2`: HTTP/2 only (ALPN h2),
    /// else HTTP/1.1 only; `client_ca`: demand a client certificate it signed.
    pub fn start(cert: &CertFiles, h2: bool, client_ca: Option<&Path>) -> TlsUpstream {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for der in ders(ca) {
                    roots.add(der).expect("client ca");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(ders(&cert.cert), key_der(&cert.key))
            .expect("server certificate");
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (count, refusals) = (requests.clone(), refused.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let tcp = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((tcp, _)) => tcp,
                            Err(_) => continue,
                        },
                    };
                    let (acceptor, count, refusals) =
                        (acceptor.clone(), count.clone(), refusals.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            refusals.fetch_add(1, Ordering::SeqCst);
                            return;
                        };
                        let client_cert = tls.get_ref().1.peer_certificates().is_some();
                        if h2 {
                            serve_h2(tls, client_cert, count.clone()).await;
                        } else {
                            serve_h1(tls, client_cert, &count).await;
                        }
                    });
                }
            });
        });
        TlsUpstream {
            addr,
            requests,
            refused,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// How many requests reached the app.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// How many TLS handshakes it refused or that failed.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn document(
    method: &str,
    target: &str,
    headers: Vec<(String, String)>,
    version: &str,
    client_cert: bool,
    body_bytes: usize,
) -> String {
    serde_json::json!({
        "method": method,
        "target": target,
        "headers": headers,
        "version": version,
        "client_cert": client_cert,
        "body_bytes": body_bytes,
    })
    .to_string()
}

async fn serve_h1<S>(mut tls: S, client_cert: bool, count: &AtomicUsize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    loop {
        // Read a whole head.
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut parsed);
        if !matches!(req.parse(&buf[..end]), Ok(httparse::Status::Complete(_))) {
            return;
        }
        let method = req.method.unwrap_or("").to_owned();
        let target = req.path.unwrap_or("").to_owned();
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        buf.drain(..end);
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        count.fetch_add(1, Ordering::SeqCst);
        let payload = document(&method, &target, headers, "1.1", client_cert, length);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
            payload.len(),
            payload
        );
        if tls.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn serve_h2<S>(tls: S, client_cert: bool, count: Arc<AtomicUsize>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut conn) = h2::server::handshake(tls).await else {
        return;
    };
    // Each request in a task of its own: its body arrives only while the
    // connection is polled (`accept`), so reading it here would stall.
    while let Some(Ok((req, respond))) = conn.accept().await {
        tokio::spawn(answer_h2(req, respond, client_cert, count.clone()));
    }
}

async fn answer_h2(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    client_cert: bool,
    count: Arc<AtomicUsize>,
) {
    let (parts, mut body) = req.into_parts();
    let mut length = 0;
    while let Some(Ok(chunk)) = body.data().await {
        length += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    count.fetch_add(1, Ordering::SeqCst);
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if let Some(authority) = parts.uri.authority() {
        headers.insert(0, (":authority".to_owned(), authority.to_string()));
    }
    let target = parts
        .uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.to_string());
    let payload = document(
        parts.method.as_str(),
        &target,
        headers,
        "2",
        client_cert,
        length,
    );
    let response = http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(Bytes::from(payload), true);
    }
}
