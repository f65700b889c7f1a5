//! The server: builds the engine from config, binds every listener, runs each service under
//! one shutdown watch, and drains them in order (data doors first, admin port last).

use crate::{
    access::AccessLog,
    auth::{Auth, Rules},
    cache::{L2Error, TieredCache},
    config::{Config, ConfigError},
    exec::Background,
    host, http,
    metrics::{admin, Metrics},
    net::{self, ListenOptions},
    origin::Origins,
    reload, resp,
    shutdown::{self, Shutdown},
};
use std::{net::SocketAddr, sync::Arc};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up L2: {0}")]
    L2(#[from] L2Error),
    #[error("cannot open the access log {path}: {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the background executor: {0}")]
    Background(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// A started server: its bound addresses and the handle to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub resp_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub cache: Arc<TieredCache>,
    pub origins: Arc<Origins>,
    /// Proxy routes and their caches: `purge` is what the invalidation bus calls.
    pub proxy: Arc<crate::http::proxy::Proxy>,
    pub metrics: Arc<Metrics>,
    /// The config in force: what a reload compares the new file against.
    config: std::sync::Mutex<Config>,
    auth: Arc<Auth>,
    http_state: Arc<http::State>,
    access: Option<Arc<AccessLog>>,
    background: Background,
    resp_shared: Arc<resp::Shared>,
    admin: Arc<admin::Admin>,
    draining: Shutdown,
    admin_stop: Shutdown,
    http_task: JoinHandle<()>,
    resp_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
}

/// Binds and starts every service. Returns once the listeners accept, so a caller (a test,
/// `run`) can connect right away.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let memory = host::memory_limit();
    let origins = Arc::new(Origins::new(&config.origins, &metrics));
    let loaders = crate::cache::loader::Loaders::new(&config.origins, &origins);
    let cache = Arc::new(TieredCache::new(&config, memory, metrics.clone())?.with_loaders(loaders));
    // Proxy routes (`[[origins.routes]]`), each with its own cache; purges travel to the
    // other instances on the invalidation bus, and the bus hands theirs back. Weak both ways:
    // the cache and the routes do not keep each other alive.
    let announce: crate::http::proxy::Announce = {
        let cache = Arc::downgrade(&cache);
        Arc::new(move |url: &str| {
            if let Some(cache) = cache.upgrade() {
                let url = url.to_owned();
                tokio::spawn(async move { cache.announce_purge(&url).await });
            }
        })
    };
    let proxy = Arc::new(crate::http::proxy::Proxy::new(
        &config.origins,
        &origins,
        &metrics,
        Some(announce),
        cache.l2(),
    ));
    {
        let proxy = Arc::downgrade(&proxy);
        cache.on_purge(move |url| {
            if let Some(proxy) = proxy.upgrade() {
                proxy.purge_here(url);
            }
        });
    }
    let draining = Shutdown::new();
    let admin_stop = Shutdown::new();
    let background =
        Background::start(&config.background, &metrics).map_err(StartError::Background)?;

    let opts = ListenOptions {
        backlog: config.http.backlog,
        reuse_port: config.http.reuse_port,
        keepalive: None,
    };
    let resp_opts = ListenOptions {
        keepalive: (!config.resp.keepalive.0.is_zero()).then_some(config.resp.keepalive.0),
        ..opts
    };
    let bind = |what, addr, opts| {
        net::bind(addr, opts).map_err(|source| StartError::Bind { what, addr, source })
    };
    let http_listener = bind("http.listen", config.http.listen, opts)?;
    let resp_listener = bind("resp.listen", config.resp.listen, resp_opts)?;
    let admin_listener = bind("admin.listen", config.admin.listen, opts)?;
    let local = |l: &tokio::net::TcpListener| l.local_addr().expect("bound socket has an address");
    let (http_addr, resp_addr, admin_addr) = (
        local(&http_listener),
        local(&resp_listener),
        local(&admin_listener),
    );

    let l1_budget = config.l1.capacity.resolve(memory);
    match cache.l2() {
        None => tracing::info!(
            l1_bytes = l1_budget,
            "standalone memory mode: no l2.url or l2.cluster_nodes configured, so L1 is the store (bounded, evicts when full)"
        ),
        Some(l2) => {
            let at = if config.l2.cluster_nodes.is_empty() {
                redact(&config.l2.url)
            } else {
                let nodes: Vec<String> = config.l2.cluster_nodes.iter().map(|n| redact(n)).collect();
                format!("cluster {}", nodes.join(","))
            };
            tracing::info!(l2 = %at, l1_bytes = l1_budget, "tiered mode: L1 in front of L2");
            // Off the request threads: see `exec::background`.
            let bg = &background;
            bg.spawn_service(l2.clone().watch_health(draining.clone()));
            bg.spawn_service(crate::cache::refresh::run(
                cache.clone(),
                bg.clone(),
                draining.clone(),
            ));
            bg.spawn_service(crate::cache::warm::run(
                cache.clone(),
                config.l1.clone(),
                draining.clone(),
            ));
            bg.spawn_service(crate::cache::bus::follow(
                cache.clone(),
                config.l2.health_interval.0,
                draining.clone(),
            ));
        }
    }

    for o in &config.origins {
        let upstreams: Vec<&str> = o.upstreams.iter().map(|u| u.url()).collect();
        tracing::info!(origin = %o.name, upstreams = %upstreams.join(","), probes = !o.health_path.is_empty(), "origin");
    }
    background.spawn_service(origins.clone().tend(draining.clone()));

    let auth = Arc::new(Auth::new(Rules::from_config(&config)));
    log_protected_mode(&config);
    let access = if config.access_log.enabled {
        let log = AccessLog::start(
            &config.access_log,
            metrics.access_log_written.clone(),
            metrics.access_log_dropped.clone(),
        )
        .map_err(|source| StartError::AccessLog {
            path: config.access_log.path.clone(),
            source,
        })?;
        Some(log)
    } else {
        None
    };
    let state = Arc::new(
        http::State::new(
            &config,
            auth.clone(),
            cache.clone(),
            metrics.clone(),
            access.clone(),
        )
        .with_proxy(proxy.clone()),
    );
    let http_task = tokio::spawn(http::serve(
        http_listener,
        state.clone(),
        config.http.clone(),
        config.shutdown.clone(),
        draining.clone(),
    ));
    let resp_shared = Arc::new(resp::Shared::new(
        &config,
        auth.clone(),
        access.clone(),
        resp_addr.port(),
        cache.clone(),
        metrics.clone(),
        memory,
    ));
    let resp_task = tokio::spawn(resp::serve(
        resp_listener,
        resp_shared.clone(),
        config.resp.max_connections,
        config.shutdown.grace.0,
        draining.clone(),
    ));
    let admin = Arc::new(admin::Admin {
        metrics: metrics.clone(),
        cache: cache.clone(),
        origins: origins.clone(),
        proxy: proxy.clone(),
        draining: draining.clone(),
        token: arc_swap::ArcSwap::from_pointee(config.admin.token.clone()),
        budgets: arc_swap::ArcSwap::from_pointee(admin::Budgets::from_config(&config)),
        started: std::time::Instant::now(),
    });
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin.clone(),
        admin_stop.clone(),
    ));
    tracing::info!(%http_addr, %resp_addr, %admin_addr, "listening");
    Ok(Running {
        http_addr,
        resp_addr,
        admin_addr,
        cache,
        origins,
        proxy,
        metrics,
        config: std::sync::Mutex::new(config),
        auth,
        http_state: state,
        access,
        background,
        resp_shared,
        admin,
        draining,
        admin_stop,
        http_task,
        resp_task,
        admin_task,
    })
}

