//! What every binary of the system offers its operator: logs as text or JSON lines, and a
//! Prometheus `/metrics` endpoint.
//!
//! # Logs
//! [`init_logging`] installs the global `tracing` subscriber on standard error, filtered by an
//! `EnvFilter` expression; `json` switches to one JSON object per line for log collectors.
//!
//! # Metrics
//! The protocol cores are sans-IO state machines that keep plain counters; they know nothing of
//! Prometheus. A runtime copies those counters into a snapshot it shares (an
//! `Arc<Mutex<Snapshot>>` updated from its event loop, say), and the endpoint renders that
//! snapshot when it is scraped:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::sync::{Arc, Mutex};
//!
//! let allocations = Arc::new(Mutex::new(0u64)); // updated by the event loop
//! let seen = allocations.clone();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
//! tokio::spawn(telemetry::serve_metrics(listener, move || {
//!     let mut metrics = telemetry::MetricSet::new("zta_relay");
//!     let value = *seen.lock().unwrap_or_else(|e| e.into_inner());
//!     metrics.counter("allocations_created", "Allocations created", value);
//!     metrics.render()
//! }));
//! # Ok(())
//! # }
//! ```
//!
//! [`MetricSet`] builds the text with the `prometheus-client` crate's OpenMetrics encoder (names,
//! `_total` suffixes, label escaping, the closing `# EOF`), in the order the values were added,
//! so the same snapshot always renders to the same text.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber, writing to standard error.
///
/// `filter` is an `EnvFilter` expression (`info`, `info,relay=debug`, ...). With `json`, every
/// event is one JSON object on its own line (timestamp, level, target, fields); otherwise the
/// human-readable text format. Fails on an invalid filter, or when a subscriber is already
/// installed.
pub fn init_logging(filter: &str, json: bool) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid --log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// The `Content-Type` of a `/metrics` answer: the OpenMetrics text format that
/// [`MetricSet::render`] produces (Prometheus asks for it and reads it natively).
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The path metrics are served on; every other path is answered 404.
pub const METRICS_PATH: &str = "/metrics";

/// Scrapes served at once; further connections wait to be accepted.
const MAX_CONNECTIONS: usize = 32;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `listener` with the text `render` returns at each scrape (HTTP/1.1,
/// `Content-Type` [`CONTENT_TYPE_OPENMETRICS`]); anything else is answered 404.
///
/// Runs until the future is dropped: spawn it (`tokio::spawn(serve_metrics(listener, render))`)
/// and abort the task, or let the runtime end, to stop. Each connection is served on a task of
/// its own (so it needs a tokio runtime, current-thread or not), at most 32 at once, and one
/// that takes more than 10 s to send its headers is closed. `render` runs on those tasks: it
/// should only read a snapshot, never wait.
pub async fn serve_metrics<F>(listener: TcpListener, render: F)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // never closed
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let response = respond(&request, render.as_ref());
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "metrics connection ended with an error");
            }
            drop(slot);
        });
    }
}

fn respond<B>(request: &Request<B>, render: &dyn Fn() -> String) -> Response<Full<Bytes>> {
    if request.method() == Method::GET && request.uri().path() == METRICS_PATH {
        let mut response = Response::new(Full::new(Bytes::from(render())));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
        );
        response
    } else {
        let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    }
}

/// Metrics whose values were read elsewhere (a snapshot of a state machine's counters), to be
/// rendered once in the OpenMetrics text format.
///
/// Every name gets the set's prefix and `_` (`MetricSet::new("zta_relay")` and `allocations`
/// give `zta_relay_allocations`), counters also the `_total` suffix: pass names without it.
/// Adding the same name again adds a sample with other labels to the same metric (its help and
/// type are those given first). Metrics and samples are rendered in the order they were added.
#[derive(Debug, Clone)]
pub struct MetricSet {
    prefix: String,
    labels: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    metrics: Vec<Metric>,
}

#[derive(Debug, Clone)]
struct Metric {
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug, Clone)]
struct Sample {
    labels: Vec<(String, String)>,
    value: Value,
}

#[derive(Debug, Clone, Copy)]
enum Value {
    Counter(u64),
    Gauge(i64),
}

impl MetricSet {
    /// An empty set whose metric names start with `prefix` (e.g. `zta_relay`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            labels: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// Adds the label `name="value"` to every metric of the set (e.g. `role="client"`).
    pub fn with_label(mut self, name: &str, value: &str) -> Self {
        self.labels
            .push((Cow::Owned(name.to_owned()), Cow::Owned(value.to_owned())));
        self
    }

