//! A fault-injecting TCP proxy (what toxiproxy does, for the faults this suite needs):
//! one listener in front of one upstream, whose connections can be slowed, black-holed
//! or reset on command.
//!
//! Written here rather than run as toxiproxy: toxiproxy would be a Go build and a
//! daemon with an HTTP API to manage; these four behaviours are a hundred lines on
//! tokio and are driven directly from the test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Forward each chunk after this delay, in both directions.
    Latency(Duration),
    /// Stop forwarding in both directions (bytes wait, connections stay open) and hold
    /// new connections without connecting them upstream: a network partition.
    Blackhole,
    /// Reset every open connection (RST) and reset new ones at once.
    Reset,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The upstream it forwards to.
    pub upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("fault", &*self.fault.borrow())
            .finish()
    }
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (fault, rx) = watch::channel(Fault::Pass);
        let task = tokio::spawn(accept_loop(listener, upstream, Arc::new(rx)));
        Ok(FaultProxy {
            addr,
            upstream,
            fault,
            task,
        })
    }

    /// Applies `fault` to open and new connections.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    fault: Arc<watch::Receiver<Fault>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = client.set_nodelay(true);
        let mut fault = (*fault).clone();
        tokio::spawn(async move {
            // Held (partition) or refused (reset) until the fault changes.
            loop {
                let now = *fault.borrow_and_update();
                match now {
                    Fault::Reset => {
                        reset(client);
                        return;
                    }
                    Fault::Blackhole => {}
                    Fault::Pass | Fault::Latency(_) => break,
                }
                if fault.changed().await.is_err() {
                    return;
                }
            }
            let Ok(server) = TcpStream::connect(upstream).await else {
                reset(client);
                return;
            };
            let _ = server.set_nodelay(true);
            // Linger 0 on both sockets: whenever the pair is dropped (a reset fault, or
            // one side gone) both peers see a reset, as on a broken network path.
            linger_zero(&client);
            linger_zero(&server);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let up = pipe(cr, sw, fault.clone());
            let down = pipe(sr, cw, fault.clone());
            tokio::pin!(up, down);
            // Whichever direction ends first (EOF, error or reset) ends both.
            tokio::select! {
                _ = &mut up => {}
                _ = &mut down => {}
            }
        });
    }
}

/// Makes closing `s` send RST instead of FIN.
fn linger_zero(s: &TcpStream) {
    // Deprecated because a non-zero linger blocks the thread in close(); a zero linger
    // never blocks: the kernel drops the buffers and sends RST at once.
    #[allow(deprecated)]
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// Closes with RST instead of FIN.
fn reset(s: TcpStream) {
    linger_zero(&s);
    drop(s);
}

/// Copies `r` to `w` under the fault in force until EOF, an error or a reset fault.
async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let now = *fault.borrow_and_update();
        match now {
            Fault::Reset => return,
            Fault::Blackhole => {
                if fault.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Fault::Pass | Fault::Latency(_) => {}
        }
        let n = tokio::select! {
            n = r.read(&mut buf) => n,
            _ = fault.changed() => continue,
        };
        let n = match n {
            Ok(0) | Err(_) => {
                let _ = w.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let now = *fault.borrow();
        if let Fault::Latency(d) = now {
            tokio::time::sleep(d).await;
        }
        // Bytes read before a reset or a partition began still go through: the fault
        // applies from the next read on.
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
