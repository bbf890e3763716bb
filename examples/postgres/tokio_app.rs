//! The example shop (same API as app.py) on tokio-postgres: three connections opened at start-up and
//! shared as a pool, prepared statements and binary results. A deliberately tiny HTTP/1.1 server (one
//! request per connection) keeps the example free of a web framework.
//!
//! Environment: PGHOST, PGPORT, PGUSER, PGDATABASE, APP_PORT; APP_VARIANT=changed charges a surcharge.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

struct Pool {
    clients: Vec<Mutex<Client>>,
    next: AtomicUsize,
}

impl Pool {
    /// A free connection if there is one, else the next in turn.
    async fn get(&self) -> tokio::sync::MutexGuard<'_, Client> {
        for c in &self.clients {
            if let Ok(g) = c.try_lock() {
                return g;
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].lock().await
    }
}

type Reply = Result<(u16, Value), tokio_postgres::Error>;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn total(price: &str, qty: i32) -> String {
    let cents = (price.parse::<f64>().unwrap_or(0.0) * 100.0).round() as i64 * i64::from(qty);
    let cents = if env("APP_VARIANT", "") == "changed" { (cents as f64 * 1.1).round() as i64 } else { cents };
    format!("{}.{:02}", cents / 100, cents % 100)
}

async fn create(pool: &Pool, body: &Value) -> Reply {
    let name = body["name"].as_str().unwrap_or("").to_string();
    let price = match &body["price"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let tags: Vec<String> = body["tags"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let meta = body.get("meta").cloned().unwrap_or(json!({})).to_string();
    let c = pool.get().await;
    let r = c
        .query_one(
            "INSERT INTO items (name, price, tags, meta) VALUES ($1, $2::text::numeric, $3, $4::text::jsonb) \
             RETURNING id, name, price::text",
            &[&name, &price, &tags, &meta],
        )
        .await;
    match r {
        Ok(row) => Ok((
            201,
            json!({"id": row.get::<_, i64>(0), "name": row.get::<_, String>(1), "price": row.get::<_, String>(2)}),
        )),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            Ok((409, json!({"error": "duplicate", "name": name})))
        }
        Err(e) => Err(e),
    }
}

async fn get(pool: &Pool, id: i64) -> Reply {
    let c = pool.get().await;
    let rows = c
        .query(
            "SELECT id, name, price::text, stock, weight, active, tags, meta::text, uid::text, created::text \
             FROM items WHERE id = $1",
            &[&id],
        )
        .await?;
    let Some(r) = rows.first() else { return Ok((404, json!({"error": "not found", "id": id}))) };
    let meta: Value = serde_json::from_str(&r.get::<_, String>(7)).unwrap_or(Value::Null);
    Ok((
        200,
        json!({
            "id": r.get::<_, i64>(0), "name": r.get::<_, String>(1), "price": r.get::<_, String>(2),
            "stock": r.get::<_, i32>(3), "weight": r.get::<_, f64>(4), "active": r.get::<_, bool>(5),
            "tags": r.get::<_, Vec<String>>(6), "meta": meta, "uid": r.get::<_, String>(8),
            "created": r.get::<_, String>(9),
        }),
    ))
}

async fn buy(pool: &Pool, id: i64, qty: i32) -> Reply {
    let mut c = pool.get().await;
    let tx = c.transaction().await?;
    let row = tx.query_one("SELECT price::text, stock FROM items WHERE id = $1 FOR UPDATE", &[&id]).await?;
    let (price, stock): (String, i32) = (row.get(0), row.get(1));
    if stock < qty {
        tx.rollback().await?;
        return Ok((409, json!({"error": "out of stock", "id": id})));
    }
    tx.execute("UPDATE items SET stock = stock - $1 WHERE id = $2", &[&qty, &id]).await?;
    let order: i64 =
        tx.query_one("INSERT INTO orders (item_id, qty) VALUES ($1, $2) RETURNING id", &[&id, &qty]).await?.get(0);
    tx.commit().await?;
    Ok((200, json!({"order_id": order, "stock_left": stock - qty, "total": total(&price, qty)})))
}

async fn list(pool: &Pool, min_price: &str) -> Reply {
    let c = pool.get().await;
    let rows = c
        .query("SELECT id, name, price::text FROM items WHERE price >= $1::text::numeric ORDER BY id", &[&min_price])
        .await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| json!({"id": r.get::<_, i64>(0), "name": r.get::<_, String>(1), "price": r.get::<_, String>(2)}))
        .collect();
    Ok((200, json!({ "items": items })))
}

async fn route(pool: &Pool, method: &str, target: &str, body: &[u8]) -> Reply {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["health"]) => Ok((200, json!({"status": "ok", "driver": "tokio-postgres"}))),
        ("POST", ["items"]) => create(pool, &body).await,
        ("GET", ["items"]) => {
            let min = query.split('&').find_map(|kv| kv.strip_prefix("min_price=")).unwrap_or("0");
            list(pool, min).await
        }
        ("GET", ["items", id]) => match id.parse() {
            Ok(id) => get(pool, id).await,
            Err(_) => Ok((404, json!({"error": "no route"}))),
        },
        ("POST", ["items", id, "buy"]) => match id.parse() {
            Ok(id) => buy(pool, id, body["qty"].as_i64().unwrap_or(1) as i32).await,
            Err(_) => Ok((404, json!({"error": "no route"}))),
        },
        _ => Ok((404, json!({"error": "no route"}))),
    }
}

async fn handle(mut conn: TcpStream, pool: Arc<Pool>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (method, target) = (first.next().unwrap_or("").to_string(), first.next().unwrap_or("/").to_string());
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..(head_end + length).min(buf.len())];
    let (status, out) = match route(&pool, &method, &target, body).await {
        Ok(r) => r,
        Err(e) => (500, json!({"error": e.to_string()})),
    };
    let text = out.to_string();
    let reason = match status {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Internal Server Error",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    conn.write_all(resp.as_bytes()).await?;
    conn.shutdown().await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = format!(
        "host={} port={} user={} dbname={}",
        env("PGHOST", "127.0.0.1"),
        env("PGPORT", "5432"),
        env("PGUSER", "postgres"),
        env("PGDATABASE", "test")
    );
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (client, connection) = tokio_postgres::connect(&config, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("connection error: {e}");
            }
        });
        clients.push(Mutex::new(client));
    }
    let pool = Arc::new(Pool { clients, next: AtomicUsize::new(0) });
    let listener = TcpListener::bind(("127.0.0.1", env("APP_PORT", "8080").parse::<u16>()?)).await?;
    loop {
        let (conn, _) = listener.accept().await?;
        tokio::spawn(handle(conn, pool.clone()));
    }
}
