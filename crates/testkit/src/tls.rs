//! Throwaway certificate authorities for TLS tests, made with the `openssl`
//! command: a CA, and server certificates it signs for given host names.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A certificate authority whose files live in a temporary folder.
pub struct TestCa {
    dir: tempfile::TempDir,
    name: String,
    /// The CA's certificate (PEM): what a client's `sslrootcert` names.
    pub cert: PathBuf,
    key: PathBuf,
}

/// A server certificate and its key (PEM).
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("cannot run openssl (Debian: apt-get install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl TestCa {
    /// A new CA named `name` (its certificate's common name).
    pub fn new(name: &str) -> Result<TestCa> {
        let dir = tempfile::Builder::new().prefix("cutover-ca-").tempdir()?;
        let (cert, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            dir.path(),
        )?;
        Ok(TestCa {
            dir,
            name: name.into(),
            cert,
            key,
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed
    /// by this CA, in a file pair named after `stem`.
    pub fn server_cert(&self, stem: &str, names: &[&str]) -> Result<ServerCert> {
        let d = self.dir.path();
        let san = names
            .iter()
            .map(|n| {
                if n.parse::<std::net::IpAddr>().is_ok() {
                    format!("IP:{n}")
                } else {
                    format!("DNS:{n}")
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        let ext = d.join(format!("{stem}.ext"));
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )?;
        let (key, csr, cert) = (
            format!("{stem}.key"),
            format!("{stem}.csr"),
            format!("{stem}.crt"),
        );
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={}", names[0]),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
            d,
        )?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{stem}.ext"),
                "-out",
                &cert,
            ],
            d,
        )?;
        let _ = &self.key;
        Ok(ServerCert {
            cert: d.join(cert),
            key: d.join(key),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}
