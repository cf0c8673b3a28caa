//! rocksteady's cluster bridge: one per board, between the board's
//! supervisor (through the shared client library) and a NATS JetStream work
//! queue that front doors publish requests to.
//!
//! - [`config`]: the `[bridge]` section
//! - [`capacity`]: how many requests to pull now, what the heartbeat says
//! - [`serve`]: one pulled request, from claim to ack
//!
//! Tasks: one polls the supervisor's status; one announces the heartbeat;
//! one per model class pulls requests only while the supervisor has a free
//! ready slot for it; one per request serves it. A request is acked when it
//! is done or handed back, so a board that vanishes before that leaves its
//! request to be redelivered to another.

pub mod capacity;
pub mod config;
pub mod serve;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use client::cluster::front::ensure_stream;
use client::cluster::wire::Subjects;
use client::link::SupervisorLink;
use client::AdminClient;
use futures::StreamExt;
use proto::admin::StatusReport;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::BridgeConfig;

/// How often the supervisor's status is read (slot readiness for pulling).
const STATUS_EVERY: Duration = Duration::from_millis(150);
/// How long one pull waits for work before the loop looks again.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// The last status read, and when.
#[derive(Default)]
struct Status {
    report: Option<StatusReport>,
    problem: String,
    taken: Option<Instant>,
}

/// What the bridge's tasks share.
pub(crate) struct Shared {
    pub(crate) config: BridgeConfig,
    pub(crate) client: async_nats::Client,
    pub(crate) subjects: Subjects,
    pub(crate) link: SupervisorLink,
    pub(crate) shutdown: CancellationToken,
    status: Mutex<Status>,
    /// Requests served now, as `<id>/<attempt>` (for the heartbeat).
    active: Mutex<BTreeSet<String>>,
    /// Per class: requests pulled whose answer has not started yet.
    not_started: Mutex<HashMap<String, usize>>,
    /// When an answer last started: a status older than that still shows
    /// its slot ready.
    last_start: Mutex<Option<Instant>>,
    changed: Notify,
    /// A request ended here: read the status now, not at the next tick, so
    /// the freed slot pulls the next request at once.
    poll_now: Notify,
    /// Slots that finished a request of this bridge, and when.
    freed: Mutex<HashMap<String, Instant>>,
}

impl Shared {
    pub(crate) fn set_active(&self, key: &str, on: bool) {
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        if on {
            active.insert(key.to_owned());
        } else {
            active.remove(key);
        }
    }

    pub(crate) fn pulled(&self, class: &str, delta: isize) {
        let mut map = self
            .not_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(class.to_owned()).or_default();
        *n = n.saturating_add_signed(delta);
        drop(map);
        self.changed.notify_waiters();
    }

    /// A request ended; `slot` served it to the end.
    pub(crate) fn ended(&self, slot: Option<&str>) {
        if let Some(slot) = slot {
            self.freed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(slot.to_owned(), Instant::now());
            self.changed.notify_waiters();
        }
        self.poll_now.notify_one();
    }

    pub(crate) fn started(&self) {
        *self
            .last_start
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// How many requests of `class` (local `model`) to pull now.
    fn free(&self, class: &str, model: &str) -> usize {
        let last_start = *self
            .last_start
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let not_started = self
            .not_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(class)
            .copied()
            .unwrap_or(0);
        let status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        let (Some(report), Some(taken)) = (&status.report, status.taken) else {
            return 0;
        };
        if last_start.is_some_and(|s| s >= taken) {
            return 0;
        }
        let freed: Vec<String> = self
            .freed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, at)| **at > taken)
            .map(|(slot, _)| slot.clone())
            .collect();
        capacity::free_slots(
            &capacity::view(report),
            report.queue_depth,
            model,
            not_started,
            &freed,
        )
    }
}

/// Runs the bridge until `shutdown`.
///
/// # Errors
/// When the NATS connection cannot be opened at all.
pub async fn run(config: BridgeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let subjects = Subjects::new(&config.nats.prefix).context("the subject prefix")?;
    let client = config
        .nats
        .connect(&format!("rocksteady-bridge {}", config.board))
        .await
        .context("connecting to NATS")?;
    let link = SupervisorLink::start(
        config.client_socket.clone(),
        "rocksteady-bridge",
        shutdown.clone(),
    );
    let shared = Arc::new(Shared {
        config,
        client,
        subjects,
        link,
        shutdown: shutdown.clone(),
        status: Mutex::new(Status::default()),
        active: Mutex::new(BTreeSet::new()),
        not_started: Mutex::new(HashMap::new()),
        last_start: Mutex::new(None),
        changed: Notify::new(),
        poll_now: Notify::new(),
        freed: Mutex::new(HashMap::new()),
    });
    tracing::info!(board = %shared.config.board, classes = ?shared.config.classes.keys().collect::<Vec<_>>(), "bridge starting");
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(poll_status(Arc::clone(&shared)));
    tasks.spawn(announce(Arc::clone(&shared)));
    for (class, model) in shared.config.classes.clone() {
        tasks.spawn(pull(Arc::clone(&shared), class, model));
    }
    while tasks.join_next().await.is_some() {}
    // Let the serving tasks hand their requests back before the connection goes.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !shared
        .active
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_empty()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = shared.client.flush().await;
    Ok(())
}

