//! Blocking client for the REST API of `mover daemon` (contract: docs/api.md): plain HTTP on
//! loopback, or HTTPS trusting exactly the certificate given with `--api-cert`.
//! Request bodies are the control crate's types (`control::api_types`, `control::model::Edit`),
//! the ones the daemon reads; every answer is a `serde_json::Value` so the CLI keeps working
//! when the daemon adds fields, and `--json` prints it as the daemon sent it.

use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

pub const DEFAULT_API: &str = "http://127.0.0.1:3713";
/// Long enough for a daemon that must first reach its peer (authorize, replicate), short
/// enough that a hung daemon does not hang a script forever.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Options every control-plane command takes: where the daemon is, who we are, output format.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Base URL of the daemon's REST API (a bare HOST:PORT means http://HOST:PORT; https://
    /// for a daemon serving it over TLS, with --api-cert).
    #[arg(long, env = "MOVER_API", default_value = DEFAULT_API, value_name = "URL")]
    pub api: String,
    /// For an https:// API: the certificate to trust, as a PEM file (the daemon's node.crt
    /// from its data dir, or the api_cert it was given). Nothing else is trusted. With an IP
    /// address in the URL the certificate must name `mover-node`, as node certificates do.
    #[arg(long, env = "MOVER_API_CERT", value_name = "FILE")]
    pub api_cert: Option<std::path::PathBuf>,
    /// API token. The daemon writes its admin token to <data-dir>/admin.token on first start;
    /// `mover token create` makes tokens with narrower roles.
    #[arg(
        long,
        env = "MOVER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Print the daemon's JSON answer (one line) instead of text.
    #[arg(long)]
    pub json: bool,
}

impl ApiArgs {
    pub fn client(&self) -> Api {
        Api::with_cert(&self.api, self.token.clone(), self.api_cert.as_deref())
    }
}

/// Why a request to the daemon did not give the answer asked for. Each kind has its own exit
/// code (exit.rs), so scripts can tell "not allowed" from "no such thing" from "daemon down".
#[derive(Debug)]
pub enum ApiError {
    /// No token was given; checked before connecting so the hint is not hidden behind a 401.
    NoToken,
    /// Connecting, sending or reading failed (refused, timed out, bad URL).
    Unreachable { url: String, detail: String },
    /// A success status whose body is not JSON: a daemon of another version or not a daemon.
    BadAnswer { url: String, detail: String },
    /// The daemon answered with an error status and (usually) `{"error": message}`.
    Status {
        status: u16,
        method: &'static str,
        path: String,
        message: String,
    },
    /// Refused before asking the daemon, with the status it would have answered (an id prefix
    /// that matches no relationship is a 404); exit codes follow the status.
    Local { status: u16, message: String },
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } | ApiError::Local { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::NoToken => write!(
                f,
                "no API token: pass --token TOKEN or set MOVER_TOKEN (the daemon's admin token is in <data-dir>/admin.token)"
            ),
            ApiError::Unreachable { url, detail } => write!(f, "cannot reach the mover daemon at {url}: {detail}"),
            ApiError::BadAnswer { url, detail } => write!(f, "unreadable answer from the mover daemon at {url}: {detail}"),
            ApiError::Status { status, method, path, message } => write!(f, "{message} (HTTP {status} on {method} {path})"),
            ApiError::Local { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for ApiError {}

#[derive(Clone, Copy)]
enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// No request body, of a type `call` can be instantiated with.
const NO_BODY: Option<&()> = None;

pub struct Api {
    pub base: String,
    pub token: Option<String>,
    /// The agent, or why none could be made (a certificate that cannot be read): every call
    /// then fails with that reason.
    agent: Result<ureq::Agent, String>,
    /// Where requests go (the base, with the name the certificate is checked against).
    target: String,
}

/// The name node certificates carry (`control::tls::NODE_NAME`): an API reached by IP address
/// is checked against it.
const NODE_NAME: &str = control::tls::NODE_NAME;

/// Resolves the node name to the address the operator gave (the certificate names the node,
/// the URL its address).
#[derive(Debug)]
struct Pinned(std::net::SocketAddr);

impl ureq::unversioned::resolver::Resolver for Pinned {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let mut out = self.empty();
        out.push(self.0);
        Ok(out)
    }
}

impl Api {
    #[cfg(test)]
    pub fn new(base: &str, token: Option<String>) -> Api {
        Api::with_cert(base, token, None)
    }

    /// A client of the API at `base`; an https:// base trusts only `cert`.
    pub fn with_cert(base: &str, token: Option<String>, cert: Option<&std::path::Path>) -> Api {
        let base = base.trim().trim_end_matches('/');
        // The daemon's own --api flag takes HOST:PORT; accept the same spelling here.
        let base = if base.contains("://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        let (agent, target) = match Self::agent(&base, cert) {
            Ok((a, t)) => (Ok(a), t),
            Err(e) => (Err(e), base.clone()),
        };
        Api {
            base,
            token,
            agent,
            target,
        }
    }

    fn agent(base: &str, cert: Option<&std::path::Path>) -> Result<(ureq::Agent, String), String> {
        let config = ureq::Agent::config_builder()
            // Error statuses carry the daemon's {"error": ...} message; we want to read it.
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            // The API lives on loopback or a management network: an HTTP_PROXY meant for the
            // internet must not intercept it (and with it the bearer token).
            .proxy(None);
        let Some(rest) = base.strip_prefix("https://") else {
            return Ok((config.build().new_agent(), base.to_string()));
        };
        let cert = cert.ok_or_else(|| {
            "an https:// API needs --api-cert FILE (the daemon's node.crt, or its api_cert)"
                .to_string()
        })?;
        let pem = std::fs::read(cert).map_err(|e| format!("reading {}: {e}", cert.display()))?;
        let root = ureq::tls::Certificate::from_pem(&pem)
            .map_err(|e| format!("{} holds no PEM certificate: {e}", cert.display()))?;
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[root]))
            .build();
        let config = config.tls_config(tls).build();
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        match authority.parse::<std::net::SocketAddr>() {
            // An address, not a name: check the certificate against the node name and connect
            // to the address given.
            Ok(addr) => {
                let agent = ureq::Agent::with_parts(
                    config,
                    ureq::unversioned::transport::DefaultConnector::new(),
                    Pinned(addr),
                );
                let sep = if path.is_empty() { "" } else { "/" };
                let target = format!("https://{NODE_NAME}:{}{sep}{path}", addr.port());
                Ok((agent, target))
            }
            Err(_) => Ok((config.new_agent(), base.to_string())),
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::Get, path, NO_BODY)
    }

    pub fn post(&self, path: &str, body: &impl Serialize) -> Result<Value, ApiError> {
        self.call(Method::Post, path, Some(body))
    }

    /// A POST whose request has no body (an action on the resource the path names).
    pub fn post_empty(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::Post, path, NO_BODY)
    }

    pub fn patch(&self, path: &str, body: &impl Serialize) -> Result<Value, ApiError> {
        self.call(Method::Patch, path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::Delete, path, NO_BODY)
    }

    /// One request; a success answer with an empty body (204) is `Value::Null`.
    fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Value, ApiError> {
        let token = self
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::NoToken)?;
        let url = format!("{}{}", self.target, path);
        let unreachable = |detail: String| ApiError::Unreachable {
            url: self.base.clone(),
            detail,
        };
        let agent = self.agent.as_ref().map_err(|e| unreachable(e.clone()))?;
        let auth = format!("Bearer {token}");
        let res = match method {
            // Neither carries a body in this API.
            Method::Get => agent.get(&url).header("Authorization", &auth).call(),
            Method::Delete => agent.delete(&url).header("Authorization", &auth).call(),
            Method::Post | Method::Patch => {
                let rb = if matches!(method, Method::Post) {
                    agent.post(&url)
                } else {
                    agent.patch(&url)
                };
                let rb = rb.header("Authorization", &auth);
                match body {
                    None => rb.send_empty(),
                    Some(b) => rb.send_json(b),
                }
            }
        };
        let mut resp = res.map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| ApiError::BadAnswer {
                url,
                detail: format!("not JSON: {e}"),
            });
        }
        Err(ApiError::Status {
            status: status.as_u16(),
            method: method.name(),
            path: path.to_string(),
            message: error_message(&text, status.canonical_reason()),
        })
    }
}