impl Running {
    /// Reopens the access log file: logrotate moves it away and sends SIGHUP.
    pub fn reopen_logs(&self) {
        if let Some(log) = &self.access {
            log.reopen();
        }
    }

    /// Applies what can change under load from `new` (see `reload`); logs what cannot.
    /// Returns the keys that need a restart and were left as they were.
    pub fn reload(&self, new: Config) -> Vec<String> {
        let mut current = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let changed = reload::changed(&current, &new);
        let (applied, refused): (Vec<String>, Vec<String>) =
            changed.into_iter().partition(|p| reload::reloadable(p));
        let next = reload::merge(&current, &new);
        // Reloadable keys are checked against each other and against the ones kept.
        let problems = next.validate();
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            tracing::error!(
                problems = %list.join("; "),
                "config reload refused: the reloadable keys do not fit the running config; nothing changed"
            );
            self.metrics.config_reload(false);
            return refused;
        }
        if let Err(e) = crate::logging::set_level(&next.log.level) {
            tracing::warn!(error = %e, "log.level not applied");
        }
        self.auth.replace(Rules::from_config(&next));
        self.admin.token.store(Arc::new(next.admin.token.clone()));
        self.admin
            .budgets
            .store(Arc::new(admin::Budgets::from_config(&next)));
        self.http_state.limits.store(Arc::new(next.limits.clone()));
        self.resp_shared
            .limits
            .store(Arc::new(resp::Limits::from_config(&next)));
        self.http_state.admission.resize(&next.admission);
        self.resp_shared.admission.resize(&next.admission);
        self.cache.set_ttl_policy(&next);
        tracing::info!(
            applied = %applied.join(","),
            tokens = next.auth.tokens.len(),
            users = next.auth.users.len(),
            "config reloaded"
        );
        if !refused.is_empty() {
            tracing::warn!(
                keys = %refused.join(","),
                "config reload: these keys need a restart and were NOT applied; the running values stay"
            );
        }
        *current = next;
        self.metrics.config_reload(true);
        refused
    }

    /// Starts the drain: readiness turns 503, listeners close, in-flight requests finish.
    pub fn shutdown(&self) {
        self.draining.trigger();
    }

    /// Waits for the drain to finish (after `shutdown`), then stops the admin port.
    pub async fn wait(self) {
        let (http, resp) = tokio::join!(self.http_task, self.resp_task);
        for (door, res) in [("http", http), ("resp", resp)] {
            if let Err(e) = res {
                tracing::error!(door, error = %e, "service failed");
            }
        }
        if let Some(log) = self.access {
            // The writer thread flushes what is left; joining it blocks.
            let _ = tokio::task::spawn_blocking(move || log.stop()).await;
        }
        self.background.stop();
        self.admin_stop.trigger();
        let _ = self.admin_task.await;
        tracing::info!("stopped");
    }
}

