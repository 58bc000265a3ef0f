//! The `switchboard` command: `serve` (default), `migrate`, `health`, `token`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::auth::Authority;
use switchboard::{startup, Application, Settings};

// Many small allocations freed on other threads, with large ones in between: glibc's malloc
// spends much of its time consolidating free lists there, jemalloc does not.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Switchboard: a real-time messaging broker.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (default: SWITCHBOARD_CONFIG, or ./config.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Ask the running broker's /health (on the configured host and port); exit 0 if it
    /// answers 200 within 2 s (the container's HEALTHCHECK).
    Health,
    /// Print an access token for USER, signed with the configured secret.
    Token {
        /// The user id (the token's `sub`).
        user: String,
        /// Grant the admin role.
        #[arg(long)]
        admin: bool,
        /// Lifetime, e.g. 15m, 2h, 7days.
        #[arg(long, default_value = "15m")]
        ttl: humantime::Duration,
        /// Device kind claim (web, desktop, mobile, extension, cli, server).
        #[arg(long)]
        device: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(2);
        }
    };
    switchboard::logging::init(&settings.log);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings),
        Command::Migrate => startup::migrate(&settings).map_err(|e| e.to_string()),
        Command::Health => health(&settings),
        Command::Token {
            user,
            admin,
            ttl,
            device,
        } => token(&settings, &user, admin, ttl.into(), device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: Settings) -> Result<(), String> {
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings.clone())
            .await
            .map_err(|e| e.to_string())?;
        // The database threads have started and the WebSocket workers have not: the
        // workers inherit this thread's class (`startup::enter_batch_scheduling`).
        if settings.server.batch_scheduling {
            if let Err(e) = startup::enter_batch_scheduling() {
                log::warn!("threads stay in the default scheduling class: {e}");
            }
        }
        log::info!(
            "switchboard listening on {}:{} (database {})",
            settings.server.host,
            app.port(),
            settings.database_url()
        );
        if settings.auth.jwt_secret.is_empty() {
            log::info!(
                "mint a token with: cargo run -- token alice   (add --admin for the admin API)"
            );
        }
        app.run_until_stopped().await.map_err(|e| e.to_string())?;
        log::info!("stopped cleanly");
        Ok(())
    })
}

/// `GET /health` over a plain TCP connection to the configured address.
/// A plain or TLS stream to the broker.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

fn health(settings: &Settings) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    let wait = std::time::Duration::from_secs(2);
    let ip = match settings.server.host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() && ip.is_ipv6() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Ok(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Ok(ip) => ip,
        Err(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let addr = SocketAddr::new(ip, settings.server.port);
    let tcp = TcpStream::connect_timeout(&addr, wait).map_err(|e| format!("{addr}: {e}"))?;
    tcp.set_read_timeout(Some(wait))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(wait))
        .map_err(|e| e.to_string())?;
    // A broker that serves TLS itself is asked over TLS, trusting its own certificate.
    let mut conn: Box<dyn ReadWrite> = if settings.server.tls_cert_file.is_empty() {
        Box::new(tcp)
    } else {
        let config = switchboard::tls::pinned_client_config(&settings.server.tls_cert_file)?;
        let name = rustls_pki_types::ServerName::from(ip);
        let client = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
            .map_err(|e| format!("{addr}: {e}"))?;
        Box::new(rustls::StreamOwned::new(client, tcp))
    };
    write!(
        conn,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head)
        .map_err(|e| format!("{addr}: no answer: {e}"))?;
    if head.starts_with(b"HTTP/1.1 200") {
        println!("ok");
        Ok(())
    } else {
        Err(format!(
            "{addr}: /health answered {}",
            String::from_utf8_lossy(&head)
        ))
    }
}

fn token(
    settings: &Settings,
    user: &str,
    admin: bool,
    ttl: std::time::Duration,
    device: Option<String>,
) -> Result<(), String> {
    if !switchboard_actors::ids::valid_id(user) {
        return Err(format!(
            "`{user}` is not a valid user id ([A-Za-z0-9_.@-], 1-128 chars)"
        ));
    }
    if let Some(d) = &device {
        if !switchboard::auth::DEVICES.contains(&d.as_str()) {
            return Err(format!(
                "--device must be one of {}",
                switchboard::auth::DEVICES.join(", ")
            ));
        }
    }
    let auth = Authority::from_settings(settings).map_err(|e| e.to_string())?;
    let roles = if admin {
        vec!["admin".to_owned()]
    } else {
        Vec::new()
    };
    let minted = auth
        .mint(user, roles, ttl, device, false)
        .map_err(|e| e.to_string())?;
    println!("{}", minted.token);
    Ok(())
}
