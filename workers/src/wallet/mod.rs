//! The wallet worker: owns the customers' balances and their ledger. Its saga steps credit and
//! debit a wallet (`wallet.credit`, `wallet.debit`), each booked once per saga, step and
//! direction, and never below zero. Going forward, a frozen wallet refuses both
//! (`wallet_frozen`) and a debit the balance cannot pay is refused (`insufficient_balance`);
//! undoing a step (the compensation phase) is never refused for a freeze, so that a saga can
//! always give back what it took. It publishes `WalletCredited` and `WalletDebited`.
//!
//! Before the wallet was a context of its own, `mission_reward` version 1 credited the wallet
//! inside `reward.grant`. A version-1 saga still running through the upgrade has its reward
//! context publish `RewardGranted` / `RewardRevoked` with `moves_wallet`, and [`RewardLedger`]
//! books those here, once per reward and direction. Routes are in [`api`], SQL in [`store`].

pub mod api;
pub mod store;

use std::sync::Arc;

use contracts::command::MovePointsV1;
use contracts::event::WalletMovedV1;
use contracts::{
    Command, CustomerId, DomainEvent, Envelope, EventEnvelope, Phase, Reply, StepFailure, Worker,
};
use runtime::outbox::{self, OutboxMessage};
use serde_json::Map;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::runtime::events::{self, Delivered, EventHandler};
use crate::runtime::{Handled, Handler, HandlerError, WorkerContext};
use store::{Booked, Direction, EntryKey};

/// The wallet worker's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/wallet");

/// The durable consumer that books version-1 rewards.
pub const REWARD_LEDGER_CONSUMER: &str = "wallet-rewards-v1";

/// The wallet worker.
#[derive(Clone, Debug)]
pub struct WalletWorker {
    pool: PgPool,
}

impl WalletWorker {
    /// A worker over its pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The public routes and their OpenAPI description.
    pub fn api(&self) -> (axum::Router, utoipa::openapi::OpenApi) {
        api::router(self.pool.clone())
    }

    /// Handles commands, and books version-1 rewards from the reward context's events, until
    /// `shutdown`.
    pub async fn run(
        self,
        context: WorkerContext,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let ledger = RewardLedger {
            pool: self.pool.clone(),
            topology: context.topology.clone(),
        };
        let legacy = events::run(
            context.js.clone(),
            context.topology.clone(),
            REWARD_LEDGER_CONSUMER.to_owned(),
            context.topology.event_subject("reward", ">"),
            Arc::new(ledger),
            context.batch,
            shutdown.clone(),
        );
        let commands = context.run_commands(Arc::new(self), shutdown);
        let (a, b) = tokio::join!(legacy, commands);
        a.and(b)
    }

    async fn move_points(
        conn: &mut PgConnection,
        command: &Envelope<Command>,
        c: &MovePointsV1,
        direction: Direction,
    ) -> Result<Handled, HandlerError> {
        if c.points <= 0 {
            return Ok(refuse(StepFailure::permanent(
                "invalid_points",
                format!("points must be positive; got {}", c.points),
            )));
        }
        let forward = command.phase == Phase::Forward;
        let wallet = store::lock(conn, &c.customer_id).await?;
        let key = EntryKey::Step {
            saga: command.saga_id,
            step_index: command.step_index,
        };
        if forward && wallet.frozen && store::booked(conn, key, direction).await?.is_none() {
            return Ok(refuse(StepFailure::permanent(
                "wallet_frozen",
                format!("the wallet of {} is frozen", c.customer_id),
            )));
        }
        match store::book(conn, &c.customer_id, wallet, key, direction, c.points).await? {
            Booked::Now(balance) => Ok(Handled::with_events(
                moved(),
                vec![event(direction, &c.customer_id, c.points, balance)],
            )),
            Booked::Before(_) => Ok(Handled::reply(moved())),
            Booked::Insufficient(balance) => {
                let message = format!(
                    "the wallet of {} holds {balance} points; {} cannot be debited",
                    c.customer_id, c.points
                );
                // Undoing a credit waits for the points to come back; a purchase is refused.
                let failure = if forward {
                    StepFailure::permanent("insufficient_balance", message)
                } else {
                    StepFailure::retryable("insufficient_balance", message)
                };
                Ok(refuse(failure))
            }
        }
    }
}

fn moved() -> Reply {
    Reply::Succeeded { output: Map::new() }
}

fn refuse(failure: StepFailure) -> Handled {
    Handled::reply(Reply::Failed(failure))
}

fn event(direction: Direction, customer: &CustomerId, points: i64, balance: i64) -> DomainEvent {
    let moved = WalletMovedV1 {
        customer_id: customer.clone(),
        points,
        balance,
    };
    match direction {
        Direction::Credit => DomainEvent::WalletCredited(moved),
        Direction::Debit => DomainEvent::WalletDebited(moved),
    }
}

impl Handler for WalletWorker {
    fn worker(&self) -> Worker {
        Worker::Wallet
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        command: &Envelope<Command>,
    ) -> Result<Handled, HandlerError> {
        match &command.body {
            Command::CreditWallet(c) => {
                Self::move_points(conn, command, c, Direction::Credit).await
            }
            Command::DebitWallet(c) => Self::move_points(conn, command, c, Direction::Debit).await,
            other => Err(HandlerError::not_mine(Worker::Wallet, other)),
        }
    }
}

/// Books the wallet moves of version-1 rewards from the reward context's `RewardGranted` and
/// `RewardRevoked` events (those with `moves_wallet`), once per reward and direction, and
/// publishes the wallet's own events for them through its outbox.
#[derive(Clone, Debug)]
pub struct RewardLedger {
    pool: PgPool,
    topology: contracts::Topology,
}

impl EventHandler for RewardLedger {
    async fn apply(&self, delivered: &[Delivered]) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await?;
        let mut published = Vec::new();
        for Delivered { envelope, .. } in delivered {
            let (reward, customer, points, direction) = match &envelope.event {
                DomainEvent::RewardGranted(e) if e.moves_wallet => {
                    (e.reward_id, &e.customer_id, e.points, Direction::Credit)
                }
                DomainEvent::RewardRevoked(e) if e.moves_wallet => {
                    (e.reward_id, &e.customer_id, e.points, Direction::Debit)
                }
                _ => continue,
            };
            let wallet = store::lock(&mut tx, customer).await?;
            let key = EntryKey::Reward(reward);
            match store::book(&mut tx, customer, wallet, key, direction, points).await? {
                Booked::Now(balance) => {
                    let moved = EventEnvelope::new(
                        event(direction, customer, points, balance),
                        envelope.saga_id,
                        chrono::Utc::now(),
                    );
                    published.push(
                        OutboxMessage::event(&self.topology, &moved, &Default::default())
                            .map_err(|e| HandlerError::Fatal(e.to_string()))?,
                    );
                }
                Booked::Before(_) => {}
                Booked::Insufficient(balance) => {
                    // The credit of this reward may still be on its way (events of one
                    // reward can reach two replicas): try again later.
                    return Err(HandlerError::Retryable(format!(
                        "reward {reward}: the wallet of {customer} holds {balance} points, \
                         {points} cannot be debited yet"
                    )));
                }
            }
        }
        outbox::insert(&mut tx, &published).await?;
        tx.commit().await?;
        Ok(())
    }
}
