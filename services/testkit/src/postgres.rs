//! A PostgreSQL database per test, cloned from a template migrated once per schema
//! version; and a private PostgreSQL server for tests that stop one.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio_postgres::NoTls;
use yoink_core::db;

use crate::{free_port, postgres_server_url, unique_name};

/// Arbitrary advisory lock key guarding template creation across test processes.
const TEMPLATE_LOCK: i64 = 0x5949_4e4b_5450_4c00;

/// `base` with its database replaced by `name`.
use yoink_core::db::with_database;

async fn admin_client(server_url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&with_database(server_url, "postgres"), NoTls)
            .await
            .expect("tests need PostgreSQL: is it running? (.ci/run starts it)");
    tokio::spawn(connection);
    client
}

/// Creates the migrated template for the current schema unless it exists.
async fn ensure_template(server_url: &str) -> String {
    let template = format!("yoink_tpl_{:016x}", db::schema_fingerprint());
    let admin = admin_client(server_url).await;
    admin
        .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK])
        .await
        .expect("advisory lock");
    let ready = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate",
            &[&template],
        )
        .await
        .expect("query pg_database")
        .is_some();
    if !ready {
        // A half-made template from a crashed run is dropped and made again.
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{template}\" WITH (FORCE)"
            ))
            .await
            .expect("drop stale template");
        let url = with_database(server_url, &template);
        db::ensure_database(&url).await.expect("create template");
        let pool = db::pool(&url, 1).expect("template pool");
        db::migrate(&pool).await.expect("migrate template");
        pool.close();
        drop(pool);
        admin
            .batch_execute(&format!(
                "ALTER DATABASE \"{template}\" WITH IS_TEMPLATE true"
            ))
            .await
            .expect("mark template");
        // Templates of older schemas are dead weight; one still in use stays (no FORCE).
        let stale = admin
            .query(
                r"SELECT datname FROM pg_database
                  WHERE datname LIKE 'yoink\_tpl\_%' AND datname <> $1",
                &[&template],
            )
            .await
            .expect("list templates");
        for row in stale {
            let name: String = row.get(0);
            // Two statements: DROP DATABASE cannot share an (implicit) transaction.
            let unmarked = admin
                .batch_execute(&format!("ALTER DATABASE \"{name}\" WITH IS_TEMPLATE false"))
                .await;
            if unmarked.is_ok() {
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
                    .await;
            }
        }
    }
    admin
        .execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK])
        .await
        .expect("advisory unlock");
    template
}

/// A database of its own for one test, migrated, dropped when the value is dropped.
pub struct TestDb {
    pub url: String,
    pub name: String,
    server_url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::on_server(&postgres_server_url()).await
    }

    /// A database on another server (a `PrivatePostgres`).
    pub async fn on_server(server_url: &str) -> Self {
        let template = ensure_template(server_url).await;
        let name = unique_name("yoink_test");
        let admin = admin_client(server_url).await;
        let create = format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"");
        let mut attempts = 0;
        // The template may still be held for a moment by the connection that migrated it.
        while let Err(err) = admin.batch_execute(&create).await {
            attempts += 1;
            assert!(attempts < 50, "cannot clone the template: {err}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            url: with_database(server_url, &name),
            name,
            server_url: server_url.to_owned(),
        }
    }

    /// A fresh pool on this database.
    pub fn pool(&self) -> deadpool_postgres::Pool {
        db::pool(&self.url, 4).expect("test pool")
    }

    /// Runs a query expecting one bigint (`SELECT count(*) ...`).
    pub async fn scalar(&self, sql: &str) -> i64 {
        let pool = self.pool();
        let client = pool.get().await.expect("test db connection");
        client.query_one(sql, &[]).await.expect(sql).get(0)
    }

    /// Makes PostgreSQL refuse every order (confirmed fate) of the buyer `refused`
    /// with a check violation, a permanent error as a broken row would give; the
    /// buyer's release is still recorded.
    pub async fn refuse_orders_of_buyer_refused(&self) {
        let pool = self.pool();
        let client = pool.get().await.expect("test db connection");
        client
            .batch_execute(
                "CREATE FUNCTION refuse_user() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     IF NEW.user_id = 'refused' AND NEW.fate = 'confirmed' THEN
                         RAISE EXCEPTION 'no orders for this buyer' USING ERRCODE = 'check_violation';
                     END IF;
                     RETURN NEW;
                 END $$;
                 CREATE TRIGGER refuse_user BEFORE INSERT ON reservation_fates
                     FOR EACH ROW EXECUTE FUNCTION refuse_user();",
            )
            .await
            .expect("the refusing trigger");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        // Drop runs outside async; a short-lived runtime on its own thread does the DROP.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let url = with_database(&server_url, "postgres");
                if let Ok((client, connection)) = tokio_postgres::connect(&url, NoTls).await {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A PostgreSQL server of the test's own (initdb into a temp dir), for tests that stop
/// and restart PostgreSQL. Runs as the `postgres` user when the tests run as root.
pub struct PrivatePostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

fn pg_bin() -> PathBuf {
    let root = PathBuf::from("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .expect("PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
}

fn as_postgres_user(bin: &std::path::Path, tool: &str) -> Command {
    let is_root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
    if is_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        cmd
    } else {
        Command::new(bin.join(tool))
    }
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("yoink-pg-")
            .tempdir()
            .expect("temp dir");
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let bin = pg_bin();
        let status = as_postgres_user(&bin, "initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        let pg = Self {
            port: free_port(),
            dir,
            bin,
        };
        pg.start_again().await;
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn start_again(&self) {
        let status = as_postgres_user(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .args(["-l"])
            .arg(self.dir.path().join("log"))
            .args(["-w", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl start");
        assert!(status.success(), "pg_ctl start failed");
    }

    /// Stops the server at once (in-flight transactions are rolled back).
    pub fn stop(&self) {
        let _ = as_postgres_user(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
