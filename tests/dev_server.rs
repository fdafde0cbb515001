//! `tollgate dev` (`tollgate_cli::dev::DevServer`) as other programs on the
//! developer's machine reach it: a web page that rebinds its name to
//! 127.0.0.1 gets no demo key, a client that dribbles its request is cut
//! off, the banner shows no password, and the demo key's file is private.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tollgate_cli::dev::{DevOptions, DevServer, BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT};
use url::Url;
use uuid::Uuid;

use crate::helpers::{fresh_database, servers};

/// The password the tests put in `DATABASE_URL` and `REDIS_URL`. The test
/// servers take any: Postgres trusts local connections, and Redis's default
/// user has no password, so `AUTH default <anything>` succeeds.
const PASSWORD: &str = "hunter2-never-printed";

/// A dev server on a free port with its own root folder (so its own demo
/// key), database and Redis key prefix; the folder goes when it is dropped.
struct DevApp {
    port: u16,
    banner: String,
    root: PathBuf,
    http: reqwest::Client,
}

impl Drop for DevApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn with_password(url: &str, user: &str) -> String {
    let mut url = Url::parse(url).expect("a test server URL");
    if url.username().is_empty() {
        url.set_username(user).expect("a URL with a host");
    }
    url.set_password(Some(PASSWORD)).expect("a URL with a host");
    url.to_string()
}

fn temporary_root() -> PathBuf {
    let root = std::env::temp_dir().join(format!("tollgate-dev-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&root).expect("creating the dev root");
    root
}

/// Starts the dev server in `root`, with passwords in its Redis and
/// Postgres URLs, the local Upstash server embedded and no crons.
async fn spawn_dev_in(root: PathBuf) -> DevApp {
    let servers = servers().await;
    let database = fresh_database().await.expect("creating the test database");
    let env = [
        ("REDIS_URL", with_password(&servers.redis_url, "default")),
        ("DATABASE_URL", with_password(&database, "postgres")),
        (
            "TOLLGATE_KEY_PREFIX",
            format!("test:{}:", Uuid::new_v4().simple()),
        ),
    ];
    let options = DevOptions {
        port: 0,
        upstash_port: 0,
        root: root.clone(),
        crons: false,
    };
    let lookup = |name: &str| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    };
    let server = DevServer::start(&options, lookup)
        .await
        .expect("starting the dev server");
    let (port, banner) = (server.port(), server.banner().to_owned());
    tokio::spawn(server.run_until(std::future::pending()));
    DevApp {
        port,
        banner,
        root,
        http: reqwest::Client::new(),
    }
}

async fn spawn_dev() -> DevApp {
    spawn_dev_in(temporary_root()).await
}

fn demo_file(root: &Path) -> PathBuf {
    root.join(".tollgate/dev/demo-key.json")
}

impl DevApp {
    /// `GET /_dev/demo-key` over 127.0.0.1 with the given `Host` header, as
    /// a browser sends it for the name in its address bar.
    async fn demo_key(&self, host: &str) -> reqwest::Response {
        self.http
            .get(format!("http://127.0.0.1:{}/_dev/demo-key", self.port))
            .header("Host", host)
            .send()
            .await
            .expect("request to the dev server")
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connecting to the dev server")
    }

    /// The demo key as `demo-key.json` holds it.
    fn stored_demo_key(&self) -> Value {
        serde_json::from_slice(&std::fs::read(demo_file(&self.root)).expect("demo-key.json"))
            .expect("demo-key.json is JSON")
    }
}

/// Sends `head`, then one byte every quarter second, until the server
/// closes the connection or `limit` passes. Returns when it closed and what
/// it answered, or `None` if it was still open at the limit.
async fn dribble(stream: TcpStream, head: &[u8], limit: Duration) -> Option<(Duration, String)> {
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head).await.expect("sending the head");
    let mut answer = tokio::spawn(async move {
        let mut answer = Vec::new();
        // A reset after the answer still leaves the answer in the buffer.
        let _ = reader.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    });
    loop {
        tokio::select! {
            answer = &mut answer => return Some((started.elapsed(), answer.expect("the reader"))),
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                if started.elapsed() > limit {
                    return None;
                }
                // An error means the server closed; the reader sees it next.
                let _ = writer.write_all(b"a").await;
            }
        }
    }
}

