//! Every SQL statement of the gift context: the catalogue and the reservations of the
//! `gift_exchange` saga, typed rows in and out. A reservation is unique per saga; the stock only
//! moves together with a reservation's status, in one transaction.

use chrono::{DateTime, Utc};
use contracts::{CustomerId, GiftId, SagaId};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

/// A gift of the catalogue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Gift {
    /// Its id.
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// Its name (1 to 200 characters).
    pub name: String,
    /// What it costs, in points (1 to 1,000,000).
    pub price_points: i64,
    /// How many are left to exchange.
    pub stock: i64,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// When it last changed (a restock, a reprice, an exchange).
    pub updated_at: DateTime<Utc>,
}

/// A saga's reservation of one gift.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Reservation {
    /// The saga (one reservation each).
    pub saga_id: Uuid,
    /// The gift taken from the stock.
    pub gift_id: Uuid,
    /// Who takes it.
    pub customer_id: String,
    /// The gift's name when it was reserved.
    pub gift_name: String,
    /// Its price when it was reserved.
    pub price_points: i64,
    /// `reserved`, `released` or `issued`.
    pub status: String,
    /// The voucher, once issued.
    pub voucher_code: Option<String>,
}

/// A change to a gift; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GiftChange<'a> {
    /// A new name.
    pub name: Option<&'a str>,
    /// A new price.
    pub price_points: Option<i64>,
    /// A new stock.
    pub stock: Option<i64>,
}

/// The columns of a [`Gift`], for `SELECT` and `RETURNING`.
macro_rules! gift_columns {
    () => {
        "id, name, price_points, stock, created_at, updated_at"
    };
}

/// The columns of a [`Reservation`].
macro_rules! reservation_columns {
    () => {
        "saga_id, gift_id, customer_id, gift_name, price_points, status, voucher_code"
    };
}

/// Adds a gift to the catalogue.
pub async fn insert_gift(
    pool: &PgPool,
    name: &str,
    price_points: i64,
    stock: i64,
) -> Result<Gift, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO gifts (id, name, price_points, stock) VALUES ($1, $2, $3, $4) RETURNING ",
        gift_columns!()
    ))
    .bind(GiftId::new().0)
    .bind(name)
    .bind(price_points)
    .bind(stock)
    .fetch_one(pool)
    .await
}

/// One gift.
pub async fn gift(pool: &PgPool, id: GiftId) -> Result<Option<Gift>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        gift_columns!(),
        " FROM gifts WHERE id = $1"
    ))
    .bind(id.0)
    .fetch_optional(pool)
    .await
}

/// Whether a gift exists.
pub async fn exists(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM gifts WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// Up to `limit` gifts in the order they were added (their time-ordered ids), after the gift
/// `after` when given: one page of a keyset-paged list.
pub async fn gifts(
    pool: &PgPool,
    after: Option<GiftId>,
    limit: i64,
) -> Result<Vec<Gift>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        gift_columns!(),
        " FROM gifts WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
    ))
    .bind(after.map(|a| a.0))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Renames, reprices or restocks a gift; `None` when there is no such gift.
pub async fn update_gift(
    pool: &PgPool,
    id: GiftId,
    change: &GiftChange<'_>,
) -> Result<Option<Gift>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE gifts SET name = COALESCE($2, name), price_points = COALESCE($3, price_points), \
         stock = COALESCE($4, stock), updated_at = now() WHERE id = $1 RETURNING ",
        gift_columns!()
    ))
    .bind(id.0)
    .bind(change.name)
    .bind(change.price_points)
    .bind(change.stock)
    .fetch_optional(pool)
    .await
}

/// The saga's reservation, locked for the rest of the transaction.
pub async fn reservation(
    conn: &mut PgConnection,
    saga: SagaId,
) -> Result<Option<Reservation>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        reservation_columns!(),
        " FROM reservations WHERE saga_id = $1 FOR UPDATE"
    ))
    .bind(saga.0)
    .fetch_optional(conn)
    .await
}

/// Takes one gift from the stock: its name and price, or `None` when none is left (or there is
/// no such gift). One statement, so that concurrent reservations never take more than there is.
pub async fn take_one(
    conn: &mut PgConnection,
    gift: GiftId,
) -> Result<Option<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE gifts SET stock = stock - 1, updated_at = now() \
         WHERE id = $1 AND stock > 0 RETURNING name, price_points",
    )
    .bind(gift.0)
    .fetch_optional(conn)
    .await
}

/// Whether a gift exists, inside the caller's transaction.
pub async fn gift_exists(conn: &mut PgConnection, gift: GiftId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM gifts WHERE id = $1)")
        .bind(gift.0)
        .fetch_one(conn)
        .await
}

/// Records the saga's reservation, after [`take_one`] took the gift. A second reservation of
/// the same saga fails on the key (and its transaction rolls the stock back).
pub async fn insert_reservation(
    conn: &mut PgConnection,
    saga: SagaId,
    gift: GiftId,
    customer: &CustomerId,
    gift_name: &str,
    price_points: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO reservations (saga_id, gift_id, customer_id, gift_name, price_points, status) \
         VALUES ($1, $2, $3, $4, $5, 'reserved')",
    )
    .bind(saga.0)
    .bind(gift.0)
    .bind(customer.as_str())
    .bind(gift_name)
    .bind(price_points)
    .execute(conn)
    .await?;
    Ok(())
}

/// Releases the saga's (locked, `reserved`) reservation and gives its gift back to the stock.
pub async fn release(
    conn: &mut PgConnection,
    reservation: &Reservation,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE reservations SET status = 'released', released_at = now() WHERE saga_id = $1",
    )
    .bind(reservation.saga_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE gifts SET stock = stock + 1, updated_at = now() WHERE id = $1")
        .bind(reservation.gift_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Issues the saga's (locked, `reserved`) reservation with `voucher_code`.
pub async fn issue(
    conn: &mut PgConnection,
    saga: SagaId,
    voucher_code: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE reservations SET status = 'issued', voucher_code = $2, issued_at = now() \
         WHERE saga_id = $1",
    )
    .bind(saga.0)
    .bind(voucher_code)
    .execute(conn)
    .await?;
    Ok(())
}
