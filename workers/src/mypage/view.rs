//! The view's rows and how a domain event changes them: a pure fold, without I/O, so that the
//! live projection and a rebuild (which apply the same events in the same stream order) build
//! the same rows, and so that the rules are pinned by plain unit tests.
//!
//! Two kinds of rows make the view, plus one balance per customer:
//! - a **mission** row per mission (the seed's Mypage row): status, reward, notification;
//! - a **gift** row per gift exchange, keyed by the exchange's saga id: gift, voucher,
//!   notification, and how the exchange ended;
//! - a **wallet** per customer: the balance as last projected.
//!
//! Events of different contexts may arrive in any order (a `NotificationSent` before the
//! `MissionUpdated` of the same mission), and the same event may arrive twice (republished
//! under a new `Nats-Msg-Id`). So every event only upserts the fields it knows, into a row it
//! creates when missing, and every field group that more than one event writes keeps the
//! [`Version`] of the event that last wrote it: `(occurred_at, message_id)`, identical for a
//! republished event. An event older than the version it would overwrite changes nothing; an
//! event equal to it (the same event again) changes nothing either. Notification statuses only
//! move forward (`pending` < `queued` < `sent` | `failed`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use contracts::{DomainEvent, EventEnvelope};
use uuid::Uuid;

/// The saga type whose end tells a gift row how its exchange ended.
pub const GIFT_EXCHANGE: &str = "gift_exchange";

/// Longest stored status text (`mission_status`, `notification_status`, `exchange_state`).
pub const STATUS_LEN: usize = 32;
/// Longest stored gift name (the gift worker allows 200 characters).
pub const GIFT_NAME_LEN: usize = 255;
/// Longest stored voucher code.
pub const VOUCHER_LEN: usize = 64;
/// Longest customer id (a [`contracts::CustomerId`] is at most 64 characters).
pub const CUSTOMER_LEN: usize = 64;

/// What a row is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A mission (keyed by its id).
    Mission,
    /// A gift exchange (keyed by its saga's id).
    Gift,
}

impl Kind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Mission => "mission",
            Kind::Gift => "gift",
        }
    }

    /// The kind a stored name names.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "mission" => Some(Kind::Mission),
            "gift" => Some(Kind::Gift),
            _ => None,
        }
    }
}

/// A row's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    /// Mission or gift exchange.
    pub kind: Kind,
    /// The mission's id, or the exchange's saga id.
    pub item_id: Uuid,
}

impl RowKey {
    /// A mission's row.
    pub fn mission(id: Uuid) -> Self {
        Self {
            kind: Kind::Mission,
            item_id: id,
        }
    }

    /// A gift exchange's row.
    pub fn gift(saga: Uuid) -> Self {
        Self {
            kind: Kind::Gift,
            item_id: saga,
        }
    }
}

/// The order of two writes of one field group: when the change happened, then the event's id
/// (so that a republished event has exactly the version it had the first time). Stored as
/// text that sorts the same way.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub String);

impl Version {
    /// The version of `envelope`.
    pub fn of(envelope: &EventEnvelope) -> Self {
        let micros = u64::try_from(envelope.occurred_at.timestamp_micros()).unwrap_or(0);
        Self(format!("{micros:020}.{}", envelope.message_id))
    }
}

/// The versions of a row's field groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    /// `mission_status` (from `MissionUpdated`).
    pub mission: Option<Version>,
    /// `reward_id` and `reward_points` (from `MissionUpdated`, `RewardGranted`,
    /// `RewardRevoked`).
    pub reward: Option<Version>,
    /// `notification_status` and the notification's ids.
    pub notification: Option<Version>,
}

