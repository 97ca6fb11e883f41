//! Redis URLs: `redis://` and `rediss://` (one server, read by redis-rs),
//! `redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/MASTER_NAME`
//! (sentinels, default port 26379) and
//! `redis+cluster://[user[:password]@]host[:port][,host[:port]...]` (seed
//! nodes, default port 6379), with `rediss+` for TLS. Every form takes
//! `?namespace=NAME` and `?replicas=N`.

use ::redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use super::{decode, invalid, without_password};
use crate::backend::redis::RedisBackend;
use crate::backend::redis::RedisBackendBuilder;
use crate::error::{Error, Result};

/// Whether `raw` is one of the Redis schemes.
pub(super) fn is_redis(raw: &str) -> bool {
    scheme(raw).is_some()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Single,
    Sentinel,
    Cluster,
}

/// The kind and whether TLS, from the scheme.
fn scheme(raw: &str) -> Option<(Kind, bool)> {
    let (scheme, _) = raw.split_once("://")?;
    Some(match scheme {
        "redis" => (Kind::Single, false),
        "rediss" => (Kind::Single, true),
        "redis+sentinel" => (Kind::Sentinel, false),
        "rediss+sentinel" => (Kind::Sentinel, true),
        "redis+cluster" => (Kind::Cluster, false),
        "rediss+cluster" => (Kind::Cluster, true),
        _ => return None,
    })
}

/// What the query says.
#[derive(Debug, Default, PartialEq)]
struct Params {
    namespace: Option<String>,
    replicas: Option<usize>,
}

