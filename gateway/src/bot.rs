//! The bot: gateway event handling, triggers, and the path from a Discord
//! message or slash command to a streamed answer.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use proto::chat::{ChatMessage, Role};
use tokio_util::sync::CancellationToken;
use twilight_http::error::ErrorType;
use twilight_http::request::channel::reaction::RequestReactionType;
use twilight_model::application::command::{Command, CommandType};
use twilight_model::application::interaction::application_command::CommandOptionValue;
use twilight_model::application::interaction::{Interaction, InteractionData, InteractionType};
use twilight_model::channel::message::MessageFlags;
use twilight_model::channel::Message;
use twilight_model::http::interaction::{
    InteractionResponse, InteractionResponseData, InteractionResponseType,
};
use twilight_model::id::marker::{ApplicationMarker, UserMarker};
use twilight_model::id::Id;
use twilight_util::builder::command::{CommandBuilder, StringBuilder};

use crate::access::{check_allowed, NoticeBudget, Origin, SeenIds, UserLimits, UserPermit};
use crate::admin::{fetch_status, format_cluster, format_status};
use crate::config::Config;
use crate::context::{
    self, clean_prompt, node_of, parent_of, Budget, Fetch, Node, NodeCache, Windows,
};
use crate::link::SupervisorLink;
use crate::pacer::Pacer;
use crate::render::{AnswerState, SUPERVISOR_DOWN};
use crate::reply::{Sent, Target, Writer};

/// Ids seen recently, for de-duplicating replayed events.
const SEEN_CAPACITY: usize = 4096;

/// Who the bot is, learned from READY.
#[derive(Debug, Clone, Copy)]
pub struct Me {
    /// The bot user.
    pub user: Id<UserMarker>,
    /// The application (for slash commands).
    pub application: Id<ApplicationMarker>,
}

/// State shared by every handler.
pub struct Bot {
    /// Settings.
    pub config: Config,
    /// Discord REST client.
    pub http: Arc<twilight_http::Client>,
    /// Connection to the supervisor.
    pub link: SupervisorLink,
    /// Per-channel write pacing.
    pub pacer: Pacer,
    /// Per-user limits.
    pub limits: UserLimits,
    /// Message nodes for context.
    pub cache: NodeCache,
    /// Where long reply chains' context windows start.
    pub windows: Windows,
    /// Cancelled when the gateway stops.
    pub shutdown: CancellationToken,
    seen: Mutex<SeenIds>,
    notices: Mutex<NoticeBudget>,
    me: OnceLock<Me>,
    commands_registered: OnceLock<()>,
}

impl Bot {
    /// A writer of one answer or notice to `target`.
    fn writer(&self, target: Target) -> Writer<'_> {
        Writer::new(&self.http, &self.pacer, &self.shutdown, target)
    }
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bot")
            .field("config", &self.config)
            .field("me", &self.me.get())
            .finish_non_exhaustive()
    }
}

/// What made a message a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A direct message.
    Dm,
    /// The bot was mentioned.
    Mention,
    /// A reply to one of the bot's messages.
    Reply,
}

/// Whether a message asks the bot something. Pure, apart from the cache
/// lookup that recognises replies to the bot's messages when Discord did not
/// include the referenced message.
pub fn classify(message: &Message, me: Id<UserMarker>, cache: &NodeCache) -> Option<Trigger> {
    if message.author.bot || message.author.id == me {
        return None;
    }
    if message.guild_id.is_none() {
        return Some(Trigger::Dm);
    }
    if message.mentions.iter().any(|m| m.id == me) {
        return Some(Trigger::Mention);
    }
    if let Some(referenced) = &message.referenced_message {
        return (referenced.author.id == me).then_some(Trigger::Reply);
    }
    let (_, parent) = parent_of(message)?;
    cache
        .get(parent)
        .is_some_and(|node| node.role == Role::Assistant)
        .then_some(Trigger::Reply)
}