/// One row of the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Kind and id.
    pub key: RowKey,
    /// Whose it is (unknown until an event names the customer).
    pub customer_id: Option<String>,
    /// `OPEN`, `COMPLETED` or `REWARDED` (mission rows).
    pub mission_status: Option<String>,
    /// The attached reward (mission rows).
    pub reward_id: Option<Uuid>,
    /// Its points.
    pub reward_points: Option<i64>,
    /// The notification (`telegram_id` of the original system).
    pub telegram_id: Option<Uuid>,
    /// `pending`, `queued`, `sent` or `failed`.
    pub notification_status: Option<String>,
    /// Telegram's id of the message, when sent.
    pub telegram_message_id: Option<i64>,
    /// The gift (gift rows).
    pub gift_id: Option<Uuid>,
    /// Its name.
    pub gift_name: Option<String>,
    /// The voucher issued.
    pub voucher_code: Option<String>,
    /// `issued`, or `released` when the reservation went back to the stock.
    pub gift_status: Option<String>,
    /// How the exchange's saga ended (`completed`, `compensated`, ...).
    pub exchange_state: Option<String>,
    /// When the newest change it reflects happened.
    pub updated_at: DateTime<Utc>,
    /// The versions of its field groups.
    pub versions: Versions,
}

impl Row {
    /// An empty row.
    pub fn new(key: RowKey, at: DateTime<Utc>) -> Self {
        Self {
            key,
            customer_id: None,
            mission_status: None,
            reward_id: None,
            reward_points: None,
            telegram_id: None,
            notification_status: None,
            telegram_message_id: None,
            gift_id: None,
            gift_name: None,
            voucher_code: None,
            gift_status: None,
            exchange_state: None,
            updated_at: at,
            versions: Versions::default(),
        }
    }

    fn fill_customer(&mut self, customer: &str) {
        if self.customer_id.is_none() {
            self.customer_id = Some(clip(customer, CUSTOMER_LEN));
        }
    }

    fn notify(
        &mut self,
        id: Option<Uuid>,
        message_id: Option<i64>,
        status: &str,
        version: &Version,
    ) {
        let newer = is_newer(version, self.versions.notification.as_ref());
        let (new, current) = (
            rank(Some(status)),
            rank(self.notification_status.as_deref()),
        );
        if new > current || (new == current && newer) {
            self.notification_status = Some(clip(status, STATUS_LEN));
            self.versions.notification =
                self.versions.notification.take().max(Some(version.clone()));
        }
        if let Some(id) = id
            && (self.telegram_id.is_none() || newer)
        {
            self.telegram_id = Some(id);
        }
        if let Some(message) = message_id
            && (self.telegram_message_id.is_none() || newer)
        {
            self.telegram_message_id = Some(message);
        }
    }
}

/// A customer's balance as last projected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wallet {
    /// The customer.
    pub customer_id: String,
    /// The balance the newest wallet event reported.
    pub balance: i64,
    /// That event's version.
    pub version: Version,
    /// When it happened.
    pub updated_at: DateTime<Utc>,
}

/// How far a notification status is along: a status never moves back.
fn rank(status: Option<&str>) -> u8 {
    match status {
        None => 0,
        Some("pending") => 1,
        Some("queued") => 2,
        Some(_) => 3,
    }
}

fn is_newer(version: &Version, than: Option<&Version>) -> bool {
    than.is_none_or(|than| version > than)
}

/// `text` cut to at most `chars` characters, so that no event can carry a value its column
/// refuses (a refused batch would stop the projection).
pub fn clip(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// `at` to the microsecond, the precision both stores keep.
pub fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// What applying an event reads first: the rows and the wallet it may change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Rows.
    pub rows: Vec<RowKey>,
    /// Customers' wallets.
    pub wallets: Vec<String>,
}

impl Needs {
    /// Adds what `envelope` needs.
    pub fn add(&mut self, envelope: &EventEnvelope) {
        match &envelope.event {
            DomainEvent::WalletCredited(w) | DomainEvent::WalletDebited(w) => {
                self.wallets
                    .push(clip(w.customer_id.as_str(), CUSTOMER_LEN));
            }
            _ => self.rows.extend(row_key(envelope)),
        }
    }

    /// Without repeats.
    pub fn dedup(&mut self) {
        self.rows.sort();
        self.rows.dedup();
        self.wallets.sort();
        self.wallets.dedup();
    }
}