fn params(raw: &str, query: &str) -> Result<Params> {
    let mut params = Params::default();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "namespace" => params.namespace = Some(value.into_owned()),
            "replicas" => {
                params.replicas = Some(value.parse().map_err(|_| {
                    invalid(
                        raw,
                        format!("replicas={value:?}: expected a number of replicas (0 turns acknowledgement off)"),
                    )
                })?);
            }
            other => return Err(invalid(raw, format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(params)
}

/// The builder `raw` describes, and its namespace.
pub(super) fn builder(raw: &str) -> Result<(RedisBackendBuilder, Option<String>)> {
    let (kind, tls) = scheme(raw).ok_or_else(|| invalid(raw, "not a Redis URL".into()))?;
    let (without_query, query) = raw.split_once('?').unwrap_or((raw, ""));
    let params = params(raw, query)?;
    let mut builder = match kind {
        Kind::Single => {
            let client = ::redis::Client::open(without_query).map_err(|e| Error::InvalidUrl {
                url: without_password(raw),
                reason: e.to_string(),
            })?;
            RedisBackend::builder(client)
        }
        Kind::Sentinel | Kind::Cluster => {
            let parsed = parse_multi(raw, kind, tls)?;
            let redis = parsed.redis();
            match kind {
                Kind::Sentinel => {
                    // The sentinels are asked without the nodes' credentials.
                    let sentinels = parsed.infos(RedisConnectionInfo::default());
                    let master = parsed.master.unwrap_or_default();
                    RedisBackend::sentinel(sentinels, master, redis, tls)
                }
                _ => RedisBackend::cluster(parsed.infos(redis)),
            }
        }
    };
    if let Some(replicas) = params.replicas {
        builder = builder.replicas(replicas);
    }
    Ok((builder, params.namespace))
}

/// A multi-host URL, read.
#[derive(Debug, PartialEq)]
struct Multi {
    tls: bool,
    hosts: Vec<(String, u16)>,
    user: Option<(String, Option<String>)>,
    master: Option<String>,
}

impl Multi {
    fn redis(&self) -> RedisConnectionInfo {
        let mut redis = RedisConnectionInfo::default();
        if let Some((user, password)) = &self.user {
            if !user.is_empty() {
                redis = redis.set_username(user);
            }
            if let Some(password) = password {
                redis = redis.set_password(password);
            }
        }
        redis
    }

    fn infos(&self, redis: RedisConnectionInfo) -> Vec<ConnectionInfo> {
        self.hosts
            .iter()
            .map(|(host, port)| {
                let addr = if self.tls {
                    ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host.clone(), *port)
                };
                addr.into_connection_info()
                    .expect("an address is a connection info")
                    .set_redis_settings(redis.clone())
            })
            .collect()
    }
}

fn parse_multi(raw: &str, kind: Kind, tls: bool) -> Result<Multi> {
    let rest = raw.split_once("://").map_or("", |(_, rest)| rest);
    let rest = rest.split_once('?').map_or(rest, |(rest, _)| rest);
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (name, password) = match userinfo.split_once(':') {
                Some((name, password)) => (name, Some(decode(raw, password)?)),
                None => (userinfo, None),
            };
            (Some((decode(raw, name)?, password)), hosts)
        }
        None => (None, authority),
    };
    let default_port = if kind == Kind::Sentinel { 26379 } else { 6379 };
    let mut parsed = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err(invalid(raw, "empty host in the host list".into()));
        }
        let check = url::Url::parse(&format!("http://{host}/"))
            .map_err(|e| invalid(raw, format!("bad host {host:?}: {e}")))?;
        let name = check
            .host_str()
            .ok_or_else(|| invalid(raw, format!("bad host {host:?}")))?;
        let name = name.trim_start_matches('[').trim_end_matches(']');
        parsed.push((name.to_owned(), check.port().unwrap_or(default_port)));
    }
    let path = path.trim_start_matches('/');
    let master = match kind {
        Kind::Sentinel if path.is_empty() || path.contains('/') => {
            return Err(invalid(
                raw,
                "a redis+sentinel:// URL names the master after the sentinels: \
                 redis+sentinel://host:26379,host:26380/MASTER_NAME"
                    .into(),
            ));
        }
        Kind::Sentinel => Some(decode(raw, path)?),
        _ if !path.is_empty() => {
            return Err(invalid(
                raw,
                format!(
                    "unexpected path {path:?}: a Redis Cluster has only database 0, and its URL \
                     lists seed nodes only"
                ),
            ));
        }
        _ => None,
    };
    Ok(Multi {
        tls,
        hosts: parsed,
        user,
        master,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str) -> String {
        match builder(url) {
            Err(Error::InvalidUrl { url, reason }) => format!("{url} | {reason}"),
            Err(other) => panic!("expected InvalidUrl, got {other:?}"),
            Ok(_) => panic!("expected InvalidUrl for {url}"),
        }
    }

    #[test]
    fn sentinel_urls_list_sentinels_and_name_the_master() {
        let url = parse_multi(
            "rediss+sentinel://app:p%40ss@10.0.0.1,h2:26380/my%20master",
            Kind::Sentinel,
            true,
        )
        .unwrap();
        assert_eq!(
            url,
            Multi {
                tls: true,
                hosts: vec![("10.0.0.1".into(), 26379), ("h2".into(), 26380)],
                user: Some(("app".into(), Some("p@ss".into()))),
                master: Some("my master".into()),
            }
        );
        assert_eq!(url.redis().password(), Some("p@ss"));
        assert!(matches!(
            url.infos(RedisConnectionInfo::default())[0].addr(),
            ConnectionAddr::TcpTls { port: 26379, .. }
        ));
        let (_, namespace) = builder("redis+sentinel://h/m?namespace=ops&replicas=0").unwrap();
        assert_eq!(namespace.as_deref(), Some("ops"));
    }

    #[test]
    fn cluster_urls_list_seed_nodes() {
        let url = parse_multi("redis+cluster://:pw@h1,[::1]:7001", Kind::Cluster, false).unwrap();
        assert_eq!(url.hosts, vec![("h1".into(), 6379), ("::1".into(), 7001)]);
        let infos = url.infos(url.redis());
        assert_eq!(infos[1].redis_settings().password(), Some("pw"));
        assert_eq!(infos[1].redis_settings().username(), None);
    }

    #[test]
    fn bad_redis_urls_are_explained_without_leaking_passwords() {
        for (bad, says) in [
            ("redis+sentinel://h1,h2", "names the master"),
            ("redis+sentinel://h1/a/b", "names the master"),
            ("redis+cluster://h1,,h2", "empty host"),
            ("redis+cluster://h1:99999", "bad host"),
            ("redis+cluster://h1/3", "only database 0"),
            ("redis+cluster://h1?replicas=two", "expected a number"),
            ("redis+sentinel://h/m?colour=red", "unknown query parameter"),
            ("redis://h/?replicas=-1", "expected a number"),
        ] {
            let shown = reason(bad);
            assert!(shown.contains(says), "{bad}: {shown}");
        }
        let shown = reason("redis+cluster://u:hunter2@h:99999");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
