//! TLS to PostgreSQL as libpq means it (docs/design.md, "TLS to PostgreSQL").
//!
//! sqlx's own TLS differs from libpq where it matters: `sslrootcert` is added to the
//! compiled-in public web roots instead of replacing them (any publicly trusted certificate
//! then passes `verify-ca`), and `require` with `sslrootcert` checks nothing where libpq
//! verifies the chain. So for every mode that verifies, smsgate makes the TLS connection
//! itself: sqlx speaks the plain protocol over a unix socket in a private directory to a
//! tunnel task, which opens the TCP connection, asks the server for TLS (the SSLRequest of
//! the frontend/backend protocol), verifies its certificate against `sslrootcert` alone and
//! relays bytes both ways. Modes that verify nothing (`disable`, `allow`, `prefer`, `require`
//! without a root certificate) are left to sqlx, which handles them as libpq does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::libpq_tls::{Anchors, Policy, TlsParams, policy};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// The SSLRequest message: length 8, then the request code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// A server that does not answer the TCP connect or the TLS handshake in this time is down.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// `options` (parsed from `url`) as smsgate connects with them: unchanged when nothing is to
/// be verified (or the host is a unix socket, where libpq uses no TLS), otherwise pointed at
/// a verifying tunnel started on the current tokio runtime.
pub fn with_libpq_tls(options: PgConnectOptions, url: &str) -> anyhow::Result<PgConnectOptions> {
    if options.get_socket().is_some() || options.get_host().starts_with('/') {
        return Ok(options);
    }
    let params = TlsParams::of(url);
    let Policy::Verified {
        anchors,
        host_name,
        plain_fallback,
    } = policy(&params)?
    else {
        return Ok(options);
    };
    let config = client_config(&anchors, host_name, &params)?;
    // Where to connect (`hostaddr` when given), and the name the certificate must carry
    // (the host as written, as libpq compares it).
    let address = options.get_host().to_string();
    let name = params.host.clone().unwrap_or_else(|| address.clone());
    let server_name = ServerName::try_from(name.clone())
        .with_context(|| format!("{name} is not a host name or IP address TLS can verify"))?;
    let target = Arc::new(Target {
        host: address,
        port: options.get_port(),
        server_name,
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        plain_fallback,
        timeout: params.handshake_timeout(HANDSHAKE_TIMEOUT),
    });
    let dir = start_tunnel(target)?;
    Ok(options.socket(dir).ssl_mode(PgSslMode::Disable))
}

fn client_config(
    anchors: &Anchors,
    host_name: bool,
    params: &TlsParams,
) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    match anchors {
        Anchors::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read sslrootcert {}", path.display()))?;
            for cert in certs {
                let cert =
                    cert.with_context(|| format!("sslrootcert {} is not PEM", path.display()))?;
                roots.add(cert).with_context(|| {
                    format!(
                        "sslrootcert {} holds an unusable certificate",
                        path.display()
                    )
                })?;
            }
        }
        Anchors::System => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        bail!("sslrootcert gives no certificate to trust");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("cannot build the certificate verifier")?;
    let verifier: Arc<dyn ServerCertVerifier> = if host_name {
        chain
    } else {
        Arc::new(ChainOnly(chain))
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&params.client_cert, &params.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("cannot read sslcert {cert}"))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("sslcert {cert} is not PEM"))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read sslkey {key}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("sslcert and sslkey do not make a client certificate")
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => bail!("sslcert and sslkey go together"),
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name on the certificate is not
/// compared with the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The server a tunnel reaches, and how it verifies it.
struct Target {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
    /// `prefer`: a server that offers no TLS is spoken to in plain text.
    plain_fallback: bool,
    timeout: Duration,
}

/// Listens on `<dir>/.s.PGSQL.<port>` (the name sqlx connects to) in a new directory only
/// this user can enter: the tunnel presents any client certificate, so no other local user
/// may use it. Returns the directory.
fn start_tunnel(target: Arc<Target>) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let runtime = tokio::runtime::Handle::try_current()
        .context("the TLS tunnel to PostgreSQL needs a running tokio runtime")?;
    let base = tunnel_base();
    remove_dead_processes_tunnels(&base);
    // An unguessable name: another local user cannot take it first and stop the start-up.
    let mut attempts = 0;
    let dir = loop {
        let dir = base.join(format!(
            "{TUNNEL_PREFIX}{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => break dir,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => {
                attempts += 1;
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot create {}", dir.display()));
            }
        }
    };
    hold_liveness_lock(&dir)?;
    let path = dir.join(format!(".s.PGSQL.{}", target.port));
    let listener = {
        let _entered = runtime.enter();
        UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?
    };
    runtime.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((client, _)) => {
                    tokio::spawn(relay(client, target.clone()));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "the TLS tunnel to PostgreSQL cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(dir)
}