/// The row an event is about, if any.
pub fn row_key(envelope: &EventEnvelope) -> Option<RowKey> {
    let saga = envelope.saga_id.map(|s| RowKey::gift(s.0));
    match &envelope.event {
        DomainEvent::MissionUpdated(m) => Some(RowKey::mission(m.id.0)),
        DomainEvent::MessageUpdated(m) => Some(RowKey::mission(m.mission_id.0)),
        DomainEvent::RewardGranted(r) => Some(RowKey::mission(r.mission_id.0)),
        DomainEvent::RewardRevoked(r) => Some(RowKey::mission(r.mission_id.0)),
        DomainEvent::NotificationSent(n) | DomainEvent::NotificationFailed(n) => {
            n.mission_id.map(|m| RowKey::mission(m.0)).or(saga)
        }
        DomainEvent::GiftIssued(_) | DomainEvent::GiftReleased(_) => saga,
        DomainEvent::SagaFinished(s) if s.saga_type == GIFT_EXCHANGE => {
            Some(RowKey::gift(s.saga_id.0))
        }
        DomainEvent::SagaFinished(_)
        | DomainEvent::WalletCredited(_)
        | DomainEvent::WalletDebited(_) => None,
    }
}

/// The rows and wallets one batch works on: loaded, changed by events, and compared with what
/// was loaded so that only changed ones are written back.
#[derive(Clone, Debug, Default)]
pub struct Working {
    rows: BTreeMap<RowKey, Row>,
    wallets: BTreeMap<String, Wallet>,
    loaded_rows: BTreeMap<RowKey, Row>,
    loaded_wallets: BTreeMap<String, Wallet>,
}

impl Working {
    /// Starts from the stored `rows` and `wallets`.
    pub fn new(rows: Vec<Row>, wallets: Vec<Wallet>) -> Self {
        let rows: BTreeMap<_, _> = rows.into_iter().map(|r| (r.key, r)).collect();
        let wallets: BTreeMap<_, _> = wallets
            .into_iter()
            .map(|w| (w.customer_id.clone(), w))
            .collect();
        Self {
            loaded_rows: rows.clone(),
            loaded_wallets: wallets.clone(),
            rows,
            wallets,
        }
    }

    /// The row of `key` (if loaded or made).
    pub fn row(&self, key: &RowKey) -> Option<&Row> {
        self.rows.get(key)
    }

    /// The wallet of `customer` (if loaded or made).
    pub fn wallet(&self, customer: &str) -> Option<&Wallet> {
        self.wallets.get(customer)
    }

    fn touch(&mut self, key: RowKey, at: DateTime<Utc>) -> &mut Row {
        let row = self.rows.entry(key).or_insert_with(|| Row::new(key, at));
        row.updated_at = row.updated_at.max(at);
        row
    }