/// The daemon's `{"error": ...}` message; a proxy or another server may answer with plain
/// text or HTML instead, of which a short prefix is still the best clue.
fn error_message(body: &str, reason: Option<&str>) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        if let Some(m) = v.get("error").and_then(Value::as_str) {
            return m.to_string();
        }
    }
    let t = body.trim();
    if t.is_empty() {
        return reason.unwrap_or("error without a message").to_string();
    }
    let short: String = t.chars().take(200).collect();
    if short.len() < t.len() {
        format!("{short}...")
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_prefers_the_error_field() {
        assert_eq!(
            error_message(r#"{"error":"token lacks SOURCE_WRITE"}"#, Some("Forbidden")),
            "token lacks SOURCE_WRITE"
        );
        assert_eq!(error_message("", Some("Not Found")), "Not Found");
        assert_eq!(error_message("  bad gateway  ", None), "bad gateway");
        assert_eq!(error_message(&"x".repeat(300), None).len(), 203);
    }

    #[test]
    fn base_url_gets_a_scheme_and_loses_trailing_slashes() {
        assert_eq!(
            Api::new("127.0.0.1:3713/", None).base,
            "http://127.0.0.1:3713"
        );
        assert_eq!(
            Api::new("http://10.0.0.1:80", None).base,
            "http://10.0.0.1:80"
        );
    }

    #[test]
    fn missing_or_blank_token_is_refused_before_connecting() {
        for t in [None, Some(String::new()), Some("  ".into())] {
            let e = Api::new("http://127.0.0.1:1", t).get("/v1/node").err();
            assert!(matches!(e, Some(ApiError::NoToken)), "{e:?}");
        }
    }

    #[test]
    fn display_names_status_and_request() {
        let e = ApiError::Status {
            status: 404,
            method: "GET",
            path: "/v1/x".into(),
            message: "no such relationship".into(),
        };
        assert_eq!(
            e.to_string(),
            "no such relationship (HTTP 404 on GET /v1/x)"
        );
        assert!(ApiError::NoToken.to_string().contains("MOVER_TOKEN"));
    }
}
