//! Starts the real gateway (`gateway::run`) against the fake Discord and a
//! supervisor socket path in a temporary directory.

use std::path::PathBuf;
use std::time::Duration;

use gateway::{Config, GatewayError, Token};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fake_discord::FakeDiscord;

/// Edit interval used by the tests (short, so they run fast).
pub const INTERVAL: Duration = Duration::from_millis(300);

/// A running gateway with its fake Discord.
pub struct Bot {
    /// The fake Discord.
    pub discord: FakeDiscord,
    /// Temporary directory holding the sockets.
    pub dir: TempDir,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), GatewayError>>>,
}

impl Bot {
    /// Client socket path the gateway uses.
    pub fn client_socket(&self) -> PathBuf {
        self.dir.path().join("client.sock")
    }

    /// Admin socket path the gateway uses.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// Stops the gateway and returns how `run` ended.
    pub async fn stop(mut self) -> Result<(), GatewayError> {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("gateway stops within 15 s")
            .expect("gateway task did not panic")
    }

    /// Waits for `run` to end by itself.
    pub async fn ended(mut self, within: Duration) -> Result<(), GatewayError> {
        let task = self.task.take().expect("running");
        tokio::time::timeout(within, task)
            .await
            .expect("gateway ends in time")
            .expect("gateway task did not panic")
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A config pointing at `discord`, with test-friendly values, changed by `tweak`.
pub fn config(discord: &FakeDiscord, dir: &TempDir, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::from_toml(&format!(
        "[supervisor]\nignored = true\n\n[gateway]\n\
         gateway_url = \"ws://{addr}\"\n\
         rest_url = \"http://{addr}\"\n\
         client_socket = \"{client}\"\n\
         admin_socket = \"{admin}\"\n\
         edit_interval_ms = {interval}\n\
         temperature = 0.0\n\
         system_prompt = \"You are a test assistant.\"\n",
        addr = discord.addr,
        client = dir.path().join("client.sock").display(),
        admin = dir.path().join("admin.sock").display(),
        interval = INTERVAL.as_millis(),
    ))
    .expect("test config parses");
    config.token = Token::new("fake-token");
    tweak(&mut config);
    config
}

/// Logs to the test output when RUST_LOG is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Starts a fake Discord and the gateway; waits until the bot identified.
pub async fn start(tweak: impl FnOnce(&mut Config)) -> Bot {
    init_logs();
    let discord = FakeDiscord::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&discord, &dir, tweak);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway::run(config, shutdown.clone()));
    discord.wait_ready().await;
    Bot {
        discord,
        dir,
        shutdown,
        task: Some(task),
    }
}

/// Starts the gateway against an already running fake (for tests that
/// configure the fake before the bot connects).
pub fn start_with(discord: FakeDiscord, tweak: impl FnOnce(&mut Config)) -> Bot {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&discord, &dir, tweak);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway::run(config, shutdown.clone()));
    Bot {
        discord,
        dir,
        shutdown,
        task: Some(task),
    }
}