/// A short description of a REST failure that carries no message text.
pub fn describe_http(err: &twilight_http::Error) -> String {
    match err.kind() {
        ErrorType::Response { status, .. } => format!("Discord answered HTTP {status}"),
        ErrorType::Unauthorized => "Discord rejected the token (401)".to_owned(),
        ErrorType::RequestTimedOut => "request timed out".to_owned(),
        ErrorType::RequestError => "request failed to send".to_owned(),
        ErrorType::Parsing { .. } | ErrorType::Json => "response could not be parsed".to_owned(),
        ErrorType::BuildingRequest => "request could not be built".to_owned(),
        ErrorType::Validation => "request failed validation".to_owned(),
        _ => "request failed".to_owned(),
    }
}

/// Where a message comes from, for the access checks.
fn origin_of(message: &Message) -> Origin {
    Origin {
        guild: message.guild_id.map(Id::get),
        channel: message.channel_id.get(),
        user: message.author.id.get(),
        roles: message
            .member
            .as_ref()
            .map(|m| m.roles.iter().map(|r| r.get()).collect())
            .unwrap_or_default(),
    }
}

/// Reads messages the cache lacks from Discord.
struct HttpFetch<'a> {
    http: &'a twilight_http::Client,
    me: Id<UserMarker>,
}

impl Fetch for HttpFetch<'_> {
    async fn fetch(&self, channel: u64, message: u64) -> Option<Node> {
        let channel = Id::new_checked(channel)?;
        let message = Id::new_checked(message)?;
        let response = self.http.message(channel, message).await.ok()?;
        let message = response.model().await.ok()?;
        Some(node_of(&message, self.me))
    }
}

/// The slash commands the bot registers.
pub fn commands() -> Vec<Command> {
    vec![
        CommandBuilder::new("ask", "Ask the model a question", CommandType::ChatInput)
            .option(StringBuilder::new("prompt", "Your question").required(true))
            .build(),
        CommandBuilder::new(
            "status",
            "Show the model service's status (operators only)",
            CommandType::ChatInput,
        )
        .build(),
    ]
}

