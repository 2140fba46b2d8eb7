//! A deliberately raw HTTP/1.1 client, so tests can send exactly the bytes a
//! hostile client would (underscored header names, repeated headers, odd paths).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The echo upstream's view of the request: every header it received.
    pub fn echoed_headers(&self) -> Vec<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an echo response ({e}): {}", self.body));
        doc["headers"]
            .as_array()
            .expect("headers array")
            .iter()
            .map(|pair| {
                (
                    pair[0].as_str().unwrap_or_default().to_owned(),
                    pair[1].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// The request-target exactly as the echo upstream received it.
    pub fn echoed_target(&self) -> String {
        let doc: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an echo response ({e}): {}", self.body));
        doc["target"].as_str().expect("target").to_owned()
    }

    /// Values of the echoed header `name` (any case; `_` and `-` distinct).
    pub fn echoed(&self, name: &str) -> Vec<String> {
        self.echoed_headers()
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }
}

/// A connection that can carry several requests (keep-alive).
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to gateway");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        Client {
            writer: stream.try_clone().expect("clone stream"),
            reader: BufReader::new(stream),
        }
    }

    /// Sends `method path` with `headers` (sent verbatim, in order) and reads the response.
    /// Returns `None` when the server closed the connection instead of answering.
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<Response> {
        let mut request = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            request.push_str("Host: localhost\r\n");
        }
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "POST" || method == "PUT" {
            request.push_str("Content-Length: 0\r\n");
        }
        request.push_str("\r\n");
        self.writer.write_all(request.as_bytes()).ok()?;
        read_response(&mut self.reader, method == "HEAD")
    }
}

impl Client {
    /// Writes `bytes` exactly as given, without reading anything.
    pub fn write(&mut self, bytes: &[u8]) -> Option<()> {
        self.writer.write_all(bytes).ok()
    }

    /// Reads the next response (`None`: the connection closed first).
    pub fn read(&mut self) -> Option<Response> {
        read_response(&mut self.reader, false)
    }

    /// Reads everything until the server closes the connection.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        let _ = self.reader.read_to_end(&mut all);
        all
    }
}

fn read_response(reader: &mut BufReader<TcpStream>, head: bool) -> Option<Response> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line).ok()? == 0 {
        return None;
    }
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if !head {
        if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(len, 0);
            reader.read_exact(&mut body).ok()?;
        } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).ok()?;
                let n = usize::from_str_radix(size.trim(), 16).ok()?;
                let mut chunk = vec![0; n + 2];
                reader.read_exact(&mut chunk).ok()?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
    }
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Sends `bytes` exactly as given on a fresh connection and reads one
/// response; `None` when the connection closed without one.
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Option<Response> {
    let stream = TcpStream::connect(addr).expect("connect to gateway");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set timeout");
    let mut writer = stream.try_clone().expect("clone stream");
    writer.write_all(bytes).ok()?;
    read_response(&mut BufReader::new(stream), bytes.starts_with(b"HEAD "))
}

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", path, headers)
}

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    Client::connect(addr)
        .send(method, path, headers)
        .unwrap_or_else(|| panic!("no response to {method} {path}"))
}

/// A request head read line by line as an upstream would, lower-cased
/// (`None`: the connection ended first).
pub fn read_head_lowercase(reader: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some(head);
        }
        head.push_str(&line.to_ascii_lowercase());
    }
}