/// Tunnel directories are named `<prefix><pid>-<random>` in the temporary directory.
const TUNNEL_PREFIX: &str = "smsgate-tls-";

/// The file in a tunnel directory its process holds an exclusive lock on while it lives.
const LIVENESS_LOCK: &str = "owner.lock";

/// Removes this user's tunnel directories whose process is gone (a unix socket outlives its
/// process), so restarts leave none behind. Gone means its lock can be taken: process ids
/// say nothing when containers with their own ids share the temporary directory.
fn remove_dead_processes_tunnels(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let me = nix::unistd::getuid().as_raw();
    for entry in entries.flatten() {
        let named_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(TUNNEL_PREFIX));
        // A minute old at least: a directory being set up has no lock yet.
        let settled = |m: &std::fs::Metadata| {
            m.modified()
                .ok()
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60))
        };
        let owned = entry
            .metadata()
            .is_ok_and(|m| m.is_dir() && m.uid() == me && settled(&m));
        if !named_ours || !owned {
            continue;
        }
        let Ok(lock) = std::fs::File::open(entry.path().join(LIVENESS_LOCK)) else {
            continue;
        };
        if lock.try_lock().is_ok() {
            std::fs::remove_dir_all(entry.path()).ok();
        }
    }
}

/// Creates the lock file in `dir` and holds its lock until the process ends (the file is
/// kept open for good: the lock is released only by the process's exit).
fn hold_liveness_lock(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(LIVENESS_LOCK);
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.lock()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    std::mem::forget(file);
    Ok(())
}

/// Where tunnel directories go: the user's runtime directory when there is one (never swept
/// by age), else the temporary directory.
fn tunnel_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// One connection: TCP, SSLRequest, a verified handshake, then bytes both ways. A failure
/// is answered as PostgreSQL answers a refused start-up, so sqlx reports it with its reason.
async fn relay(mut client: UnixStream, target: Arc<Target>) {
    let connected = tokio::time::timeout(target.timeout, handshake(&target)).await;
    // Either side closing ends the relay; errors are the connection's end, which sqlx sees.
    match connected {
        Ok(Ok(Server::Tls(mut server))) => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut *server).await;
        }
        Ok(Ok(Server::Plain(mut server))) => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
        Ok(Err(reason)) => refuse(&mut client, &reason).await,
        Err(_) => refuse(&mut client, "no TLS handshake with PostgreSQL in time").await,
    }
}

/// The server side of a relay.
enum Server {
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// `prefer`, and the server offers no TLS.
    Plain(TcpStream),
}

async fn handshake(target: &Target) -> Result<Server, String> {
    let mut tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|err| format!("cannot reach {}:{}: {err}", target.host, target.port))?;
    tcp.set_nodelay(true).ok();
    tcp.write_all(&SSL_REQUEST)
        .await
        .map_err(|err| format!("SSLRequest not sent: {err}"))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|err| format!("no answer to the SSLRequest: {err}"))?;
    match answer[0] {
        b'S' => {}
        b'N' if target.plain_fallback => return Ok(Server::Plain(tcp)),
        _ => return Err("the server does not offer TLS".into()),
    }
    target
        .connector
        .connect(target.server_name.clone(), tcp)
        .await
        .map(|tls| Server::Tls(Box::new(tls)))
        .map_err(|err| format!("TLS handshake with PostgreSQL failed: {err}"))
}

/// An ErrorResponse (severity FATAL, SQLSTATE 08006 connection_failure) with `reason`.
async fn refuse(client: &mut UnixStream, reason: &str) {
    tracing::warn!(reason, "TLS to PostgreSQL refused");
    let mut fields = Vec::new();
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "08006"),
        (b'M', reason),
    ] {
        fields.push(code);
        fields.extend(value.bytes().filter(|b| *b != 0));
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend(
        u32::try_from(fields.len() + 4)
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    message.extend(fields);
    let _ = client.write_all(&message).await;
    let _ = client.shutdown().await;
}