#[tokio::test]
async fn the_demo_key_is_served_to_a_loopback_host_only() {
    let app = spawn_dev().await;
    let port = app.port;
    let stored = app.stored_demo_key();

    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
    ] {
        let response = app.demo_key(&host).await;
        assert_eq!(response.status(), 200, "Host {host}");
        let demo: Value = response.json().await.unwrap();
        assert_eq!(demo["secret"], stored["secret"], "Host {host}");
        assert_eq!(demo["publishable"], stored["publishable"], "Host {host}");
    }

    // A page on another site that points its own name at 127.0.0.1 reaches
    // the server, but its requests carry that name.
    for (host, why) in [
        (
            format!("rebind.example:{port}"),
            "a rebound name on our port",
        ),
        ("rebind.example".to_owned(), "a rebound name"),
        (
            format!("localhost.rebind.example:{port}"),
            "a name that starts like ours",
        ),
        (
            format!("127.0.0.1.nip.io:{port}"),
            "a public name that resolves to loopback",
        ),
        (format!("10.0.0.1:{port}"), "an address not on loopback"),
    ] {
        let response = app.demo_key(&host).await;
        assert_eq!(response.status(), 403, "{why}: Host {host}");
        let text = response.text().await.unwrap();
        let secret = stored["secret"].as_str().unwrap();
        assert!(!text.contains(secret), "{why}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], "not_loopback_host", "{text}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("DNS rebinding"), "{message}");
        assert!(message.contains("localhost"), "{message}");
    }

    // HTTP/1.0 needs no Host at all; without one there is nothing to trust.
    let mut stream = app.connect().await;
    stream
        .write_all(b"GET /_dev/demo-key HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 403"), "{answer}");
}

#[tokio::test]
async fn a_client_that_dribbles_its_headers_is_cut_off() {
    let app = spawn_dev().await;
    let head = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    let limit = HEADER_READ_TIMEOUT + Duration::from_secs(5);
    let (after, answer) = dribble(app.connect().await, head, limit)
        .await
        .unwrap_or_else(|| panic!("still reading headers after {limit:?}"));
    assert!(
        after >= HEADER_READ_TIMEOUT - Duration::from_secs(1),
        "cut off after {after:?}, before the timeout: {answer}"
    );
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test]
async fn a_client_that_dribbles_its_body_is_cut_off_with_a_408() {
    let app = spawn_dev().await;
    let head = b"POST /api/collect HTTP/1.1\r\nHost: localhost\r\n\
        Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n[";
    let limit = BODY_READ_TIMEOUT + Duration::from_secs(5);
    let (after, answer) = dribble(app.connect().await, head, limit)
        .await
        .unwrap_or_else(|| panic!("still reading the body after {limit:?}"));
    assert!(
        after >= BODY_READ_TIMEOUT - Duration::from_secs(1),
        "cut off after {after:?}, before the timeout: {answer}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

#[tokio::test]
async fn the_banner_shows_the_database_and_redis_urls_without_their_passwords() {
    let app = spawn_dev().await;
    let banner = &app.banner;
    assert!(!banner.contains(PASSWORD), "{banner}");
    assert!(banner.contains("postgres://postgres:***@"), "{banner}");
    assert!(banner.contains("redis://default:***@"), "{banner}");
    // The printed URL would not connect, so psql is pointed at the variable.
    assert!(banner.contains(r#"psql "$DATABASE_URL""#), "{banner}");
}

#[cfg(unix)]
#[tokio::test]
async fn the_demo_key_file_is_created_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_dev().await;
    let mode = std::fs::metadata(demo_file(&app.root))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {:o}", mode & 0o777);
    let served: Value = app.demo_key("localhost").await.json().await.unwrap();
    assert_eq!(served["secret"], app.stored_demo_key()["secret"]);
}

#[cfg(unix)]
#[tokio::test]
async fn a_demo_key_file_others_could_read_is_made_private_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    let root = temporary_root();
    let file = demo_file(&root);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let key = tollgate::apikeys::NewKey::generate();
    let old = serde_json::json!({
        "id": key.id,
        "secret": key.secret.expose(),
        "publishable": key.publishable,
    });
    std::fs::write(&file, old.to_string()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let app = spawn_dev_in(root).await;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {:o}", mode & 0o777);
    let served: Value = app.demo_key("localhost").await.json().await.unwrap();
    assert_eq!(served["secret"], old["secret"], "the same key as before");
}

#[tokio::test]
async fn the_client_ip_is_the_peers_whatever_the_client_claims() {
    let dev = spawn_dev().await;
    // Unknown keys, each from a different claimed address: the dev server,
    // like Vercel's edge, overwrites the claim with the peer's address, so
    // all of them count against 127.0.0.1's failed authentications.
    let mut statuses = Vec::new();
    for i in 0..31 {
        let key = format!("sk_{}{:016x}", Uuid::new_v4().simple(), i);
        let status = dev
            .http
            .post(format!("http://127.0.0.1:{}/api/collect", dev.port))
            .bearer_auth(key)
            .header("x-real-ip", format!("203.0.113.{i}"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .body(r#"{"type":"server","name":"x"}"#)
            .send()
            .await
            .expect("request to the dev server")
            .status()
            .as_u16();
        statuses.push(status);
    }
    assert_eq!(statuses[..30], [401; 30]);
    assert_eq!(
        statuses[30], 429,
        "the 31st failure from one peer is cut off"
    );
}
