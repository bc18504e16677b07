//! Test harness: one real PostgreSQL per test binary with demo tenants, and a proxy per test
//! bound to port 0 in the test's own runtime.
//!
//! Tenants: `acme` and `globex` (demo data, `customers` and `invoices`) and `solo`, all with
//! a client login `app`. Each test chooses pool sizes and modes through [`ProxyOptions`].

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pgtenant::config::Config;
use pgtenant::config::file::{
    BackendSection, ConfigFile, PoolMode, ProxySection, TenantSection, TenantSource, TlsMode,
    UserSection,
};
use pgtenant::control::demo::{self, DemoTenant};
use pgtenant::embedded::{Cluster, ClusterOptions};
use pgtenant::server::{Server, ServerHandle};
use tokio_postgres::{Client, NoTls};

pub mod wire;

/// The shared PostgreSQL and its tenants.
pub struct Fleet {
    /// The server.
    pub cluster: Cluster,
    /// Demo tenants.
    pub tenants: Vec<DemoTenant>,
    /// Self-signed certificate for `localhost` and `<tenant>.localhost`.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    _cert_dir: tempfile::TempDir,
}

static FLEET: OnceLock<Fleet> = OnceLock::new();

/// Tenant names every test binary gets.
pub const TENANTS: &[&str] = &["acme", "globex", "solo"];

/// The fleet, started on first use.
pub fn fleet() -> &'static Fleet {
    FLEET.get_or_init(|| {
        std::thread::spawn(start_fleet)
            .join()
            .expect("fleet start thread")
    })
}

fn start_fleet() -> Fleet {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGTENANT_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();

    let cluster = Cluster::start(ClusterOptions::default()).expect("start PostgreSQL");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tenants = runtime
        .block_on(demo::provision(&cluster, TENANTS))
        .expect("provision demo tenants");

    let dir = tempfile::tempdir().expect("cert dir");
    let names = [
        "localhost",
        "acme.localhost",
        "globex.localhost",
        "solo.localhost",
    ];
    let (cert, key) = pgtenant::tls::write_self_signed(dir.path(), &names).expect("cert");
    Fleet {
        cluster,
        tenants,
        cert,
        key,
        _cert_dir: dir,
    }
}

impl Fleet {
    /// A demo tenant by name.
    pub fn tenant(&self, name: &str) -> &DemoTenant {
        self.tenants
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no demo tenant {name}"))
    }

    /// A superuser connection straight to PostgreSQL.
    pub async fn superuser(&self) -> Client {
        self.cluster.connect_superuser().await.expect("superuser")
    }
}

/// A change to the generated configuration file, for tests that need more than the options.
pub type ConfigEdit = Arc<dyn Fn(&mut ConfigFile) + Send + Sync>;

/// How a test wants its proxy.
#[derive(Clone)]
pub struct ProxyOptions {
    /// TLS mode.
    pub tls: TlsMode,
    /// Pool size for every tenant.
    pub pool_size: usize,
    /// Pool mode for every tenant.
    pub pool_mode: PoolMode,
    /// Tenant naming order.
    pub tenant_from: Vec<TenantSource>,
    /// Queue timeout.
    pub query_wait_timeout: Duration,
    /// Drain timeout.
    pub shutdown_timeout: Duration,
    /// Tenants beyond the fleet's, provisioned by the test.
    pub extra_tenants: Vec<DemoTenant>,
    /// Applied to the file last.
    pub edit: Option<ConfigEdit>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            tls: TlsMode::Preferred,
            pool_size: 2,
            pool_mode: PoolMode::Transaction,
            tenant_from: vec![
                TenantSource::Database,
                TenantSource::Sni,
                TenantSource::Options,
            ],
            query_wait_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            extra_tenants: Vec::new(),
            edit: None,
        }
    }
}

impl ProxyOptions {
    /// Pool size 1: two clients always share one backend.
    pub fn one_backend() -> Self {
        Self {
            pool_size: 1,
            ..Self::default()
        }
    }

    /// The runtime configuration these options describe.
    pub fn config(&self) -> Config {
        Config::from_parsed(self.file(), Path::new("/")).expect("valid test config")
    }

