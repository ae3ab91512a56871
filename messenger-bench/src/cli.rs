//! The command line: `messenger-bench SCENARIO --url URL [options]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Open N authenticated connections and hold them; report RSS per connection.
    Idle,
    /// P pairs in direct threads; throughput and send-to-receive latency.
    Pairs,
    /// Groups of size G; throughput and latency per delivered copy.
    Group,
    /// One group of G members (`--group-size`), only K of them online (`--online`), S
    /// senders (`--senders`, default 1): deliveries per second and the latency from a
    /// send to its last online member.
    Biggroup,
    /// K clients dropped at once, reconnecting with jitter and catching up.
    Reconnect,
    /// Run the floor relay (a minimal WebSocket relay with no logic and no storage).
    Floor,
}

impl Scenario {
    /// The name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Pairs => "pairs",
            Scenario::Group => "group",
            Scenario::Biggroup => "biggroup",
            Scenario::Reconnect => "reconnect",
            Scenario::Floor => "floor",
        }
    }
}

/// `messenger-bench SCENARIO --url URL [--server-pid PID] [--connections N] [--pairs P]
/// [--group-size G] [--rate R] [--duration SECONDS] [--json PATH]`, and
/// `messenger-bench floor --listen ADDR`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "messenger-bench",
    version,
    about = "Load generator for messenger (protocol v1)"
)]
pub struct Args {
    /// The scenario (or `floor` to run the floor relay).
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// The server's WebSocket URL; `?token=USER` is appended (dev auth). Several URLs
    /// separated by commas are the nodes of a cluster: connection i goes to URL i mod n,
    /// so with two nodes both sides of every pair are on different nodes (cross-node
    /// 1:1) and a group's members are spread over the nodes.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,

    /// The server's pid, to read its RSS and CPU time from /proc; several pids
    /// separated by commas (one per node) are summed.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// idle: connections to open; group: total members (groups = N / G);
    /// reconnect: clients dropped at once (K; as many peers stay connected).
    #[arg(long, short = 'n')]
    pub connections: Option<usize>,

    /// pairs: number of pairs (2 connections each, both sides send).
    #[arg(long, short = 'p', default_value_t = 100)]
    pub pairs: usize,

    /// group: members per group.
    #[arg(long, short = 'g', default_value_t = 10)]
    pub group_size: usize,

    /// group: how many members of each group send (the first K; the others only
    /// receive). Default: every member. `group -n 200 -g 200 --senders 20` is one hot
    /// thread with 200 members online and 20 senders.
    #[arg(long)]
    pub senders: Option<usize>,

    /// Total send rate in messages per second over all senders; absent or 0 means full
    /// speed (each sender pipelines up to `--window` unacknowledged sends).
    #[arg(long, short = 'r')]
    pub rate: Option<f64>,

    /// Measured seconds (idle: how long to hold; reconnect: the deadline).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,

    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// The floor relay to compare with in the same run: `auto` spawns
    /// `messenger-bench floor` as a child process, `off` skips it, anything else is the
    /// WebSocket URL of a floor relay already running.
    #[arg(long, default_value = "auto")]
    pub floor: String,

    /// The pid of an already running floor relay given by URL in `--floor`, for RSS.
    #[arg(long)]
    pub floor_pid: Option<u32>,

    /// floor: the address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,

    /// Most `send_message` in flight per sender awaiting `message_sent`.
    #[arg(long, default_value_t = 64)]
    pub window: usize,

    /// Seconds of load before measuring starts (pairs, group).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Seconds to wait, after sending stops, for the answers to sends still in flight
    /// (pairs, group); what is still unanswered then is reported as `unacked_at_end`.
    /// A soak gives it minutes so that a loaded store's backlog drains and only a lost
    /// send stays unanswered.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,

    /// Bytes of message text (at least 24: the send timestamp is embedded in it).
    #[arg(long, default_value_t = 64)]
    pub text_bytes: usize,

    /// Connection attempts in parallel while opening connections.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,

    /// Connections per 127.x.y.z source address (the kernel has roughly 28k client ports
    /// per source address; fewer per address keeps bind() from searching a crowded range).
    #[arg(long, default_value_t = 5_000)]
    pub per_source_ip: usize,

    /// reconnect: each client waits a random 0..J ms before reconnecting.
    #[arg(long, default_value_t = 1000)]
    pub jitter_ms: u64,

    /// reconnect: messages each peer sends while its partner is away.
    #[arg(long, default_value_t = 5)]
    pub messages: usize,

    /// Prefix of every user id in this run (default: derived from the clock, so runs do
    /// not collide on a long-running server).
    #[arg(long)]
    pub run_id: Option<String>,

    /// biggroup: how many of the group's members connect (default: all).
    #[arg(long)]
    pub online: Option<usize>,

    /// Which block of source addresses to use (0, 1, ...): several generator processes
    /// against one box each take their own block, so their source ports never collide.
    /// Block b starts at 127.0.(2b).1 for the server and 127.0.(2b+1).1 for the floor
    /// and holds 254 addresses each.
    #[arg(long, default_value_t = 0)]
    pub source_block: usize,
}