    /// Applies one event (see the module documentation for the rules).
    pub fn fold(&mut self, envelope: &EventEnvelope) {
        let version = Version::of(envelope);
        let at = micros(envelope.occurred_at);
        let Some(key) = row_key(envelope) else {
            if let DomainEvent::WalletCredited(w) | DomainEvent::WalletDebited(w) = &envelope.event
            {
                let customer = clip(w.customer_id.as_str(), CUSTOMER_LEN);
                let wallet = self
                    .wallets
                    .entry(customer.clone())
                    .or_insert_with(|| Wallet {
                        customer_id: customer,
                        balance: w.balance,
                        version: version.clone(),
                        updated_at: at,
                    });
                if version > wallet.version {
                    wallet.balance = w.balance;
                    wallet.version = version;
                }
                wallet.updated_at = wallet.updated_at.max(at);
            }
            return;
        };
        let row = self.touch(key, at);
        match &envelope.event {
            DomainEvent::MissionUpdated(m) => {
                row.fill_customer(m.customer_id.as_str());
                if is_newer(&version, row.versions.mission.as_ref()) {
                    row.mission_status = Some(clip(&m.status, STATUS_LEN));
                    row.versions.mission = Some(version.clone());
                }
                if is_newer(&version, row.versions.reward.as_ref()) {
                    let reward = m.reward_id.map(|r| r.0);
                    if row.reward_id != reward {
                        row.reward_points = None;
                    }
                    row.reward_id = reward;
                    row.versions.reward = Some(version);
                }
            }
            DomainEvent::RewardGranted(r) => {
                row.fill_customer(r.customer_id.as_str());
                if is_newer(&version, row.versions.reward.as_ref()) {
                    row.reward_id = Some(r.reward_id.0);
                    row.reward_points = Some(r.points);
                    row.versions.reward = Some(version);
                } else if row.reward_id == Some(r.reward_id.0) {
                    // A newer MissionUpdated attached this reward without its points.
                    row.reward_points = Some(r.points);
                }
            }
            DomainEvent::RewardRevoked(r) => {
                row.fill_customer(r.customer_id.as_str());
                if is_newer(&version, row.versions.reward.as_ref()) {
                    row.reward_id = None;
                    row.reward_points = None;
                    row.versions.reward = Some(version);
                }
            }
            DomainEvent::MessageUpdated(m) => {
                row.notify(m.id.map(|n| n.0), None, m.status.as_str(), &version);
            }
            DomainEvent::NotificationSent(n) => {
                row.fill_customer(n.customer_id.as_str());
                row.notify(
                    Some(n.notification_id.0),
                    n.telegram_message_id,
                    "sent",
                    &version,
                );
            }
            DomainEvent::NotificationFailed(n) => {
                row.fill_customer(n.customer_id.as_str());
                row.notify(
                    Some(n.notification_id.0),
                    n.telegram_message_id,
                    "failed",
                    &version,
                );
            }
            DomainEvent::GiftIssued(g) => {
                row.fill_customer(g.customer_id.as_str());
                row.gift_id = Some(g.gift_id.0);
                row.gift_name = Some(clip(&g.gift_name, GIFT_NAME_LEN));
                row.voucher_code = Some(clip(&g.voucher_code, VOUCHER_LEN));
                row.gift_status = Some("issued".into());
                row.notify(None, None, "pending", &version);
            }
            DomainEvent::GiftReleased(g) => {
                row.fill_customer(g.customer_id.as_str());
                row.gift_id.get_or_insert(g.gift_id.0);
                if row.gift_status.is_none() {
                    row.gift_status = Some("released".into());
                }
            }
            DomainEvent::SagaFinished(s) => {
                row.exchange_state = Some(clip(&s.state, STATUS_LEN));
                if s.state == "completed" {
                    // Finished without a confirmed delivery: the message went to the queue.
                    row.notify(None, None, "queued", &version);
                }
            }
            DomainEvent::WalletCredited(_) | DomainEvent::WalletDebited(_) => {}
        }
    }