    /// A counter (a total that only grows) without labels of its own.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.counter_with(name, help, &[], value)
    }

    /// One sample of a counter, with `labels` (e.g. `[("reason", "malformed")]`).
    pub fn counter_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: u64,
    ) -> &mut Self {
        self.add(name, help, Kind::Counter, labels, Value::Counter(value))
    }

    /// A gauge (a current level) without labels of its own.
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) -> &mut Self {
        self.gauge_with(name, help, &[], value)
    }

    /// One sample of a gauge, with `labels`.
    pub fn gauge_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: i64,
    ) -> &mut Self {
        self.add(name, help, Kind::Gauge, labels, Value::Gauge(value))
    }

    fn add(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        value: Value,
    ) -> &mut Self {
        let sample = Sample {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        };
        match self.metrics.iter_mut().find(|m| m.name == name) {
            Some(metric) => {
                debug_assert_eq!(metric.kind, kind, "{name} added as a counter and a gauge");
                if metric.kind == kind {
                    metric.samples.push(sample);
                }
            }
            None => self.metrics.push(Metric {
                name: name.to_owned(),
                help: help.to_owned(),
                kind,
                samples: vec![sample],
            }),
        }
        self
    }

    /// The OpenMetrics text of the set, ending with `# EOF`.
    pub fn render(self) -> String {
        let mut registry = Registry::with_prefix_and_labels(self.prefix, self.labels.into_iter());
        registry.register_collector(Box::new(Samples(self.metrics)));
        let mut text = String::new();
        // Writing into a String cannot fail, and the collector itself never does.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::warn!(%error, "cannot encode metrics");
        }
        text
    }
}

/// The set's metrics, handed to the registry to encode.
#[derive(Debug)]
struct Samples(Vec<Metric>);

impl Collector for Samples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for metric in &self.0 {
            let metric_type = match metric.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut family =
                encoder.encode_descriptor(&metric.name, &metric.help, None, metric_type)?;
            for sample in &metric.samples {
                let encoder = family.encode_family(&sample.labels)?;
                match sample.value {
                    Value::Counter(value) => ConstCounter::new(value).encode(encoder)?,
                    Value::Gauge(value) => ConstGauge::new(value).encode(encoder)?,
                }
            }
        }
        Ok(())
    }
}

/// Completes on SIGINT or SIGTERM (logging which, at INFO), so a binary can stop cleanly under
/// systemd or Ctrl-C. Where SIGTERM cannot be watched it waits for SIGINT alone.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn example() -> String {
        let mut metrics = MetricSet::new("zta_test").with_label("role", "client");
        metrics
            .counter("allocations_created", "Allocations created", 3)
            .counter_with(
                "dropped",
                "Datagrams dropped",
                &[("reason", "malformed")],
                1,
            )
            .counter_with("dropped", "ignored", &[("reason", "no \"permission\"")], 2)
            .gauge("allocations", "Allocations held", 2);
        metrics.render()
    }

    #[test]
    fn renders_openmetrics_text_in_the_order_given() {
        assert_eq!(
            example(),
            "# HELP zta_test_allocations_created Allocations created\n\
             # TYPE zta_test_allocations_created counter\n\
             zta_test_allocations_created_total{role=\"client\"} 3\n\
             # HELP zta_test_dropped Datagrams dropped\n\
             # TYPE zta_test_dropped counter\n\
             zta_test_dropped_total{role=\"client\",reason=\"malformed\"} 1\n\
             zta_test_dropped_total{role=\"client\",reason=\"no \\\"permission\\\"\"} 2\n\
             # HELP zta_test_allocations Allocations held\n\
             # TYPE zta_test_allocations gauge\n\
             zta_test_allocations{role=\"client\"} 2\n\
             # EOF\n"
        );
    }

    /// Sends `request` to `addr` and reads the whole answer (the request closes the connection).
    async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_metrics_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_metrics(listener, example));

        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            exchange(
                addr,
                "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            ),
        )
        .await
        .unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains(
                "\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{head}"
        );
        assert_eq!(body, example());

        for request in [
            "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
        ] {
            let answer = exchange(addr, request).await;
            assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        }
        server.abort();
    }

    #[test]
    fn a_bad_log_filter_is_an_error() {
        let error = init_logging("info,=[", false).unwrap_err();
        assert!(
            error.to_string().contains("invalid --log filter"),
            "{error}"
        );
    }
}
