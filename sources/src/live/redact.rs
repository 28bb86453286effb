//! Keeping passwords out of messages: connection strings are shown with `****` for the password,
//! and every text that came from the driver is scrubbed of the password (as written and
//! percent-decoded) before it reaches an error or a log line.
//!
//! ```
//! use changeflow_sources::live::redact::{redact_uri, Secrets};
//! let uri = "mongodb://app:s3cr%40t@db.example:27017/?replicaSet=rs0";
//! assert_eq!(redact_uri(uri), "mongodb://app:****@db.example:27017/?replicaSet=rs0");
//! let secrets = Secrets::of_uri(uri);
//! assert_eq!(secrets.scrub("auth failed for s3cr@t"), "auth failed for ****");
//! ```

/// The connection string with the password of its user-info replaced by `****`.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else {
        return uri.to_string();
    };
    let rest = &uri[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return uri.to_string();
    };
    let userinfo = &authority[..at];
    let user = match userinfo.find(':') {
        Some(colon) => format!("{}:****", &userinfo[..colon]),
        None => userinfo.to_string(),
    };
    format!("{}{user}{}", &uri[..scheme_end], &uri[scheme_end + at..])
}

/// The password of a connection string, raw and percent-decoded, to scrub from messages.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    values: Vec<String>,
}

impl Secrets {
    /// The secrets of `uri` (none if it has no password).
    pub fn of_uri(uri: &str) -> Self {
        let mut values = Vec::new();
        if let Some(scheme_end) = uri.find("://").map(|i| i + 3) {
            let rest = &uri[scheme_end..];
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let authority = &rest[..authority_end];
            if let Some(at) = authority.rfind('@')
                && let Some(colon) = authority[..at].find(':')
            {
                let raw = &authority[colon + 1..at];
                if !raw.is_empty() {
                    values.push(raw.to_string());
                    let decoded = percent_decode(raw);
                    if decoded != raw {
                        values.push(decoded);
                    }
                }
            }
        }
        // Longest first, so a secret containing another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Secrets { values }
    }

    /// `text` with every secret replaced by `****`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.values {
            out = out.replace(secret.as_str(), "****");
        }
        out
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_without_passwords_are_unchanged() {
        for uri in [
            "mongodb://db:27017",
            "mongodb://user@db/?authSource=admin",
            "mongodb+srv://cluster.example/db",
            "not a uri",
        ] {
            assert_eq!(redact_uri(uri), uri);
            assert_eq!(Secrets::of_uri(uri).scrub(uri), uri);
        }
        assert_eq!(
            redact_uri("mongodb://u:p@a:1,b:2/db?x=y@z"),
            "mongodb://u:****@a:1,b:2/db?x=y@z"
        );
    }
}
