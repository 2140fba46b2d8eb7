//! TLS-ALPN-01 (RFC 8737) on the TLS listeners. Pingora's listener offers
//! one ALPN list (`h2`, `http/1.1`), and rustls refuses a client whose offer
//! meets none of the server's, so the validation's `acme-tls/1` never gets
//! past it. This runs before that handshake: it reads the ClientHello (and
//! puts it back), and only when it offers `acme-tls/1` for a name this
//! gateway (or its fleet) is validating does it answer the handshake itself
//! with a certificate carrying the key authorization's digest
//! (`acmeIdentifier`), then closes the connection as the RFC asks. Every
//! other handshake goes on to the listener's settings untouched.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The protocol a TLS-ALPN-01 validation offers (alone).
const ACME_TLS: &[u8] = b"acme-tls/1";

/// A TLS record header, and the largest record body (2^14 bytes).
const RECORD_HEADER: usize = 5;
const RECORD_MAX: usize = 16 * 1024;

/// How long a validation's handshake may take once recognised.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The listeners' pre-handshake step, installed with `challenge = "tls-alpn-01"`.
pub struct TlsAlpnChallenges;

#[async_trait]
impl PreTlsProcess for TlsAlpnChallenges {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let Some(name) = validation(stream).await else {
            return Ok(());
        };
        let Some(digest) = super::answer(&format!("alpn:{name}"))
            .await
            .and_then(|h| unhex(&h))
        else {
            // Offered only to validations: nothing is waiting on this name.
            return pingora::Error::e_explain(
                pingora::ErrorType::HandshakeError,
                "acme-tls/1 offered for a name no ACME order is validating",
            );
        };
        let answered = tokio::time::timeout(ANSWER_WITHIN, respond(stream, &name, &digest)).await;
        let why = match answered {
            Ok(Ok(())) => {
                tracing::info!(name = %name, "ACME: TLS-ALPN-01 validation answered");
                "acme-tls/1 validation answered; connection closed"
            }
            Ok(Err(e)) => {
                tracing::warn!(name = %name, error = %e, "ACME: TLS-ALPN-01 validation failed");
                "acme-tls/1 validation failed"
            }
            Err(_) => "acme-tls/1 validation timed out",
        };
        // The connection ends here: it never reaches the gateway's listener.
        pingora::Error::e_explain(pingora::ErrorType::HandshakeError, why)
    }
}

/// The SNI name of a ClientHello that offers `acme-tls/1`, reading it from
/// `stream` and putting every byte read back. `None` for anything else
/// (including a hello that does not parse, or spans several records: the
/// listener's own handshake deals with it).
async fn validation(stream: &mut L4Stream) -> Option<String> {
    let mut hello = Vec::with_capacity(1024);
    let read = read_record(stream, &mut hello).await;
    stream.rewind(&hello);
    read.ok()?;
    let mut acceptor = rustls::server::Acceptor::default();
    acceptor.read_tls(&mut hello.as_slice()).ok()?;
    let accepted = acceptor.accept().ok()??;
    let hello = accepted.client_hello();
    let mut protocols = hello.alpn()?;
    if !protocols.any(|p| p == ACME_TLS) {
        return None;
    }
    Some(hello.server_name()?.to_ascii_lowercase())
}

/// Reads into `buf` until it holds the first TLS record whole.
async fn read_record(stream: &mut L4Stream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        if buf.len() >= RECORD_HEADER {
            if buf[0] != 0x16 {
                // Not a handshake record: not ours to look at.
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            let body = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
            if body > RECORD_MAX {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            if buf.len() >= RECORD_HEADER + body {
                return Ok(());
            }
        }
        let want = RECORD_HEADER + RECORD_MAX - buf.len();
        let mut chunk = (&mut *stream).take(want as u64);
        if chunk.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Completes the validation's handshake with the challenge certificate for
/// `name`, ALPN `acme-tls/1` only, then closes it.
async fn respond(stream: &mut L4Stream, name: &str, digest: &[u8; 32]) -> anyhow::Result<()> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Not `with_single_cert`: its check that the key matches parses the
    // certificate with webpki, which refuses the critical acmeIdentifier.
    let signing = provider.key_provider.load_private_key(key)?;
    let certified = rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signing);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![ACME_TLS.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut tls = acceptor.accept(stream).await?;
    // RFC 8737 3: nothing is exchanged after the handshake.
    tls.shutdown().await?;
    Ok(())
}

/// Lower-case hex, as the digest is kept in Redis.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_goes_through_hex_and_back() {
        let digest: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(unhex(&hex(&digest)), Some(digest));
        assert_eq!(unhex("00"), None);
        assert_eq!(unhex(&"zz".repeat(32)), None);
    }
}
