//! `NatsOptions`: how to reach a cluster, with auth and TLS, and the refusal to send in
//! clear off-host unless told to.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::NatsError;

/// Where the cluster is and how to authenticate.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Server URLs, comma-separated (`nats://h1:4222,nats://h2:4222`, `tls://…`).
    pub url: String,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Token auth.
    pub token: Option<String>,
    /// CA file for TLS; setting it requires TLS.
    pub ca: Option<PathBuf>,
    /// Allow plain `nats://` to hosts other than loopback.
    pub insecure: bool,
    /// Client name shown by the server.
    pub name: Option<String>,
    /// How often the client pings its server; a dead server is noticed after two missed
    /// pongs. Default 2 s.
    pub ping_interval: Option<Duration>,
}

impl NatsOptions {
    /// Options for `url` with no auth.
    pub fn new(url: impl Into<String>) -> NatsOptions {
        NatsOptions {
            url: url.into(),
            ..NatsOptions::default()
        }
    }

    fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Checks that nothing would go in clear to another host (unless `insecure`).
    ///
    /// # Errors
    ///
    /// [`NatsError::Options`] naming the URL.
    pub fn check(&self) -> Result<(), NatsError> {
        let urls = self.urls();
        if urls.is_empty() {
            return Err(NatsError::Options("no NATS URL given".into()));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(NatsError::Options(
                "a NATS user needs a password and a password a user".into(),
            ));
        }
        let tls = self.ca.is_some();
        for url in &urls {
            let (scheme, rest) = url.split_once("://").unwrap_or(("nats", url));
            let host = host_of(rest);
            let secure = tls || scheme == "tls" || scheme == "wss";
            if !secure && !self.insecure && !is_loopback(host) {
                return Err(NatsError::Options(format!(
                    "{url} is not on this host and is not TLS: use tls:// (with --nats-ca), or \
                     --nats-insecure on a network you trust"
                )));
            }
        }
        Ok(())
    }
}

/// The host part of `host:port` or `user:pass@host:port` or `[v6]:port`.
fn host_of(rest: &str) -> &str {
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let rest = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = rest.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    rest.rsplit_once(':').map_or(rest, |(h, _)| h)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Connects to the cluster; the client reconnects by itself, forever, to any server it
/// knows (those given and those the cluster gossips).
///
/// # Errors
///
/// [`NatsError::Options`] from [`NatsOptions::check`]; [`NatsError::Connect`].
pub async fn connect(options: &NatsOptions) -> Result<async_nats::Client, NatsError> {
    options.check()?;
    let mut connect = async_nats::ConnectOptions::new()
        .max_reconnects(None)
        .ping_interval(options.ping_interval.unwrap_or(Duration::from_secs(2)))
        .connection_timeout(Duration::from_secs(5))
        // Requests carry their own timeouts (the router's try budget).
        .request_timeout(None)
        // Reconnect quickly: a request's deadline is short, the cluster has other nodes.
        .reconnect_delay_callback(|attempts| {
            let ms = (50u64 << attempts.min(6)).min(2_000);
            Duration::from_millis(ms / 2 + fastrand::u64(0..=ms / 2))
        });
    if let (Some(user), Some(password)) = (&options.user, &options.password) {
        connect = connect.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    if let Some(ca) = &options.ca {
        connect = connect.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some(name) = &options.name {
        connect = connect.name(name);
    }
    let urls: Vec<async_nats::ServerAddr> = options
        .urls()
        .iter()
        .map(|u| {
            u.parse()
                .map_err(|e| NatsError::Options(format!("bad NATS URL {u}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    connect.connect(urls).await.map_err(|e| NatsError::Connect {
        url: options.url.clone(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_nats_off_loopback_is_refused_unless_insecure_or_tls() {
        assert!(NatsOptions::new("nats://127.0.0.1:4222").check().is_ok());
        assert!(NatsOptions::new("localhost:4222").check().is_ok());
        assert!(NatsOptions::new("nats://[::1]:4222").check().is_ok());
        let off = NatsOptions::new("nats://127.0.0.1:4222,nats://10.0.0.2:4222");
        let err = off.check().unwrap_err().to_string();
        assert!(err.contains("10.0.0.2"), "{err}");
        assert!(NatsOptions::new("tls://10.0.0.2:4222").check().is_ok());
        let insecure = NatsOptions {
            insecure: true,
            ..NatsOptions::new("nats://u:p@10.0.0.2:4222")
        };
        assert!(insecure.check().is_ok());
        let half = NatsOptions {
            user: Some("u".into()),
            ..NatsOptions::new("nats://127.0.0.1:4222")
        };
        assert!(half.check().is_err());
        assert!(NatsOptions::new(" , ").check().is_err());
    }
}
