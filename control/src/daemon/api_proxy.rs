//! The `api` container (`--roles api`): the REST API's port, served over the same bounded
//! listener and TLS as the single-process daemon, forwarding every request unchanged to the
//! control container's local socket (`roles::CONTROL_SOCKET`). Tokens are checked, audited and
//! answered there; this front holds no state, so it restarts (or is upgraded) alone while jobs
//! go on. While the control container is down (restarting), requests get a 503 that says so.

use super::config::{ApiTls, DaemonOptions};
use super::roles::CONTROL_SOCKET;
use crate::error::IoContext;
use crate::{Error, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the API front waits at start for the control container to have made the node's
/// certificate (it is started after the control container is up; this covers a slow disk).
const IDENTITY_WAIT: Duration = Duration::from_secs(30);
const IDENTITY_POLL: Duration = Duration::from_millis(100);
/// Bound on connecting to the control container's socket and on its answer's head: a control
/// container that accepts but hangs is reported, not waited on forever. Long requests (an
/// events follow) stream their body after the head.
const FORWARD_HEAD_TIMEOUT: Duration = Duration::from_secs(120);

struct Front {
    socket: PathBuf,
}

/// Serves the API front until `stop` completes.
pub async fn serve(
    opts: DaemonOptions,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let tls = match &opts.api_tls {
        None => None,
        Some(ApiTls::NodeCertificate) => {
            let (crt, key) = (
                opts.data_dir.join(crate::tls::CERT_FILE),
                opts.data_dir.join(crate::tls::KEY_FILE),
            );
            let t0 = Instant::now();
            while !(crt.exists() && key.exists()) {
                if t0.elapsed() > IDENTITY_WAIT {
                    return Err(Error::Invalid(format!(
                        "no node certificate in {} after {IDENTITY_WAIT:?}: start the control \
                         container (--roles control,data) first; it creates it",
                        opts.data_dir.display()
                    )));
                }
                tokio::time::sleep(IDENTITY_POLL).await;
            }
            Some(crate::tls::Identity::from_files(&crt, &key)?.api_server_config()?)
        }
        Some(ApiTls::Files { cert, key }) => {
            Some(crate::tls::Identity::from_files(cert, key)?.api_server_config()?)
        }
    };
    let api = tokio::net::TcpListener::bind(opts.api)
        .await
        .ctx(|| format!("listening for the API on {}", opts.api))?;
    let front = Arc::new(Front {
        socket: opts.data_dir.join(CONTROL_SOCKET),
    });
    let app = axum::Router::new().fallback(forward).with_state(front);
    // For a supervisor that cannot read this container's answers (the API over TLS).
    let me = crate::supervisor::SelfReport {
        pid: std::process::id(),
        version: mover::software_version().to_string(),
    };
    // Best effort: before the control container's first start there is no data dir yet, and
    // over plain HTTP the probe reads the release from the answers anyway.
    if let Ok(v) = serde_json::to_vec(&me) {
        let p = opts.data_dir.join(crate::supervisor::API_SELF_FILE);
        if let Err(e) = crate::private_file::write_private(&p, &v) {
            tracing::warn!("writing {}: {e}", p.display());
        }
    }
    tracing::info!(api = %opts.api, "mover API container ready");
    crate::systemd::sd_notify("READY=1");
    axum::serve(
        super::http::Limited::new(api, tls.map(tokio_rustls::TlsAcceptor::from)),
        app,
    )
    .with_graceful_shutdown(stop)
    .await
    .ctx(|| "serving the API".to_string())?;
    tracing::info!("mover API container stopped");
    Ok(())
}

async fn forward(State(front): State<Arc<Front>>, req: Request) -> Response {
    let mut res = match tokio::time::timeout(FORWARD_HEAD_TIMEOUT, send(&front, req)).await {
        Ok(Ok(res)) => res,
        Ok(Err(why)) => unavailable(why),
        Err(_) => unavailable(format!(
            "the control container did not answer within {FORWARD_HEAD_TIMEOUT:?}"
        )),
    };
    // The supervisor reads each container's release; this one's is not the control's.
    if let Ok(v) = axum::http::HeaderValue::from_str(mover::software_version()) {
        res.headers_mut()
            .insert(crate::supervisor::API_VERSION_HEADER, v);
    }
    res
}

async fn send(front: &Front, req: Request) -> std::result::Result<Response, String> {
    let s = tokio::net::UnixStream::connect(&front.socket)
        .await
        .map_err(|e| {
            format!(
                "the control container is not running ({}: {e}); its supervisor restarts it, \
                 try again shortly (<data-dir>/containers.json shows the containers)",
                front.socket.display()
            )
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .map_err(|e| format!("reaching the control container: {e}"))?;
    // Drives the connection; it ends when the answer's body is done or either side goes.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("control container connection: {e}");
        }
    });
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("the control container dropped the request: {e}"))?;
    Ok(res.map(Body::new))
}

fn unavailable(why: String) -> Response {
    tracing::warn!("{why}");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "error": why })),
    )
        .into_response()
}