    /// The configuration file these options describe.
    pub fn file(&self) -> ConfigFile {
        let fleet = fleet();
        let tenants = fleet
            .tenants
            .iter()
            .chain(&self.extra_tenants)
            .map(|t| TenantSection {
                name: t.name.clone(),
                schema: None,
                role: None,
                role_password: Some(t.role_password.clone()),
                pool_mode: self.pool_mode,
                pool_size: Some(self.pool_size),
                tier: None,
                transactions_per_second: None,
                burst: None,
                max_client_connections: None,
                suspended: false,
                users: vec![UserSection {
                    name: t.user.clone(),
                    verifier: t.user_verifier.clone(),
                }],
                generation: 0,
            })
            .collect();

        let mut file = ConfigFile {
            proxy: ProxySection {
                listen: "127.0.0.1:0".into(),
                tls: self.tls,
                tls_cert: Some(fleet.cert.clone()),
                tls_key: Some(fleet.key.clone()),
                tenant_from: self.tenant_from.clone(),
                query_wait_timeout: self.query_wait_timeout,
                shutdown_timeout: self.shutdown_timeout,
                ..ProxySection::default()
            },
            backend: BackendSection {
                host: fleet.cluster.host().into(),
                port: fleet.cluster.port(),
                database: "postgres".into(),
                ..BackendSection::default()
            },
            tenants,
            ..ConfigFile::default()
        };
        if let Some(edit) = &self.edit {
            edit(&mut file);
        }
        file
    }
}

/// A configuration file for a proxy whose tenants come from the catalog in the fleet's
/// `postgres` database, logging in to it as the fleet's superuser.
pub fn catalog_file() -> ConfigFile {
    let fleet = fleet();
    ConfigFile {
        catalog: Some(pgtenant::config::CatalogSettings {
            user: fleet.cluster.superuser().into(),
            password: Some(fleet.cluster.superuser_password().into()),
            reload_interval: Duration::from_secs(30),
        }),
        tenants: Vec::new(),
        ..ProxyOptions::default().file()
    }
}

/// A tenant provisioned in PostgreSQL and recorded in the catalog, with login `app`.
pub struct CatalogTenant {
    /// Tenant, schema and role name.
    pub name: String,
    /// The `app` login's password.
    pub password: String,
}

/// Creates the role and schema of `name`, then its catalog rows in one transaction.
pub async fn catalog_tenant(admin: &mut Client, name: &str) -> CatalogTenant {
    let role_password = pgtenant::control::demo::random_secret(20);
    let spec = pgtenant::control::provision::TenantSpec {
        name,
        schema: name,
        role: name,
        role_password: &role_password,
        database: "postgres",
        connection_limit: 10,
    };
    pgtenant::control::provision::create_tenant(admin, &spec)
        .await
        .unwrap();
    pgtenant::tenant::catalog::install(admin).await.unwrap();

    let password = pgtenant::control::demo::random_secret(16);
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let tx = admin.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO pgtenant.tenants (name, schema_name, role_name, pool_size) \
         VALUES ($1, $1, $1, 2)",
        &[&name],
    )
    .await
    .unwrap();
    tx.execute(
        "INSERT INTO pgtenant.role_secrets (tenant, role_password) VALUES ($1, $2)",
        &[&name, &role_password],
    )
    .await
    .unwrap();
    tx.execute(
        "INSERT INTO pgtenant.credentials (tenant, user_name, verifier) VALUES ($1, 'app', $2)",
        &[&name, &verifier],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    CatalogTenant {
        name: name.into(),
        password,
    }
}

/// A proxy serving the catalog of [`catalog_file`], as `pgtenant serve` would.
pub async fn catalog_proxy() -> Proxy {
    let config = Config::from_parsed(catalog_file(), Path::new("/")).expect("valid config");
    Proxy::from_config(config).await
}