impl Args {
    /// `--connections` with the scenario's default.
    pub fn connections_or_default(&self) -> usize {
        self.connections.unwrap_or(match self.scenario {
            Scenario::Idle => 10_000,
            Scenario::Group => 200,
            Scenario::Biggroup => self.online.unwrap_or(self.group_size),
            Scenario::Reconnect => 1000,
            Scenario::Pairs | Scenario::Floor => 2 * self.pairs,
        })
    }

    /// The fixed total rate, if one was asked for.
    pub fn fixed_rate(&self) -> Option<f64> {
        self.rate.filter(|r| *r > 0.0)
    }

    /// Checks combinations clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.scenario == Scenario::Group && self.group_size < 2 {
            return Err("--group-size must be at least 2".into());
        }
        let big = self.scenario == Scenario::Biggroup;
        if big && self.group_size < 2 {
            return Err("--group-size must be at least 2".into());
        }
        if let Some(k) = self.senders {
            if self.scenario != Scenario::Group && !big {
                return Err("--senders applies to the group and biggroup scenarios only".into());
            }
            let most = if big {
                self.online.unwrap_or(self.group_size).min(self.group_size)
            } else {
                self.group_size
            };
            if k == 0 || k > most {
                return Err(format!(
                    "--senders must be 1 to the members online ({most})"
                ));
            }
        }
        if let Some(k) = self.online {
            if !big {
                return Err("--online applies to the biggroup scenario only".into());
            }
            if k < 2 || k > self.group_size {
                return Err(format!(
                    "--online must be 2 to --group-size ({})",
                    self.group_size
                ));
            }
        }
        if self.scenario == Scenario::Pairs && self.pairs == 0 {
            return Err("--pairs must be at least 1".into());
        }
        if self.window == 0 {
            return Err("--window must be at least 1".into());
        }
        if self.duration.is_nan()
            || self.duration <= 0.0
            || self.warmup.is_nan()
            || self.warmup < 0.0
            || self.drain.is_nan()
            || self.drain < 0.0
        {
            return Err("--duration must be positive, --warmup and --drain not negative".into());
        }
        if self.text_bytes < crate::proto::TIMESTAMP_LEN + 4 {
            return Err(format!(
                "--text-bytes must be at least {}",
                crate::proto::TIMESTAMP_LEN + 4
            ));
        }
        if self.per_source_ip == 0 || self.concurrency == 0 {
            return Err("--per-source-ip and --concurrency must be at least 1".into());
        }
        for url in self.url.split(',') {
            crate::client::Target::parse(url)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_command_line() {
        let a = Args::try_parse_from([
            "messenger-bench",
            "pairs",
            "--url",
            "ws://127.0.0.1:9000/ws",
            "--server-pid",
            "42",
            "--pairs",
            "50",
            "--rate",
            "5000",
            "--duration",
            "3",
            "--json",
            "/tmp/x.json",
        ])
        .expect("parse");
        assert_eq!(a.scenario, Scenario::Pairs);
        assert_eq!(a.url, "ws://127.0.0.1:9000/ws");
        assert_eq!(a.server_pid, vec![42]);
        assert_eq!(a.pairs, 50);
        assert_eq!(a.fixed_rate(), Some(5000.0));
        assert_eq!(a.duration, 3.0);
        assert_eq!(a.json.as_deref(), Some(std::path::Path::new("/tmp/x.json")));
        assert_eq!(a.connections_or_default(), 100);
        assert!(a.validate().is_ok());
    }

    #[test]
    fn floor_and_defaults() {
        let a = Args::try_parse_from(["messenger-bench", "floor", "--listen", "127.0.0.1:0"])
            .expect("parse");
        assert_eq!(a.scenario, Scenario::Floor);
        assert_eq!(a.listen.port(), 0);
        let a = Args::try_parse_from(["messenger-bench", "idle", "--connections", "100000"])
            .expect("parse");
        assert_eq!(a.connections_or_default(), 100_000);
        assert_eq!(a.fixed_rate(), None);
        assert_eq!(a.floor, "auto");
        let a = Args::try_parse_from(["messenger-bench", "group", "-g", "1"]).expect("parse");
        assert!(a.validate().is_err());
        assert!(Args::try_parse_from(["messenger-bench", "nope"]).is_err());
        let a = Args::try_parse_from(["messenger-bench", "pairs", "--rate", "0"]).expect("parse");
        assert_eq!(a.fixed_rate(), None);
        assert_eq!(a.drain, 3.0);
    }

    #[test]
    fn drain_is_seconds_and_never_negative() {
        let a =
            Args::try_parse_from(["messenger-bench", "pairs", "--drain", "300"]).expect("parse");
        assert_eq!(a.drain, 300.0);
        assert!(a.validate().is_ok());
        let a = Args::try_parse_from(["messenger-bench", "pairs", "--drain=-1"]).expect("parse");
        let e = a.validate().expect_err("a negative drain is refused");
        assert!(e.contains("--drain"), "{e}");
    }
}
