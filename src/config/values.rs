//! Value syntax that several sections share: listen addresses and redirect
//! targets.

use std::net::SocketAddr;

pub(super) fn is_listen_addr(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok()
        && !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

pub(super) fn is_valid_redirect(target: &str) -> bool {
    if target.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    if target.starts_with('/') {
        // `//host` and `/\host` are both treated by browsers as another origin.
        return !(target.starts_with("//") || target.starts_with("/\\"));
    }
    match target.parse::<http::Uri>() {
        Ok(uri) => {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some_and(|a| !a.host().is_empty())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_rules() {
        assert!(is_valid_redirect("/login"));
        assert!(is_valid_redirect("https://auth.example.com/login?next=/"));
        assert!(!is_valid_redirect("//evil.example"));
        assert!(!is_valid_redirect("/\\evil.example"));
        assert!(!is_valid_redirect("login"));
        assert!(!is_valid_redirect("javascript:alert(1)"));
        assert!(!is_valid_redirect("ftp://x/"));
    }
}
