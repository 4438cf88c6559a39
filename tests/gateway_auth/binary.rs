//! `infermq gateway` as its own process: HTTPS with a certificate made by `openssl` in the test
//! (curl trusting it), HTTP/1.1 keep-alive over TLS, the certificate and the keys read again on
//! SIGHUP (the files are not polled in between: `gateway.reload_poll_ms` is an hour), and the
//! refusals at start: no keys on an address other than loopback, a key that is not the
//! certificate's.

use std::process::Stdio;

use super::*;

/// A self-signed certificate for 127.0.0.1 named `cn`, and its key (PKCS#8 PEM), in `dir`.
fn certificate(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{cn}.pem"));
    let key = dir.join(format!("{cn}.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={cn}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `infermq gateway` with `env` (`INFERMQ__…`) and `args`; its stderr goes to `log`.
fn gateway(env: &[(&str, String)], args: &[&str], log: &Path) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_infermq"));
    command
        .arg("gateway")
        .args(args)
        .env("INFERMQ__BROKER__URL", amqp_url())
        .env("INFERMQ__BROKER__PREFIX", random_prefix())
        .env_remove("INFERMQ__GATEWAY__API_KEYS_FILE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("infermq gateway starts")
}

/// The subject of the certificate a TLS server at `port` presents, as curl prints it.
async fn subject(port: u16, ca: &Path) -> String {
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-v",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(ca)
        .arg(format!("https://127.0.0.1:{port}/v2/health/live"))
        .output()
        .await
        .expect("curl runs");
    let verbose = String::from_utf8_lossy(&out.stderr);
    verbose
        .lines()
        .find_map(|l| l.trim_start_matches(['*', ' ']).strip_prefix("subject: "))
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_keep_alive_and_sighup_reload_the_certificate_and_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "gw-one");
    let a = Key::new("team-a");
    let b = Key::new("team-b");
    let keys_file = dir.path().join("keys.toml");
    write_file(&keys_file, &entry(&a, r#"["*"]"#, ""));
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::copy(&cert, &cert_file).unwrap();
    std::fs::copy(&key, &key_file).unwrap();
    let port = free_port();
    let log = dir.path().join("gateway.log");
    let mut child = gateway(
        &[
            (
                "INFERMQ__GATEWAY__API_KEYS_FILE",
                keys_file.display().to_string(),
            ),
            (
                "INFERMQ__GATEWAY__TLS__CERT_FILE",
                cert_file.display().to_string(),
            ),
            (
                "INFERMQ__GATEWAY__TLS__KEY_FILE",
                key_file.display().to_string(),
            ),
            ("INFERMQ__GATEWAY__RELOAD_POLL_MS", "3600000".to_string()),
        ],
        &["--listen", &format!("127.0.0.1:{port}")],
        &log,
    );
    let base = format!("https://127.0.0.1:{port}");
    let ca = ["--cacert", cert.to_str().unwrap()];
    eventually(
        Duration::from_secs(30),
        "the gateway answers over HTTPS",
        || {
            let url = format!("{base}/v2/health/live");
            async move { answers_200(&url, &ca).await }
        },
    )
    .await;
    assert!(subject(port, &cert).await.contains("CN=gw-one"));
    // Plain HTTP at the TLS port gets no answer.
    let plain = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("http://127.0.0.1:{port}/v2/health/live"))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000");
    // Keys over TLS; two requests on one connection (HTTP/1.1 keep-alive).
    let server = format!("{base}/v2");
    assert_eq!(curl(&server, &[a.bearer()], None, &ca).await.status, 200);
    assert_eq!(curl(&server, &[b.bearer()], None, &ca).await.status, 401);
    let both = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
        ])
        .args(["--cacert", cert.to_str().unwrap(), "-H", &a.bearer()])
        .args([&server, &server])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&both.stdout), "200 1\n200 0\n");

    // New files: nothing changes until SIGHUP (the files are not polled).
    let (next_cert, next_key) = certificate(dir.path(), "gw-two");
    write_file(&cert_file, &std::fs::read_to_string(&next_cert).unwrap());
    write_file(&key_file, &std::fs::read_to_string(&next_key).unwrap());
    let two = [entry(&a, r#"["*"]"#, ""), entry(&b, r#"["*"]"#, "")].concat();
    write_file(&keys_file, &two);
    assert_eq!(curl(&server, &[b.bearer()], None, &ca).await.status, 401);
    assert!(subject(port, &cert).await.contains("CN=gw-one"));
    let pid = child.id().expect("running") as libc::pid_t;
    // SAFETY: kill(2) with a pid this test started and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let ca_two = ["--cacert", next_cert.to_str().unwrap()];
    eventually(Duration::from_secs(10), "team-b's key after SIGHUP", || {
        let url = server.clone();
        let key = b.bearer();
        // Until the new pair serves, the new CA fails the handshake: no answer.
        async move {
            let reply = try_curl(&url, &[key], None, &ca_two).await;
            reply.is_some_and(|r| r.status == 200)
        }
    })
    .await;
    assert!(subject(port, &next_cert).await.contains("CN=gw-two"));
    // A bad pair on SIGHUP is refused; the pair in use stays.
    std::fs::write(&key_file, std::fs::read(&key).unwrap()).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    eventually(Duration::from_secs(10), "the bad pair is logged", || {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        async move { log.contains("TLS certificate refused; the one in use stays") }
    })
    .await;
    assert!(subject(port, &next_cert).await.contains("CN=gw-two"));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains(&a.secret) && !logged.contains(&b.secret));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the gateway stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}\n{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refuses_to_start_open_to_anyone_or_with_a_key_that_is_not_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let mut child = gateway(&[], &["--listen", "0.0.0.0:0"], &log);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the gateway exits")
        .unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success());
    assert!(
        logged.contains("gateway.listen = 0.0.0.0:0 is not a loopback address and gateway.api_keys_file is not set"),
        "{logged}"
    );
    // Said so, it serves anyone.
    let port = free_port();
    let mut child = gateway(
        &[("INFERMQ__GATEWAY__ALLOW_ANONYMOUS", "true".to_string())],
        &["--listen", &format!("0.0.0.0:{port}")],
        &log,
    );
    let url = format!("http://127.0.0.1:{port}/v2");
    eventually(
        Duration::from_secs(30),
        "an anonymous gateway answers",
        || {
            let url = url.clone();
            async move { answers_200(&url, &[]).await }
        },
    )
    .await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("anyone who reaches it may run every model"),
        "{logged}"
    );
    child.kill().await.unwrap();
    // A key that is not the certificate's.
    let (cert, _) = certificate(dir.path(), "one");
    let (_, other_key) = certificate(dir.path(), "two");
    let mut child = gateway(
        &[
            (
                "INFERMQ__GATEWAY__TLS__CERT_FILE",
                cert.display().to_string(),
            ),
            (
                "INFERMQ__GATEWAY__TLS__KEY_FILE",
                other_key.display().to_string(),
            ),
        ],
        &["--listen", "127.0.0.1:0"],
        &log,
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the gateway exits")
        .unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success());
    assert!(
        logged.contains("does not go with the certificate"),
        "{logged}"
    );
}
