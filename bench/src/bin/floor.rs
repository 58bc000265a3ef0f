//! The floor: the bare actix-web-actors broadcast server that Switchboard is measured against
//! (issue 3). No auth, no envelope, no storage: one `Room` actor, one `Session` actor per
//! connection, and every text frame a session receives is sent as is to every other session
//! of its room with `do_send` — the naive, idiomatic shape of the actix chat example.
//!
//! `GET /ws` upgrades. Everyone is in one room, except that `?room=NAME` puts a connection in
//! room NAME instead (the `pairs` scenario uses one room per pair). The frame bytes are shared
//! between recipients (`ByteString` clones are reference counts), as any broadcast server
//! written today would do.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use bytestring::ByteString;
use clap::Parser;

/// How often a session pings its client.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// A client silent for this long is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// Command line of the floor server.
#[derive(Parser)]
#[command(about = "Bare actix-web-actors broadcast server (the benchmark floor)")]
struct Args {
    /// Address to listen on (loopback only is sensible).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8090)]
    port: u16,
    /// HTTP worker threads (the broker's benchmarks use 1).
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

/// A frame for one session to write.
#[derive(Message)]
#[rtype(result = "()")]
struct Text(ByteString);

/// A session arrives in a room; answered with its id.
#[derive(Message)]
#[rtype(result = "usize")]
struct Join {
    room: String,
    addr: Recipient<Text>,
}

/// A session leaves.
#[derive(Message)]
#[rtype(result = "()")]
struct Leave {
    room: String,
    id: usize,
}

/// A session received `text`: send it to everyone else in its room.
#[derive(Message)]
#[rtype(result = "()")]
struct Broadcast {
    room: String,
    from: usize,
    text: ByteString,
}

/// The room actor: who is connected, by room.
#[derive(Default)]
struct Room {
    rooms: HashMap<String, HashMap<usize, Recipient<Text>>>,
    next_id: usize,
}

impl Actor for Room {
    type Context = Context<Self>;
}

impl Handler<Join> for Room {
    type Result = usize;
    fn handle(&mut self, msg: Join, _: &mut Context<Self>) -> usize {
        self.next_id += 1;
        self.rooms
            .entry(msg.room)
            .or_default()
            .insert(self.next_id, msg.addr);
        self.next_id
    }
}

impl Handler<Leave> for Room {
    type Result = ();
    fn handle(&mut self, msg: Leave, _: &mut Context<Self>) {
        if let Some(members) = self.rooms.get_mut(&msg.room) {
            members.remove(&msg.id);
            if members.is_empty() {
                self.rooms.remove(&msg.room);
            }
        }
    }
}

impl Handler<Broadcast> for Room {
    type Result = ();
    fn handle(&mut self, msg: Broadcast, _: &mut Context<Self>) {
        if let Some(members) = self.rooms.get(&msg.room) {
            for (id, addr) in members {
                if *id != msg.from {
                    addr.do_send(Text(msg.text.clone()));
                }
            }
        }
    }
}

/// One WebSocket connection.
struct Session {
    id: usize,
    room: String,
    heard: Instant,
    server: Addr<Room>,
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if act.heard.elapsed() > CLIENT_TIMEOUT {
                ctx.stop();
            } else {
                ctx.ping(b"");
            }
        });
        let join = Join {
            room: self.room.clone(),
            addr: ctx.address().recipient(),
        };
        self.server
            .send(join)
            .into_actor(self)
            .then(|res, act, ctx| {
                match res {
                    Ok(id) => act.id = id,
                    Err(_) => ctx.stop(),
                }
                fut::ready(())
            })
            .wait(ctx);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.server.do_send(Leave {
            room: self.room.clone(),
            id: self.id,
        });
        Running::Stop
    }
}

impl Handler<Text> for Session {
    type Result = ();
    fn handle(&mut self, msg: Text, ctx: &mut Self::Context) {
        ctx.text(msg.0);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let Ok(msg) = msg else {
            ctx.stop();
            return;
        };
        self.heard = Instant::now();
        match msg {
            ws::Message::Text(text) => self.server.do_send(Broadcast {
                room: self.room.clone(),
                from: self.id,
                text,
            }),
            ws::Message::Ping(p) => ctx.pong(&p),
            ws::Message::Pong(_) | ws::Message::Binary(_) | ws::Message::Nop => {}
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
            ws::Message::Continuation(_) => ctx.stop(),
        }
    }
}

/// The room named by `?room=NAME`, or the common one.
fn room_of(query: &str) -> String {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("room="))
        .unwrap_or("")
        .to_owned()
}

async fn ws_route(
    req: HttpRequest,
    stream: web::Payload,
    room: web::Data<Addr<Room>>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = Session {
        id: 0,
        room: room_of(req.query_string()),
        heard: Instant::now(),
        server: room.get_ref().clone(),
    };
    ws::start(session, &req, stream)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let room = Room::default().start();
    eprintln!(
        "floor listening on {}:{} ({} worker(s))",
        args.host, args.port, args.workers
    );
    HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(room.clone()))
            .route("/ws", web::get().to(ws_route))
    })
    .workers(args.workers)
    .backlog(4096)
    .max_connections(100_000)
    .bind((args.host.as_str(), args.port))?
    .run()
    .await
}