/// Keeps the last status of the supervisor (reconnecting as needed).
async fn poll_status(shared: Arc<Shared>) {
    let mut admin: Option<AdminClient> = None;
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
            () = shared.poll_now.notified() => {}
        }
        if admin.is_none() {
            admin = AdminClient::connect_as(&shared.config.admin_socket, "rocksteady-bridge")
                .await
                .map(|a| a.with_timeout(Duration::from_secs(2)))
                .map_err(|e| set_problem(&shared, &e.chain()))
                .ok();
        }
        let Some(a) = admin.as_mut() else { continue };
        match a.status().await {
            Ok(report) => {
                let mut status = shared.status.lock().unwrap_or_else(PoisonError::into_inner);
                status.report = Some(report);
                status.problem.clear();
                status.taken = Some(Instant::now());
                drop(status);
                shared.changed.notify_waiters();
            }
            Err(e) => {
                set_problem(&shared, &e.chain());
                admin = None;
            }
        }
    }
}

fn set_problem(shared: &Shared, problem: &str) {
    let mut status = shared.status.lock().unwrap_or_else(PoisonError::into_inner);
    if status.problem.is_empty() {
        tracing::warn!(
            problem,
            "the local supervisor cannot be read; announcing no classes"
        );
    }
    status.report = None;
    problem.clone_into(&mut status.problem);
    status.taken = Some(Instant::now());
}

/// Announces the board's state every heartbeat interval.
async fn announce(shared: Arc<Shared>) {
    let classes: Vec<(String, String)> = shared.config.classes.clone().into_iter().collect();
    let subject = shared.subjects.heartbeat(&shared.config.board);
    let interval_ms = u64::try_from(shared.config.heartbeat.as_millis()).unwrap_or(1000);
    let mut tick = tokio::time::interval(shared.config.heartbeat);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let active: Vec<String> = shared
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        let beat = {
            let status = shared.status.lock().unwrap_or_else(PoisonError::into_inner);
            capacity::heartbeat(
                &shared.config.board,
                &classes,
                status.report.as_ref(),
                &status.problem,
                active,
                interval_ms,
            )
        };
        let body = serde_json::to_vec(&beat).unwrap_or_default();
        if let Err(e) = shared.client.publish(subject.clone(), body.into()).await {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }
    // A last heartbeat with no classes: front doors stop routing here at once.
    let beat = capacity::heartbeat(
        &shared.config.board,
        &classes,
        None,
        "stopping",
        Vec::new(),
        interval_ms,
    );
    let _ = shared
        .client
        .publish(
            subject,
            serde_json::to_vec(&beat).unwrap_or_default().into(),
        )
        .await;
}

/// Pulls requests of `class` while the supervisor has a free ready slot.
async fn pull(shared: Arc<Shared>, class: String, model: String) {
    let consumer = loop {
        match consumer(&shared, &class).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    class,
                    "cannot set up the work consumer; retrying"
                );
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let mut consumer = consumer;
    let mut failures = 0;
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        if failures >= 5 {
            // The server may have lost its store (a new server, a wiped
            // disk): set the stream and the consumer up again.
            if let Ok(c) = self::consumer(&shared, &class).await {
                consumer = c;
            }
            failures = 0;
        }
        let free = shared.free(&class, &model);
        if free == 0 {
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = shared.changed.notified() => {}
                () = tokio::time::sleep(STATUS_EVERY) => {}
            }
            continue;
        }
        let batch = consumer
            .fetch()
            .max_messages(free)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => {
                failures = 0;
                b
            }
            Err(e) => {
                failures += 1;
                tracing::debug!(error = %e, "pull failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                () = shared.shutdown.cancelled() => return,
                next = batch.next() => next,
            };
            match next {
                Some(Ok(msg)) => {
                    shared.pulled(&class, 1);
                    tokio::spawn(serve::serve(
                        Arc::clone(&shared),
                        class.clone(),
                        model.clone(),
                        msg,
                    ));
                }
                Some(Err(e)) => {
                    failures += 1;
                    tracing::debug!(error = %e, "pull interrupted");
                    break;
                }
                None => break,
            }
        }
    }
}

async fn consumer(
    shared: &Shared,
    class: &str,
) -> anyhow::Result<jetstream::consumer::Consumer<jetstream::consumer::pull::Config>> {
    let js = jetstream::new(shared.client.clone());
    let stream = ensure_stream(&js, &shared.subjects).await?;
    let name = Subjects::consumer(class);
    let consumer = stream
        .get_or_create_consumer(
            &name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: shared.subjects.work(class),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: shared.config.ack_wait,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating consumer {name}"))?;
    Ok(consumer)
}
