//! An HTTP/1.1 upstream that answers each request with the raw response
//! bytes a test chose for its path (hop-by-hop fields, odd framing, close-
//! delimited bodies), and records every request head exactly as received.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// One scripted answer: the bytes to write, and whether to close after them.
#[derive(Clone)]
pub struct Script {
    pub bytes: Vec<u8>,
    pub close: bool,
}

pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl ScriptedUpstream {
    /// Starts on a free loopback port; `scripts` maps a request path to its
    /// answer (anything else gets `200 ok` with a length).
    pub fn start(scripts: HashMap<String, Script>) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind scripted upstream");
        let addr = listener.local_addr().expect("local addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let scripts = Arc::new(scripts);
        let (recorded, stopping) = (heads.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (scripts, recorded) = (scripts.clone(), recorded.clone());
                thread::spawn(move || serve(stream, &scripts, &recorded));
            }
        });
        ScriptedUpstream { addr, heads, stop }
    }

    /// Every request head received so far, as raw text.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(stream: TcpStream, scripts: &HashMap<String, Script>, recorded: &Mutex<Vec<String>>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let end = line == "\r\n" || line == "\n";
            head.push_str(&line);
            if end {
                break;
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = head
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("")
            .to_owned();
        recorded.lock().unwrap().push(head);
        let script = scripts.get(&path).cloned().unwrap_or_else(|| Script {
            bytes: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            close: false,
        });
        if writer.write_all(&script.bytes).is_err() || script.close {
            return;
        }
    }
}