    /// The rows and wallets that differ from what was loaded: what to write back.
    pub fn changed(&self) -> (Vec<Row>, Vec<Wallet>) {
        let rows = self
            .rows
            .values()
            .filter(|r| self.loaded_rows.get(&r.key) != Some(*r))
            .cloned()
            .collect();
        let wallets = self
            .wallets
            .values()
            .filter(|w| self.loaded_wallets.get(&w.customer_id) != Some(*w))
            .cloned()
            .collect();
        (rows, wallets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::command::NotificationStatus;
    use contracts::event::{
        GiftIssuedV1, MessageUpdatedV1, MissionUpdatedV1, NotificationEventV1, RewardGrantedV1,
        RewardRevokedV1, SagaFinishedV1, WalletMovedV1,
    };
    use contracts::{GiftId, MissionId, NotificationId, RewardId, SagaId};

    fn at(second: i64, event: DomainEvent, saga: Option<SagaId>) -> EventEnvelope {
        let when = DateTime::from_timestamp(1_700_000_000 + second, 0).expect("time");
        EventEnvelope::new(event, saga, when)
    }

    fn customer() -> contracts::CustomerId {
        "player-1".parse().expect("valid")
    }

    fn mission_updated(id: MissionId, status: &str, reward: Option<RewardId>) -> DomainEvent {
        DomainEvent::MissionUpdated(MissionUpdatedV1 {
            id,
            status: status.into(),
            reward_id: reward,
            customer_id: customer(),
        })
    }

    fn fold_all(events: &[EventEnvelope]) -> Working {
        let mut working = Working::default();
        for event in events {
            working.fold(event);
        }
        working
    }

    /// Every order of `events` gives the same rows (a permutation per rotation and reversal).
    fn same_in_every_order(events: &[EventEnvelope]) -> Working {
        let straight = fold_all(events);
        for shift in 0..events.len() {
            let mut rotated = events.to_vec();
            rotated.rotate_left(shift);
            for order in [rotated.clone(), rotated.into_iter().rev().collect()] {
                let other = fold_all(&order);
                assert_eq!(other.changed(), straight.changed(), "order {shift}");
            }
        }
        straight
    }

    #[test]
    fn a_completed_saga_shows_the_reward_and_the_sent_notification_in_any_order() {
        let (mission, reward, note) = (MissionId::new(), RewardId::new(), NotificationId::new());
        let saga = Some(SagaId::new());
        let events = [
            at(1, mission_updated(mission, "COMPLETED", None), saga),
            at(
                2,
                DomainEvent::RewardGranted(RewardGrantedV1 {
                    reward_id: reward,
                    mission_id: mission,
                    customer_id: customer(),
                    points: 150,
                    moves_wallet: false,
                }),
                saga,
            ),
            at(3, mission_updated(mission, "REWARDED", Some(reward)), saga),
            at(
                4,
                DomainEvent::NotificationSent(NotificationEventV1 {
                    notification_id: note,
                    customer_id: customer(),
                    mission_id: Some(mission),
                    telegram_message_id: Some(77),
                    error_code: None,
                }),
                saga,
            ),
            at(
                5,
                DomainEvent::MessageUpdated(MessageUpdatedV1 {
                    id: Some(note),
                    mission_id: mission,
                    status: NotificationStatus::Sent,
                }),
                saga,
            ),
        ];
        let working = same_in_every_order(&events);
        let row = working.row(&RowKey::mission(mission.0)).expect("row");
        assert_eq!(row.customer_id.as_deref(), Some("player-1"));
        assert_eq!(row.mission_status.as_deref(), Some("REWARDED"));
        assert_eq!(
            (row.reward_id, row.reward_points),
            (Some(reward.0), Some(150))
        );
        assert_eq!(row.telegram_id, Some(note.0));
        assert_eq!(row.notification_status.as_deref(), Some("sent"));
        assert_eq!(row.telegram_message_id, Some(77));
        assert_eq!(row.updated_at, events[4].occurred_at);
    }

    #[test]
    fn a_compensated_saga_shows_the_mission_open_and_no_reward_in_any_order() {
        let (mission, reward) = (MissionId::new(), RewardId::new());
        let saga = Some(SagaId::new());
        let granted = RewardGrantedV1 {
            reward_id: reward,
            mission_id: mission,
            customer_id: customer(),
            points: 30,
            moves_wallet: false,
        };
        let revoked = RewardRevokedV1 {
            reward_id: reward,
            mission_id: mission,
            customer_id: customer(),
            points: 30,
            moves_wallet: false,
        };
        let events = [
            at(1, mission_updated(mission, "COMPLETED", None), saga),
            at(2, DomainEvent::RewardGranted(granted), saga),
            at(3, DomainEvent::RewardRevoked(revoked), saga),
            at(4, mission_updated(mission, "OPEN", None), saga),
        ];
        let working = same_in_every_order(&events);
        let row = working.row(&RowKey::mission(mission.0)).expect("row");
        assert_eq!(row.mission_status.as_deref(), Some("OPEN"));
        assert_eq!((row.reward_id, row.reward_points), (None, None));
    }

    #[test]
    fn every_event_applied_twice_changes_nothing() {
        let (mission, reward) = (MissionId::new(), RewardId::new());
        let saga = SagaId::new();
        let events = [
            at(1, mission_updated(mission, "COMPLETED", None), Some(saga)),
            at(
                2,
                DomainEvent::RewardGranted(RewardGrantedV1 {
                    reward_id: reward,
                    mission_id: mission,
                    customer_id: customer(),
                    points: 5,
                    moves_wallet: false,
                }),
                Some(saga),
            ),
            at(
                3,
                DomainEvent::WalletCredited(WalletMovedV1 {
                    customer_id: customer(),
                    points: 5,
                    balance: 5,
                }),
                Some(saga),
            ),
            at(
                4,
                DomainEvent::WalletDebited(WalletMovedV1 {
                    customer_id: customer(),
                    points: 5,
                    balance: 0,
                }),
                Some(saga),
            ),
        ];
        let once = fold_all(&events);
        let mut twice = once.clone();
        for event in events.iter().rev() {
            twice.fold(event);
        }
        assert_eq!(twice.changed(), once.changed());
        assert_eq!(twice.wallet("player-1").map(|w| w.balance), Some(0));
        // What was stored and is applied again is not written again.
        let (rows, wallets) = once.changed();
        let mut again = Working::new(rows, wallets);
        for event in &events {
            again.fold(event);
        }
        assert_eq!(again.changed(), (Vec::new(), Vec::new()));
    }

    #[test]
    fn a_gift_exchange_holds_the_voucher_and_its_notification_moves_only_forward() {
        let saga = SagaId::new();
        let gift = GiftId::new();
        let issued = at(
            1,
            DomainEvent::GiftIssued(GiftIssuedV1 {
                gift_id: gift,
                gift_name: "Dragon mug".into(),
                customer_id: customer(),
                voucher_code: "ABCD-EFGH-JKMN-PQRS".into(),
                price_points: 40,
            }),
            Some(saga),
        );
        let finished = at(
            2,
            DomainEvent::SagaFinished(SagaFinishedV1 {
                saga_id: saga,
                saga_type: GIFT_EXCHANGE.into(),
                state: "completed".into(),
            }),
            Some(saga),
        );
        let queued = same_in_every_order(&[issued.clone(), finished.clone()]);
        let row = queued.row(&RowKey::gift(saga.0)).expect("row");
        assert_eq!(row.gift_id, Some(gift.0));
        assert_eq!(row.gift_name.as_deref(), Some("Dragon mug"));
        assert_eq!(row.voucher_code.as_deref(), Some("ABCD-EFGH-JKMN-PQRS"));
        assert_eq!(row.notification_status.as_deref(), Some("queued"));
        assert_eq!(row.exchange_state.as_deref(), Some("completed"));

        let sent = at(
            3,
            DomainEvent::NotificationSent(NotificationEventV1 {
                notification_id: NotificationId::new(),
                customer_id: customer(),
                mission_id: None,
                telegram_message_id: Some(9),
                error_code: None,
            }),
            Some(saga),
        );
        let delivered = same_in_every_order(&[issued, finished, sent]);
        let row = delivered.row(&RowKey::gift(saga.0)).expect("row");
        assert_eq!(row.notification_status.as_deref(), Some("sent"));
        assert_eq!(row.telegram_message_id, Some(9));
    }

    #[test]
    fn events_of_no_row_change_nothing_and_long_texts_are_cut() {
        let mut working = Working::default();
        working.fold(&at(
            1,
            DomainEvent::SagaFinished(SagaFinishedV1 {
                saga_id: SagaId::new(),
                saga_type: "mission_reward".into(),
                state: "completed".into(),
            }),
            None,
        ));
        working.fold(&at(
            2,
            DomainEvent::GiftIssued(GiftIssuedV1 {
                gift_id: GiftId::new(),
                gift_name: "x".into(),
                customer_id: customer(),
                voucher_code: "v".into(),
                price_points: 1,
            }),
            None,
        ));
        assert_eq!(working.changed(), (Vec::new(), Vec::new()));
        let mission = MissionId::new();
        working.fold(&at(
            3,
            mission_updated(mission, &"Z".repeat(100), None),
            None,
        ));
        let row = working.row(&RowKey::mission(mission.0)).expect("row");
        assert_eq!(
            row.mission_status.as_deref().map(str::len),
            Some(STATUS_LEN)
        );
    }

    #[test]
    fn versions_sort_by_time_then_id() {
        let early = at(1, mission_updated(MissionId::new(), "OPEN", None), None);
        let late = at(2, mission_updated(MissionId::new(), "OPEN", None), None);
        assert!(Version::of(&early) < Version::of(&late));
        assert_eq!(Version::of(&early), Version::of(&early.clone()));
    }
}