/// A proxy running inside the test's runtime.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Reload and shutdown.
    pub handle: ServerHandle,
    /// The server task; finishes after shutdown.
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy with default options.
    pub async fn start() -> Self {
        Self::with(ProxyOptions::default()).await
    }

    /// Starts a proxy with these options.
    pub async fn with(options: ProxyOptions) -> Self {
        Self::from_config(options.config()).await
    }

    /// Starts a proxy with this configuration; with a catalog, its tenants are loaded before
    /// the proxy accepts anyone, as `pgtenant serve` does.
    pub async fn from_config(config: Config) -> Self {
        let with_catalog = config.catalog.is_some();
        let server = Server::bind(config).await.expect("bind proxy");
        let addr = server.local_addr().expect("addr");
        let handle = server.handle();
        if with_catalog {
            pgtenant::tenant::catalog::watch::initial(&handle)
                .await
                .expect("catalog loads");
        }
        let task = tokio::spawn(server.run());
        Self {
            addr,
            handle,
            task: Some(task),
        }
    }

    /// A libpq URL for a tenant's `app` login (plaintext).
    pub fn url(&self, tenant: &str) -> String {
        let t = fleet().tenant(tenant);
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}?sslmode=disable",
            t.user,
            t.user_password,
            self.addr.port(),
            tenant
        )
    }

    /// A tokio-postgres config for a tenant's `app` login.
    pub fn pg_config(&self, tenant: &str) -> tokio_postgres::Config {
        let mut config = self.tls_config(tenant);
        config.host("127.0.0.1");
        config
    }

    /// Like [`Proxy::pg_config`] but without a host, for [`connect_tls`].
    pub fn tls_config(&self, tenant: &str) -> tokio_postgres::Config {
        let t = fleet().tenant(tenant);
        let mut config = tokio_postgres::Config::new();
        config
            .port(self.addr.port())
            .user(&t.user)
            .password(&t.user_password)
            .dbname(tenant)
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// Logs in as acme's `app` with hand-made messages (plus `extra` startup parameters) and
    /// returns the socket at the first `ReadyForQuery`.
    pub async fn raw_login(&self, extra: &[(&str, &str)]) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;

        let tenant = fleet().tenant("acme");
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let mut params = vec![("user", tenant.user.as_str()), ("database", "acme")];
        params.extend_from_slice(extra);
        let packet = wire::startup_packet(3, 0, &params);
        stream.write_all(&packet).await.unwrap();

        let (tag, _) = wire::read_message(&mut stream).await.unwrap();
        assert_eq!(tag, b'R');
        let seen = wire::scram(&mut stream, &tenant.user_password).await;
        assert_eq!(
            seen.last().map(|m| m.0),
            Some(b'Z'),
            "login must reach ReadyForQuery"
        );
        stream
    }

    /// Connects as a tenant's `app` user without TLS.
    pub async fn connect(&self, tenant: &str) -> Client {
        connect_plain(self.pg_config(tenant))
            .await
            .expect("connect")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Connects with NoTls and drives the connection in the background.
pub async fn connect_plain(
    config: tokio_postgres::Config,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A rustls client configuration that trusts the fleet's certificate.
pub fn tls_client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&fleet().cert).expect("cert") {
        roots.add(cert.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Connects over TLS 1.3 (`sslmode=require`), naming `server_name` for SNI. `config` must
/// not name a host yet (not [`Proxy::pg_config`]); use [`Proxy::tls_config`].
pub async fn connect_tls(
    mut config: tokio_postgres::Config,
    server_name: &str,
) -> Result<Client, tokio_postgres::Error> {
    config
        .host(server_name)
        .hostaddr(std::net::IpAddr::from([127, 0, 0, 1]))
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_client_config(&[
        &rustls::version::TLS13,
    ]));
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The login of a printed `DATABASE_URL` (user, password, database), aimed at `port` on
/// loopback; pass it to [`connect_tls`].
pub fn printed_url_config(url: &str, port: u16) -> tokio_postgres::Config {
    let parsed: tokio_postgres::Config = url.parse().unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .user(parsed.get_user().unwrap())
        .password(parsed.get_password().unwrap())
        .dbname(parsed.get_dbname().unwrap())
        .port(port)
        .connect_timeout(Duration::from_secs(10));
    config
}

/// The pid of the backend that serves this client's next statement.
pub async fn backend_pid(client: &Client) -> i32 {
    let messages = client
        .simple_query("SELECT pg_backend_pid()")
        .await
        .unwrap();
    let pid = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    pid.expect("a row").parse().unwrap()
}

/// The SQLSTATE of a failed call, as text.
pub fn sqlstate(error: &tokio_postgres::Error) -> String {
    error
        .code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {error}"))
}

/// Path of the `pgtenant` binary built for these tests.
pub fn pgtenant_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgtenant"))
}

/// Upper bound for anything that should finish quickly; only there to turn a hang into a failure.
pub const HANG: Duration = Duration::from_secs(60);

/// Runs a future under [`HANG`], failing the test if it does not finish.
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {HANG:?}"))
}

/// Polls `check` until it returns true, failing the test after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: still not true after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
