//! A private CA and a certificate for `127.0.0.1` from it, made with the
//! `openssl` command, for servers that speak TLS in tests. Clients trust
//! the CA (`ca.crt`) only when told to: a `rediss://` URL trusts the
//! system's roots, which `SSL_CERT_FILE=ca.crt` replaces (rustls reads it
//! through rustls-native-certs).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::server::require_binary;

/// `ca.crt` (and `ca.key`) and, signed by it, `server.crt` and
/// `server.key` for the IP address 127.0.0.1, in one directory.
#[derive(Debug)]
pub struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    /// Makes them in `dir` (created if missing), valid for a day. Panics,
    /// naming the package, if `openssl` is missing, or with its error.
    pub fn make(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = require_binary("openssl", "openssl");

        let run = |args: &[&str]| {
            let out = std::process::Command::new(&openssl)
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &[
                "req",
                "-x509",
                "-days",
                "1",
                "-subj",
                "/CN=distlock test CA",
            ][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat());
        run(&[
            &["req", "-subj", "/CN=127.0.0.1"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat());
        // For clients too: a cluster node presents it to its peers on the
        // TLS cluster bus, which always asks for one (with `serverAuth`
        // alone, `redis-cli --cluster create` waited for the join for ever).
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "server.crt",
            "-extfile",
            "ext.cnf",
        ]);
        Certificates {
            dir: dir.to_path_buf(),
        }
    }

    /// One set for every server of this test process, made on first use
    /// in the process's temporary directory.
    pub fn shared() -> &'static Certificates {
        static SHARED: OnceLock<Certificates> = OnceLock::new();
        SHARED.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("distlock-certs-{}", std::process::id()));
            Certificates::make(&dir)
        })
    }

    /// The directory: what [`RedisServer::start_tls`](crate::redis::RedisServer::start_tls) takes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA's certificate (PEM), for clients to trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
}
