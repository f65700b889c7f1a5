//! Auth on both doors against a real redis-server: bearer tokens with read/write prefix
//! scopes over HTTP (401, 403), RESP users with the same scopes (WRONGPASS, NOPERM), and
//! nothing written when a request is refused. Also protected mode (doors without auth serve
//! loopback clients only), the admin token, hot keys shown only within a user's scopes, and
//! the bounds on failed AUTHs.

mod support;

use std::net::{IpAddr, SocketAddr};
use support::{error_code, metric, raw, Backend, Gateway};
use tiergate::config::{Config, TokenConfig, UserConfig};

const READER: &str = "r0000000000000000000000000000000";
const WRITER: &str = "w0000000000000000000000000000000";

fn with_auth(mut c: Config) -> Config {
    c.auth.tokens = vec![
        TokenConfig {
            name: "reader".into(),
            token: READER.into(),
            read: vec!["pub:".into(), "team:".into()],
            write: vec![],
        },
        TokenConfig {
            name: "team".into(),
            token: WRITER.into(),
            read: vec!["team:".into()],
            write: vec!["team:".into()],
        },
    ];
    c.auth.users = vec![UserConfig {
        name: "app".into(),
        password: "app-pw".into(),
        read: vec!["*".into()],
        write: vec!["app:".into()],
    }];
    c
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_gate_the_http_door_by_prefix() {
    let l2 = Backend::start();
    let gw = Gateway::start_ready(with_auth(l2.config())).await;
    l2.set("pub:a", "1");
    l2.set("secret:a", "2");
    let get = |key: &str, token: Option<&str>| {
        let mut r = gw.http.get(gw.kv(key));
        if let Some(t) = token {
            r = r.header("authorization", bearer(t));
        }
        r.send()
    };

    let no_token = get("pub:a", None).await.unwrap();
    assert_eq!(no_token.status(), 401);
    assert_eq!(
        no_token.headers()["www-authenticate"],
        "Bearer realm=\"tiergate\""
    );
    assert_eq!(error_code(no_token).await, "unauthorized");
    assert_eq!(
        get("pub:a", Some("not-a-token")).await.unwrap().status(),
        401
    );

    let ok = get("pub:a", Some(READER)).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1");
    let denied = get("secret:a", Some(READER)).await.unwrap();
    assert_eq!(denied.status(), 403);
    let body = denied.text().await.unwrap();
    assert!(
        body.contains("\"forbidden\"") && body.contains("reader"),
        "{body}"
    );
    assert!(
        !body.contains(READER),
        "the token never appears in a response"
    );

    // The reader may not write what it may read; nothing reaches Redis.
    let status = |req: reqwest::RequestBuilder, token: &str| {
        let req = req.header("authorization", bearer(token));
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(
        status(gw.http.put(gw.kv("team:x")).body("v"), READER).await,
        403
    );
    assert_eq!(
        status(gw.http.put(gw.kv("team:x")).body("v"), WRITER).await,
        204
    );
    assert_eq!(status(gw.http.delete(gw.kv("pub:a")), WRITER).await, 403);

    // Batches are all or nothing.
    let post = |call: &str, body: &'static str| {
        gw.http.post(format!("{}/v1/kv:{call}", gw.base)).body(body)
    };
    let batch_get = post("batchGet", r#"{"keys":["pub:a","secret:a"]}"#);
    assert_eq!(status(batch_get, READER).await, 403);
    let batch_set = post(
        "batchSet",
        r#"{"items":[{"key":"team:y","value":"1"},{"key":"pub:y","value":"1"}]}"#,
    );
    assert_eq!(status(batch_set, WRITER).await, 403);
    let mut direct = l2.conn();
    let written: Vec<Option<String>> = redis::cmd("MGET")
        .arg("team:y")
        .arg("pub:y")
        .query(&mut direct)
        .unwrap();
    assert_eq!(written, [None, None], "a refused batch writes nothing");
    let stored: Option<String> = redis::cmd("GET").arg("team:x").query(&mut direct).unwrap();
    assert_eq!(stored.as_deref(), Some("v"));

    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "tiergate_auth_denied_total{door=\"http\",reason=\"missing\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "tiergate_auth_denied_total{door=\"http\",reason=\"invalid\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "tiergate_auth_denied_total{door=\"http\",reason=\"forbidden\"}"
        ),
        5.0
    );
    assert!(
        metric(
            &m,
            "tiergate_http_requests_total{route=\"kv_get\",status=\"401\"}"
        ) == 2.0,
        "refusals are counted under their route"
    );
    assert!(
        !m.contains(READER) && !m.contains(WRITER),
        "no token in metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_users_log_in_and_are_held_to_their_prefixes() {
    let l2 = Backend::start();
    let gw = Gateway::start_ready(with_auth(l2.config())).await;
    l2.set("other:k", "o");
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let out = raw(
        addr,
        b"GET other:k\r\nAUTH anything\r\nAUTH app wrong\r\nAUTH app app-pw\r\nGET other:k\r\n\
          SET app:k v\r\nSET other:k v\r\nMSET app:m 1 other:m 1\r\nINCR other:n\r\n\
          SET app:k w GET\r\nDEL other:k\r\nQUIT\r\n",
    )
    .await;
    let firsts: Vec<&str> = out
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        firsts,
        [
            "-NOAUTH", // the default user is off: users are configured and no requirepass
            "-WRONGPASS",
            "-WRONGPASS",
            "+OK",
            "$1",
            "o",
            "+OK",
            "-NOPERM",
            "-NOPERM",
            "-NOPERM", // INCR reads the value too, and app may write only app:
            "$1",      // SET ... GET needs read and write: app has both on app:
            "v",
            "-NOPERM",
            "+OK"
        ],
        "{out}"
    );
    let mut direct = l2.conn();
    let left: Vec<Option<String>> = redis::cmd("MGET")
        .arg("app:m")
        .arg("other:m")
        .arg("other:k")
        .query(&mut direct)
        .unwrap();
    assert_eq!(
        left,
        [None, None, Some("o".into())],
        "refused commands changed nothing"
    );

    // HELLO 3 AUTH logs in too, as client libraries do.
    let out = raw(addr, b"HELLO 3 AUTH app app-pw\r\nGET app:k\r\nQUIT\r\n").await;
    assert!(out.contains("$1\r\nw\r\n"), "{out}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "tiergate_auth_denied_total{door=\"resp\",reason=\"forbidden\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &m,
            "tiergate_auth_denied_total{door=\"resp\",reason=\"invalid\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_commands_are_held_to_the_users_prefixes() {
    let l2 = Backend::start();
    let gw = Gateway::start_ready(with_auth(l2.config())).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    // app reads every key and writes app: keys only.
    let out = raw(
        addr,
        b"HSET app:h f v\r\nAUTH app app-pw\r\nHSET app:h f v\r\nHSET other:h f v\r\n\
          HGET other:h f\r\nRENAME app:h other:h\r\nSORT app:l STORE other:x\r\n\
          KEYS *\r\nSCAN 0\r\nRANDOMKEY\r\nFLUSHALL\r\nEVAL \"return 1\" 0\r\n\
          SCRIPT FLUSH\r\nLPUSH app:l a\r\nPUBLISH ch m\r\nQUIT\r\n",
    )
    .await;
    let firsts: Vec<&str> = out
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        firsts,
        [
            "-NOAUTH", // forwarded commands too wait for a login
            "+OK", ":1", "-NOPERM", // HSET outside app:
            "$-1",     // app may read other: keys
            "-NOPERM", // RENAME writes other:h
            "-NOPERM", // SORT ... STORE: Redis cannot list its keys for sure
            "-NOPERM", // keyless, of the keyspace: KEYS, SCAN, RANDOMKEY, FLUSHALL
            "-NOPERM", "-NOPERM", "-NOPERM",
            "-NOPERM", // scripts reach keys they do not declare: EVAL, SCRIPT
            "-NOPERM", ":1", ":0", // keyless, not of the keyspace
            "+OK"
        ],
        "{out}"
    );
    let mut direct = l2.conn();
    let left: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut direct).unwrap();
    let mut left = left;
    left.sort();
    assert_eq!(left, ["app:h", "app:l"], "refused commands changed nothing");
}

#[test]
fn secrets_never_reach_debug_output() {
    let mut c = with_auth(Config::default());
    c.resp.requirepass = "requirepass-secret".into();
    let printed = format!("{c:?}");
    for secret in [READER, WRITER, "app-pw", "requirepass-secret"] {
        assert!(!printed.contains(secret), "{secret} leaked: {printed}");
    }
    assert!(printed.contains("reader") && printed.contains("\"***\""));
}

/// An address of this machine that is not loopback, if it has one: the source address its
/// routing picks for the outside world (a UDP connect sends nothing). A connection to it from
/// here reaches the gateway from a non-loopback peer.
fn outside_ip() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("203.0.113.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Listening on every interface (dual-stack), as the defaults do.
fn on_every_interface(mut c: Config) -> Config {
    c.http.listen = "[::]:0".parse().unwrap();
    c.resp.listen = "[::]:0".parse().unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_mode_serves_loopback_only_on_doors_without_auth() {
    let c = on_every_interface(support::config(None));
    let gw = Gateway::start_ready(c.clone()).await;
    let running = gw.running.as_ref().unwrap();
    let (http_port, resp_port) = (running.http_addr.port(), running.resp_addr.port());
    let at = |ip: IpAddr, port| SocketAddr::new(ip, port);
    let get = |addr: SocketAddr, token: Option<&str>| {
        let mut r = gw.http.get(format!("http://{addr}/v1/kv/pub:absent"));
        if let Some(t) = token {
            r = r.header("authorization", bearer(t));
        }
        async move { r.send().await.unwrap() }
    };
    // Loopback over IPv4 (seen as ::ffff:127.0.0.1 by the dual-stack listener) and IPv6.
    for ip in ["127.0.0.1", "::1"] {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(
            raw(at(ip, resp_port), b"PING\r\nQUIT\r\n").await,
            "+PONG\r\n+OK\r\n"
        );
        assert_eq!(get(at(ip, http_port), None).await.status(), 404, "{ip}");
    }
    let Some(outside) = outside_ip() else {
        eprintln!("skipped the non-loopback half: this machine has no non-loopback address");
        return;
    };
    let out = raw(at(outside, resp_port), b"PING\r\n").await;
    assert!(
        out.starts_with("-DENIED tiergate is running in protected mode")
            && out.contains("resp.requirepass")
            && out.contains("auth.protected_mode = false")
            && out.ends_with("\r\n")
            && out.matches("\r\n").count() == 1,
        "one -DENIED line, then closed: {out:?}"
    );
    let refused = get(at(outside, http_port), None).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.headers()["connection"], "close");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "protected_mode");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("auth.tokens") && message.contains("auth.protected_mode = false"));
    let m = gw.metrics().await;
    for door in ["http", "resp"] {
        let series = format!("tiergate_protected_mode_refused_total{{door=\"{door}\"}}");
        assert_eq!(metric(&m, &series), 1.0, "{door}");
    }

    // Auth on a door opens it to the network (and its clients must then authenticate): the
    // keys are reloadable, like the rest of [auth].
    let mut with_auth = c.clone();
    with_auth.resp.requirepass = "pw".into();
    with_auth.auth.tokens = with_auth_tokens();
    running.reload(with_auth);
    let out = raw(
        at(outside, resp_port),
        b"GET k\r\nAUTH pw\r\nPING\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        out,
        "-NOAUTH Authentication required.\r\n+OK\r\n+PONG\r\n+OK\r\n"
    );
    assert_eq!(get(at(outside, http_port), None).await.status(), 401);
    assert_eq!(
        get(at(outside, http_port), Some(READER)).await.status(),
        404
    );

    // Protected mode off, no auth: served from anywhere, as before it existed.
    let mut open = c.clone();
    open.auth.protected_mode = false;
    running.reload(open);
    assert_eq!(
        raw(at(outside, resp_port), b"PING\r\nQUIT\r\n").await,
        "+PONG\r\n+OK\r\n"
    );
    assert_eq!(get(at(outside, http_port), None).await.status(), 404);
}

fn with_auth_tokens() -> Vec<TokenConfig> {
    with_auth(Config::default()).auth.tokens
}

#[test]
fn check_config_and_the_start_up_log_say_which_doors_protected_mode_limits() {
    let run = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(support::bin());
        cmd.arg("check-config");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TIERGATE_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd.envs(env.iter().copied()).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let defaults = run(&[]);
    assert!(
        defaults.contains("protected mode is on for http (0.0.0.0:8080)")
            && defaults.contains("protected mode is on for resp (0.0.0.0:6380)"),
        "{defaults}"
    );
    let resp_auth = run(&[("TIERGATE_RESP_REQUIREPASS", "pw")]);
    assert!(
        resp_auth.contains("for http") && !resp_auth.contains("for resp"),
        "{resp_auth}"
    );
    let off = run(&[("TIERGATE_AUTH_PROTECTED_MODE", "false")]);
    assert!(!off.contains("protected mode"), "{off}");

    // HTTP on every interface, RESP on loopback (where protected mode changes nothing).
    let [h, r, a] = support::free_ports::<3>();
    let at = |ip: &str, port: u16| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let bin = support::Binary::start_on(
        [at("0.0.0.0", h), at("127.0.0.1", r), at("127.0.0.1", a)],
        &[],
    );
    let deadline = std::time::Instant::now() + support::SETTLE;
    while !bin.log().contains("listening") {
        assert!(std::time::Instant::now() < deadline, "{}", bin.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = bin.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("protected mode"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("door=\"http\"") && warned[0].contains("auth.tokens"),
        "{log}"
    );
}

/// A standalone gateway whose RESP door asks for `pw`.
fn with_requirepass() -> Config {
    let mut c = support::config(None);
    c.resp.requirepass = "pw".into();
    c
}

const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_keeps_failing_auth_is_closed() {
    let mut c = with_requirepass();
    c.auth.max_failures_per_connection = 3;
    c.auth.failure_delay = tiergate::config::HumanDuration(std::time::Duration::from_millis(1));
    let gw = Gateway::start_ready(c).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    // A pipeline of guesses, AUTH and HELLO ... AUTH alike: the third failure closes the
    // connection, and nothing after it runs, the right password included.
    let out = raw(
        addr,
        b"AUTH guess1\r\nHELLO 3 AUTH default guess2\r\nAUTH default guess3\r\nAUTH pw\r\nPING\r\n",
    )
    .await;
    let last = "-WRONGPASS invalid username-password pair or user is disabled. Too many failed \
                attempts on this connection (auth.max_failures_per_connection): closing it.\r\n";
    assert_eq!(out, format!("{WRONGPASS}{WRONGPASS}{last}"));
    // The count is per connection: a new one logs in.
    let out = raw(addr, b"AUTH wrong\r\nAUTH pw\r\nPING\r\nQUIT\r\n").await;
    assert_eq!(out, format!("{WRONGPASS}+OK\r\n+PONG\r\n+OK\r\n"));
    let m = gw.metrics().await;
    let denied = "tiergate_auth_denied_total{door=\"resp\",reason=\"invalid\"}";
    assert_eq!(metric(&m, denied), 4.0);
    let closes = "tiergate_auth_failure_closes_total{door=\"resp\"}";
    assert_eq!(metric(&m, closes), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_auth_failure_holds_no_admission_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = with_requirepass();
    // One batch at a time and no queue: a slot held by the waiting connection would make the
    // other one's SET -BUSY.
    c.admission.max_inflight = 1;
    c.admission.max_queue = 0;
    c.auth.failure_delay = tiergate::config::HumanDuration(std::time::Duration::from_secs(3));
    let gw = Gateway::start_ready(c).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let mut guesser = tokio::net::TcpStream::connect(addr).await.unwrap();
    guesser
        .write_all(b"AUTH a\r\nAUTH b\r\nQUIT\r\n")
        .await
        .unwrap();
    // The second failure is counted before its reply waits.
    let denied = "tiergate_auth_denied_total{door=\"resp\",reason=\"invalid\"}";
    support::eventually("both guesses failed", || async {
        metric(&gw.metrics().await, denied) == 2.0
    })
    .await;
    let out = raw(addr, b"AUTH pw\r\nSET k v\r\nGET k\r\nQUIT\r\n").await;
    assert_eq!(out, "+OK\r\n+OK\r\n$1\r\nv\r\n+OK\r\n");
    // The guesser gets both answers, then what followed them, in order.
    let mut got = Vec::new();
    tokio::time::timeout(support::SETTLE, guesser.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8(got).unwrap(),
        format!("{WRONGPASS}{WRONGPASS}+OK\r\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_logged_without_what_was_typed() {
    let bin = support::Binary::start(&[
        ("TIERGATE_RESP_REQUIREPASS", "the-real-password"),
        ("TIERGATE_AUTH_FAILURE_DELAY", "0s"),
    ]);
    let out = raw(
        bin.resp,
        b"AUTH guessed-password\r\nAUTH someone guessed-too\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(out, format!("{WRONGPASS}{WRONGPASS}+OK\r\n"));
    support::eventually("a failed-AUTH line", || async {
        bin.log().contains("failed AUTH")
    })
    .await;
    let log = bin.log();
    for secret in ["guessed", "someone", "the-real-password"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_hotkeys_names_only_keys_the_user_may_read() {
    let mut c = support::config(None);
    c.admin.hot_keys_sample = 1;
    c.auth.users = vec![
        UserConfig {
            name: "app".into(),
            password: "app-pw".into(),
            read: vec!["app:".into()],
            write: vec!["app:".into()],
        },
        UserConfig {
            name: "ops".into(),
            password: "ops-pw".into(),
            read: vec!["*".into()],
            write: vec!["*".into()],
        },
    ];
    let gw = Gateway::start_ready(c).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let reads = b"AUTH ops ops-pw\r\nSET app:1 a\r\nSET secret:hidden-name-42 s\r\n\
                  GET secret:hidden-name-42\r\nGET secret:hidden-name-42\r\nGET app:1\r\nQUIT\r\n";
    raw(addr, reads).await;
    let hot = |user: &'static str| async move {
        let login = format!("AUTH {user} {user}-pw\r\nINFO hotkeys\r\nQUIT\r\n");
        raw(addr, login.as_bytes()).await
    };
    let ops = hot("ops").await;
    assert!(
        ops.contains("hotkey_0:key=secret:hidden-name-42,reads=2")
            && ops.contains("hotkey_1:key=app:1,reads=1"),
        "a user with every key sees every hot key: {ops}"
    );
    let app = hot("app").await;
    assert!(app.contains("hotkey_0:key=app:1,reads=1"), "{app}");
    assert!(
        !app.contains("secret:") && !app.contains("hotkey_1"),
        "{app}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_everything_but_the_probes() {
    const ADMIN: &str = "a0000000000000000000000000000000";
    let mut c = support::config(None);
    c.admin.hot_keys_sample = 1;
    c.admin.token = ADMIN.into();
    let gw = Gateway::start(c).await;
    assert_eq!(gw.put("secret:hidden-name-42", "v").await.status(), 204);
    assert_eq!(gw.get("secret:hidden-name-42").await.status(), 200);
    let admin = |path: &str, token: Option<&str>| {
        let mut r = gw.http.get(format!("{}{path}", gw.admin));
        if let Some(t) = token {
            r = r.header("authorization", bearer(t));
        }
        async move { r.send().await.unwrap() }
    };
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(admin(probe, None).await.status(), 200, "{probe}");
    }
    // The live page itself holds no figure, so a browser gets it without the token (it
    // cannot send one on navigation) and the page asks for it; what it fetches is guarded.
    let page = gw
        .http
        .get(format!("{}/", gw.admin))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("id=\"login\"") && page.contains("status.json"));
    assert!(!page.contains("hidden-name"));
    for path in ["/hotkeys", "/", "/status.json", "/status.txt", "/metrics"] {
        let refused = admin(path, None).await;
        assert_eq!(refused.status(), 401, "{path}");
        assert_eq!(
            refused.headers()["www-authenticate"],
            "Bearer realm=\"tiergate-admin\""
        );
        let body = refused.text().await.unwrap();
        assert!(!body.contains("hidden-name"), "{path}: {body}");
        assert_eq!(admin(path, Some(READER)).await.status(), 401, "{path}");
    }
    let hot = admin("/hotkeys", Some(ADMIN)).await.text().await.unwrap();
    assert!(hot.contains("secret:hidden-name-42"), "{hot}");
    let page = admin("/", Some(ADMIN)).await.text().await.unwrap();
    assert!(page.contains("secret:hidden-name-42"), "{page}");
    let status = admin("/status.json", Some(ADMIN))
        .await
        .text()
        .await
        .unwrap();
    assert!(status.contains("secret:hidden-name-42"), "{status}");
    let metrics = admin("/metrics", Some(ADMIN)).await.text().await.unwrap();
    let denied = "tiergate_auth_denied_total{door=\"admin\",reason=\"missing\"}";
    assert_eq!(metric(&metrics, denied), 5.0);
    assert!(!metrics.contains(ADMIN), "the token is never exported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_key_names_stay_on_loopback() {
    let mut c = support::config(None);
    c.admin.hot_keys_sample = 1;
    c.admin.listen = "[::]:0".parse().unwrap();
    let gw = Gateway::start(c).await;
    assert_eq!(gw.put("secret:hidden-name-42", "v").await.status(), 204);
    assert_eq!(gw.get("secret:hidden-name-42").await.status(), 200);
    let port = gw.running.as_ref().unwrap().admin_addr.port();
    let admin = |ip: IpAddr, path: &str| {
        let r = gw
            .http
            .get(format!("http://{}{path}", SocketAddr::new(ip, port)));
        async move { r.send().await.unwrap() }
    };
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let hot = admin(loopback, "/hotkeys").await.text().await.unwrap();
    assert!(hot.contains("secret:hidden-name-42"), "{hot}");
    let Some(outside) = outside_ip() else {
        eprintln!("skipped the non-loopback half: this machine has no non-loopback address");
        return;
    };
    let hidden = admin(outside, "/hotkeys").await;
    assert_eq!(hidden.status(), 403);
    let body = hidden.text().await.unwrap();
    assert!(
        body.contains("admin.token") && !body.contains("hidden-name"),
        "{body}"
    );
    let page = admin(outside, "/").await.text().await.unwrap();
    assert!(
        page.contains("admin.token") && !page.contains("hidden-name"),
        "{page}"
    );
    let status: serde_json::Value = admin(outside, "/status.json").await.json().await.unwrap();
    assert_eq!(status["hot_keys"]["shown"], false, "{status}");
    assert!(
        status["hot_keys"]["why"]
            .as_str()
            .unwrap()
            .contains("admin.token")
            && !status.to_string().contains("hidden-name"),
        "{status}"
    );
    let loopback_status: serde_json::Value =
        admin(loopback, "/status.json").await.json().await.unwrap();
    assert!(
        loopback_status["hot_keys"]["keys"]
            .to_string()
            .contains("secret:hidden-name-42"),
        "{loopback_status}"
    );
    // What names no key is still served: metrics, probes.
    assert_eq!(admin(outside, "/metrics").await.status(), 200);
    assert_eq!(admin(outside, "/readyz").await.status(), 200);
}