/// Runs until SIGTERM or SIGINT, then drains and returns. On SIGHUP, `load` reads the
/// config again and what can change under load is applied (see `Running::reload`).
pub async fn run(
    config: Config,
    load: impl Fn() -> Result<Config, ConfigError>,
) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    // Install the handlers before binding, so a signal during start-up is not lost.
    let stop = tokio::spawn(shutdown::signal());
    let mut hangup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
    // Before any connection: a short open-file limit must be said at start, not found as
    // accept errors under load.
    crate::fdlimit::raise_and_check(&config);
    let running = start(config).await?;
    let draining = running.draining.clone();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            sig = &mut stop => match sig {
                Ok(Ok(name)) => {
                    tracing::info!(signal = name, "shutting down");
                    break;
                }
                Ok(Err(e)) => return Err(StartError::Signals(e)),
                Err(e) => return Err(StartError::Signals(std::io::Error::other(e))),
            },
            _ = hangup.recv() => {
                running.reopen_logs();
                match load() {
                    Ok(new) => {
                        running.reload(new);
                    }
                    Err(e) => {
                        running.metrics.config_reload(false);
                        tracing::error!(error = %e, "config reload refused; the running config is unchanged");
                    }
                }
            }
            _ = draining.wait() => break,
        }
    }
    running.shutdown();
    running.wait().await;
    Ok(())
}

/// Says which doors protected mode limits to loopback clients, and how to open them: a
/// gateway that answers its own host but not the network should say why at start.
fn log_protected_mode(config: &Config) {
    for (door, listen, keys) in config.protected_doors() {
        if listen.ip().to_canonical().is_loopback() {
            continue;
        }
        tracing::warn!(
            door,
            %listen,
            "protected mode: no auth is configured on this door, so only loopback clients are served; configure {keys}, or set auth.protected_mode = false"
        );
    }
}

/// The URL with any password hidden, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_do_not_reach_logs() {
        assert_eq!(
            super::redact("redis://:hunter2@10.0.0.1:6379"),
            "redis://***@10.0.0.1:6379"
        );
        assert_eq!(super::redact("redis://127.0.0.1"), "redis://127.0.0.1");
    }
}
