//! A demo upstream that answers every request with the headers it received,
//! so you can see what sessiongate injects: `cargo run --example echo_upstream -- 127.0.0.1:3000`.

#[path = "../tests/support/echo.rs"]
#[allow(dead_code)]
mod echo;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    match echo::EchoUpstream::start(&addr) {
        Ok(server) => {
            println!("echo upstream listening on http://{}", server.addr);
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("echo upstream: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    }
}