impl Bot {
    /// Shared state for one gateway run.
    pub fn new(
        config: Config,
        http: Arc<twilight_http::Client>,
        link: SupervisorLink,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            pacer: Pacer::new(config.edit_interval()),
            limits: UserLimits::new(&config),
            notices: Mutex::new(NoticeBudget::new(Duration::from_secs(
                config.user_rate_window_secs,
            ))),
            cache: NodeCache::new(config.context_cache_size),
            windows: Windows::new(config.context_cache_size),
            seen: Mutex::new(SeenIds::new(SEEN_CAPACITY)),
            me: OnceLock::new(),
            commands_registered: OnceLock::new(),
            config,
            http,
            link,
            shutdown,
        }
    }

    /// Records who the bot is (first READY wins; ids do not change).
    pub fn set_me(&self, me: Me) {
        let _ = self.me.set(me);
    }

    /// Who the bot is, once READY arrived.
    pub fn me(&self) -> Option<Me> {
        self.me.get().copied()
    }

    fn first_time(&self, id: u64) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first_time(id)
    }

    /// Registers the slash commands once per process.
    pub async fn register_commands(&self) {
        if !self.config.register_commands || self.commands_registered.set(()).is_err() {
            return;
        }
        let Some(me) = self.me() else { return };
        match self
            .http
            .interaction(me.application)
            .set_global_commands(&commands())
            .await
        {
            Ok(_) => tracing::info!("registered the /ask and /status commands"),
            Err(err) => {
                tracing::warn!(error = %describe_http(&err), "could not register slash commands");
            }
        }
    }

    /// Tells the author of `message` why it gets no answer: `text` as a
    /// reply the first time in the window, and after that (or when the
    /// channel is too busy with answers to post it) only `reaction` on their
    /// message. Reactions do not use the channel's message lane.
    async fn tell(&self, message: &Message, text: &str, reaction: &str) {
        let first = self
            .notices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allow(message.author.id.get(), Instant::now());
        if first {
            let target = Target::Channel {
                channel: message.channel_id,
                reply_to: message.id,
            };
            if self.writer(target).notice(text).await {
                return;
            }
        }
        let emoji = RequestReactionType::Unicode { name: reaction };
        if let Err(err) = self
            .http
            .create_reaction(message.channel_id, message.id, &emoji)
            .await
        {
            tracing::debug!(error = %describe_http(&err), "could not react to a message");
        }
    }

    fn system_turn(&self) -> Option<ChatMessage> {
        (!self.config.system_prompt.is_empty())
            .then(|| ChatMessage::new(Role::System, self.config.system_prompt.clone()))
    }

    fn budget(&self) -> Budget {
        Budget {
            max_messages: self.config.context_max_messages,
            max_chars: self.config.context_max_chars,
        }
    }

    fn too_long(&self, prompt: &str) -> Option<String> {
        let chars = prompt.chars().count();
        (chars > self.config.context_max_chars).then(|| {
            format!(
                "Your message is too long ({chars} characters; I take at most {}).",
                self.config.context_max_chars
            )
        })
    }

    /// Whether `message` is worth a task: it asks the bot something, in a
    /// place the bot serves. Cheap and synchronous, for the event loop; the
    /// bot's own messages and chatter elsewhere take no slot.
    pub fn wants(&self, message: &Message) -> bool {
        let Some(me) = self.me() else { return false };
        if classify(message, me.user, &self.cache).is_none() {
            return false;
        }
        match check_allowed(&self.config, &origin_of(message)) {
            Err(refusal) if refusal.silent() => {
                tracing::debug!(
                    channel = message.channel_id.get(),
                    ?refusal,
                    "message outside the allowlist ignored"
                );
                false
            }
            _ => true,
        }
    }

    /// Whether `message` (which asks the bot something) is answered: the
    /// prompt and the user's permit, or `None` after saying why not (or,
    /// outside the allowlist, saying nothing).
    async fn admit_message(
        &self,
        message: &Message,
        me: Id<UserMarker>,
        trigger: Trigger,
    ) -> Option<(String, UserPermit)> {
        let origin = origin_of(message);
        // Access first: where the bot does not serve, it says nothing at all,
        // not even the hint for an empty mention.
        if let Err(refusal) = check_allowed(&self.config, &origin) {
            if refusal.silent() {
                tracing::debug!(
                    channel = origin.channel,
                    ?refusal,
                    "message outside the allowlist ignored"
                );
            } else {
                tracing::info!(user = origin.user, ?refusal, "request refused");
                self.tell(message, &refusal.message(), refusal.reaction())
                    .await;
            }
            return None;
        }
        let prompt = clean_prompt(&message.content, me);
        if prompt.is_empty() {
            let text = if trigger == Trigger::Reply && !self.config.message_content_intent {
                "I can't read replies that don't mention me; keep the @mention on when you reply."
            } else {
                "Ask me something: mention me followed by your question."
            };
            self.tell(message, text, "❓").await;
            return None;
        }
        let permit = match self.limits.admit(origin.user) {
            Ok(permit) => permit,
            Err(refusal) => {
                tracing::info!(user = origin.user, ?refusal, "request refused");
                self.tell(message, &refusal.message(), refusal.reaction())
                    .await;
                return None;
            }
        };
        if let Some(text) = self.too_long(&prompt) {
            self.tell(message, &text, "📏").await;
            return None;
        }
        Some((prompt, permit))
    }

    /// Handles one MESSAGE_CREATE.
    pub async fn on_message(&self, message: Message) {
        let Some(me) = self.me() else { return };
        let Some(trigger) = classify(&message, me.user, &self.cache) else {
            return;
        };
        if !self.first_time(message.id.get()) {
            tracing::debug!(message = message.id.get(), "replayed message ignored");
            return;
        }
        let Some((prompt, permit)) = self.admit_message(&message, me.user, trigger).await else {
            return;
        };
        let target = Target::Channel {
            channel: message.channel_id,
            reply_to: message.id,
        };
        if let Some(referenced) = &message.referenced_message {
            // Our own record of a message (the exact answer text) beats one
            // rebuilt from what Discord shows.
            if self.cache.get(referenced.id.get()).is_none() {
                self.cache
                    .put(referenced.id.get(), node_of(referenced, me.user));
            }
        }
        self.cache.put(message.id.get(), node_of(&message, me.user));
        let fetcher = HttpFetch {
            http: &self.http,
            me: me.user,
        };
        let context = context::build(
            &self.cache,
            &self.windows,
            &fetcher,
            &prompt,
            parent_of(&message),
            self.budget(),
        )
        .await;
        tracing::info!(
            user = message.author.id.get(),
            channel = message.channel_id.get(),
            ?trigger,
            turns = context.turns.len(),
            truncated = context.truncated,
            "answering"
        );
        let conversation = context.conversation_key(message.id.get());
        let sent = self
            .answer(
                self.writer(target),
                context.turns,
                context.truncated,
                Some(conversation),
                permit,
            )
            .await;
        let channel = message.channel_id.get();
        let mut parent = (channel, message.id.get());
        for (id, body) in sent {
            self.cache.put(
                id.get(),
                Node {
                    role: Role::Assistant,
                    content: body,
                    parent: Some(parent),
                    prompt: None,
                },
            );
            parent = (channel, id.get());
        }
    }

    /// Submits `turns` and streams the answer through `writer`.
    async fn answer(
        &self,
        writer: Writer<'_>,
        turns: Vec<ChatMessage>,
        truncated: bool,
        conversation: Option<String>,
        permit: UserPermit,
    ) -> Sent {
        let mut state = AnswerState::default();
        if truncated {
            state
                .notes
                .push("older messages were left out of the context".to_owned());
        }
        let messages: Vec<ChatMessage> = self.system_turn().into_iter().chain(turns).collect();
        let submitted = self
            .link
            .submit_in(
                messages,
                self.config.gen_params(),
                String::new(),
                conversation,
            )
            .await;
        match submitted {
            Ok(request) => writer.stream(Some(request), state, Some(permit)).await,
            Err(err) => {
                tracing::warn!(error = %err, "cannot submit to the supervisor");
                state.fail(SUPERVISOR_DOWN);
                drop(permit);
                writer.stream(None, state, None).await
            }
        }
    }

    /// Handles one INTERACTION_CREATE.
    pub async fn on_interaction(&self, interaction: Interaction) {
        if interaction.kind != InteractionType::ApplicationCommand {
            return;
        }
        if !self.first_time(interaction.id.get()) {
            return;
        }
        let Some(InteractionData::ApplicationCommand(data)) = &interaction.data else {
            return;
        };
        match data.name.as_str() {
            "ask" => {
                let prompt = data
                    .options
                    .iter()
                    .find(|o| o.name == "prompt")
                    .and_then(|o| match &o.value {
                        CommandOptionValue::String(s) => Some(s.trim().to_owned()),
                        _ => None,
                    })
                    .unwrap_or_default();
                self.on_ask(&interaction, prompt).await;
            }
            "status" => self.on_status(&interaction).await,
            other => tracing::debug!(command = other, "unknown command ignored"),
        }
    }

    async fn respond(&self, interaction: &Interaction, response: &InteractionResponse) -> bool {
        match self
            .http
            .interaction(interaction.application_id)
            .create_response(interaction.id, &interaction.token, response)
            .await
        {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(error = %describe_http(&err), "could not answer an interaction");
                false
            }
        }
    }

    async fn respond_ephemeral(&self, interaction: &Interaction, text: &str) {
        let response = InteractionResponse {
            kind: InteractionResponseType::ChannelMessageWithSource,
            data: Some(InteractionResponseData {
                content: Some(text.to_owned()),
                flags: Some(MessageFlags::EPHEMERAL),
                ..InteractionResponseData::default()
            }),
        };
        self.respond(interaction, &response).await;
    }

    async fn defer(&self, interaction: &Interaction, ephemeral: bool) -> bool {
        let response = InteractionResponse {
            kind: InteractionResponseType::DeferredChannelMessageWithSource,
            data: ephemeral.then(|| InteractionResponseData {
                flags: Some(MessageFlags::EPHEMERAL),
                ..InteractionResponseData::default()
            }),
        };
        self.respond(interaction, &response).await
    }

    fn interaction_origin(interaction: &Interaction) -> Option<Origin> {
        let user = interaction.author_id()?.get();
        let channel = interaction.channel.as_ref().map_or(0, |c| c.id.get());
        Some(Origin {
            guild: interaction.guild_id.map(Id::get),
            channel,
            user,
            roles: interaction
                .member
                .as_ref()
                .map(|m| m.roles.iter().map(|r| r.get()).collect())
                .unwrap_or_default(),
        })
    }

    async fn on_ask(&self, interaction: &Interaction, prompt: String) {
        let Some(origin) = Self::interaction_origin(interaction) else {
            return;
        };
        // A slash command always gets a private answer (Discord shows the
        // user an error otherwise); outside the allowlist that is the refusal.
        if let Err(refusal) = check_allowed(&self.config, &origin) {
            tracing::info!(user = origin.user, ?refusal, "request refused");
            self.respond_ephemeral(interaction, &refusal.message())
                .await;
            return;
        }
        if prompt.is_empty() {
            self.respond_ephemeral(interaction, "Ask me something: /ask prompt:<your question>")
                .await;
            return;
        }
        let permit = match self.limits.admit(origin.user) {
            Ok(permit) => permit,
            Err(refusal) => {
                tracing::info!(user = origin.user, ?refusal, "request refused");
                self.respond_ephemeral(interaction, &refusal.message())
                    .await;
                return;
            }
        };
        if let Some(text) = self.too_long(&prompt) {
            self.respond_ephemeral(interaction, &text).await;
            return;
        }
        // Discord wants an answer within 3 s: defer first, then stream into
        // the original response.
        if !self.defer(interaction, false).await {
            return;
        }
        tracing::info!(
            user = origin.user,
            channel = origin.channel,
            "answering /ask"
        );
        let target = Target::Interaction {
            application: interaction.application_id,
            token: interaction.token.clone(),
            channel: origin.channel,
        };
        let turns = vec![ChatMessage::new(Role::User, prompt.clone())];
        // A /ask has no chain yet; replies to its answer start one.
        let sent = self
            .answer(self.writer(target), turns, false, None, permit)
            .await;
        let mut parent = None;
        let mut first_prompt = Some(prompt);
        for (id, body) in sent {
            self.cache.put(
                id.get(),
                Node {
                    role: Role::Assistant,
                    content: body,
                    parent,
                    prompt: first_prompt.take(),
                },
            );
            parent = Some((origin.channel, id.get()));
        }
    }

    async fn on_status(&self, interaction: &Interaction) {
        let Some(user) = interaction.author_id() else {
            return;
        };
        if !self.config.admin_users.contains(&user.get()) {
            self.respond_ephemeral(interaction, "Only the bot's operators can use /status.")
                .await;
            return;
        }
        if !self.defer(interaction, true).await {
            return;
        }
        // A front door on a cluster shows every board; else its supervisor.
        let cluster = self
            .link
            .cluster()
            .map(client::cluster::ClusterLink::boards);
        let text = match cluster {
            Some(boards) => format_cluster(&boards),
            None => match fetch_status(&self.config.admin_socket).await {
                Ok(report) => format_status(&report),
                Err(err) => {
                    tracing::warn!(error = %err, "status request failed");
                    format!("⚠️ {SUPERVISOR_DOWN} ({})", err.chain())
                }
            },
        };
        let channel = Self::interaction_origin(interaction).map_or(0, |o| o.channel);
        let target = Target::Interaction {
            application: interaction.application_id,
            token: interaction.token.clone(),
            channel,
        };
        self.writer(target).say(&text).await;
    }
}
