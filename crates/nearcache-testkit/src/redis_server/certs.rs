//! Throw-away TLS material for a [`RedisServer`](super::RedisServer) started with
//! [`tls`](super::RedisServerBuilder::tls): a CA and a server certificate for 127.0.0.1 and
//! localhost, made with the `openssl` command-line tool into the server's directory.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The files redis-server needs, and the CA a client must trust.
#[derive(Debug, Clone)]
pub(super) struct Certs {
    pub(super) ca_cert: PathBuf,
    pub(super) server_cert: PathBuf,
    pub(super) server_key: PathBuf,
}

/// Makes a fresh CA and a server certificate signed by it in `dir`.
pub(super) fn generate(dir: &Path) -> io::Result<Certs> {
    let certs = Certs {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    };
    let ca_key = dir.join("ca.key");
    let csr = dir.join("server.csr");
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         extendedKeyUsage=serverAuth\n\
         basicConstraints=critical,CA:FALSE\n",
    )?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=nearcache test CA",
            ])
            .args(ec)
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&certs.ca_cert),
    )?;
    openssl(
        Command::new("openssl")
            .args(["req", "-subj", "/CN=localhost"])
            .args(ec)
            .arg("-keyout")
            .arg(&certs.server_key)
            .arg("-out")
            .arg(&csr),
    )?;
    openssl(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-set_serial", "1"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&certs.ca_cert)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&certs.server_cert),
    )?;
    Ok(certs)
}

fn openssl(command: &mut Command) -> io::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => io::Error::new(
                io::ErrorKind::NotFound,
                "openssl was not found on PATH; the TLS test server needs it: \
                 sudo apt-get install -y openssl",
            ),
            _ => err,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "openssl failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_ca_and_a_server_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let certs = generate(dir.path()).unwrap();
        let verify = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&certs.ca_cert)
            .arg(&certs.server_cert)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );
        assert!(certs.server_key.exists());
    }
}
