//! The Network Block Device protocol, both ends: the server a lazy disk is exported
//! through ([`serve`]), and a small client ([`Client`]) for the simulated guest and the
//! tests. The protocol is the one Linux's `nbd` driver, QEMU and `nbd-client` speak
//! (`doc/proto.md` of the NBD project): the fixed newstyle handshake, then simple
//! replies. The kernel's client skips the handshake: it is handed a socket already
//! in transmission ([`super::kernel`]).
//!
//! ```text
//! handshake  S: "NBDMAGIC" "IHAVEOPT" flags:u16   C: flags:u32
//! option     C: "IHAVEOPT" option:u32 len:u32 data      (EXPORT_NAME, GO, INFO, LIST, ABORT)
//! reply      S: 0x3e889045565a9 option:u32 type:u32 len:u32 data
//! request    C: 0x25609513 flags:u16 type:u16 cookie:u64 offset:u64 len:u32 [data]
//! reply      S: 0x67446698 error:u32 cookie:u64 [data]
//! ```
//!
//! Everything a client sends is bounded before it is read: an option's data
//! ([`MAX_OPTION`]), the options before transmission ([`MAX_OPTIONS`]), a request's
//! length ([`MAX_REQUEST`]), the handshake's time ([`HANDSHAKE`]). A request outside
//! the export, or of a kind the server did not offer, gets `EINVAL`; a frame that
//! breaks the protocol (bad magic, a write longer than the limit) ends the connection.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// `NBDMAGIC`.
const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the fixed newstyle handshake, and the start of every option.
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const CLIENT_FLAGS: u32 = (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) as u32;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
const INFO_EXPORT: u16 = 0;

/// Transmission flags the server offers: flags are valid, flush and FUA are honoured.
pub const TRANSMISSION_FLAGS: u16 = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA;
const FLAG_HAS_FLAGS: u16 = 1 << 0;
const FLAG_SEND_FLUSH: u16 = 1 << 2;
const FLAG_SEND_FUA: u16 = 1 << 3;
const CMD_FLAG_FUA: u16 = 1 << 0;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

/// The errno values a reply carries (the protocol's own numbering, Linux's).
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: u32 = 1;
    /// An I/O error: what a guest sees when a chunk cannot be fetched.
    pub const EIO: u32 = 5;
    /// Invalid argument: a request outside the export, or of a kind not offered.
    pub const EINVAL: u32 = 22;
    /// No space left.
    pub const ENOSPC: u32 = 28;
}

/// Largest read or write one request may ask for: the kernel asks for at most its
/// queue's `max_sectors` (a few hundred KiB); QEMU for at most 32 MiB.
pub const MAX_REQUEST: u32 = 32 << 20;
/// Largest option a client may send (an export name is at most 4096 bytes).
pub const MAX_OPTION: u32 = 8 << 10;
/// Most options before transmission starts.
pub const MAX_OPTIONS: usize = 32;
/// Time a client has for the whole handshake.
pub const HANDSHAKE: Duration = Duration::from_secs(10);

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The connection failed.
    #[error("NBD connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol.
    #[error("NBD protocol: {0}")]
    Protocol(String),
    /// The handshake took longer than [`HANDSHAKE`].
    #[error("the NBD handshake took longer than {HANDSHAKE:?}")]
    Slow,
    /// The server answered a request with an error.
    #[error("the NBD server answered error {errno} ({})", describe(*errno))]
    Remote {
        /// Its errno.
        errno: u32,
    },
}

fn describe(errno: u32) -> &'static str {
    match errno {
        errno::EPERM => "not permitted",
        errno::EIO => "I/O error",
        errno::EINVAL => "invalid argument",
        errno::ENOSPC => "no space",
        _ => "other",
    }
}

fn protocol(why: impl Into<String>) -> NbdError {
    NbdError::Protocol(why.into())
}

/// Why one request failed: the errno its reply carries. What went wrong in detail
/// (which chunk, which peers) is the device's to log and report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub u32);

/// What an export serves: a fixed number of bytes, read and written at offsets the
/// server has checked lie inside it.
pub trait BlockDevice: Send + Sync {
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> impl Future<Output = Result<(), Errno>> + Send;
    /// Writes `data` at `offset`; durable before it returns when `fua`.
    fn write(
        &self,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> impl Future<Output = Result<(), Errno>> + Send;
    /// Makes every completed write durable.
    fn flush(&self) -> impl Future<Output = Result<(), Errno>> + Send;
}

/// One request's header, parsed and checked against nothing yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// The command.
    pub kind: u16,
    /// The client's cookie, echoed in the reply.
    pub cookie: u64,
    /// Where.
    pub offset: u64,
    /// How many bytes.
    pub len: u32,
}

impl Request {
    /// Size of a request header on the wire.
    pub const LEN: usize = 28;

    /// Parses a request header; a wrong magic is a protocol violation.
    pub fn parse(b: &[u8; Self::LEN]) -> Result<Self, NbdError> {
        let magic = u32::from_be_bytes(b[0..4].try_into().expect("4 bytes"));
        if magic != REQUEST_MAGIC {
            return Err(protocol(format!("request magic {magic:#x}, expected {REQUEST_MAGIC:#x}")));
        }
        Ok(Request {
            flags: u16::from_be_bytes(b[4..6].try_into().expect("2 bytes")),
            kind: u16::from_be_bytes(b[6..8].try_into().expect("2 bytes")),
            cookie: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
            offset: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
            len: u32::from_be_bytes(b[24..28].try_into().expect("4 bytes")),
        })
    }

    fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Whether it lies inside an export of `size` bytes.
    fn inside(&self, size: u64) -> bool {
        self.offset.checked_add(u64::from(self.len)).is_some_and(|end| end <= size)
    }
}

/// The server's side of the fixed newstyle handshake, within [`HANDSHAKE`]: offers one
/// export named `export` of `size` bytes. Returns true when the client went on to
/// transmission, false when it aborted.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    export: &str,
    size: u64,
) -> Result<bool, NbdError> {
    tokio::time::timeout(HANDSHAKE, haggle(io, export, size)).await.map_err(|_| NbdError::Slow)?
}

async fn haggle<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    export: &str,
    size: u64,
) -> Result<bool, NbdError> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    io.write_all(&hello).await?;
    io.flush().await?;
    let client = io.read_u32().await?;
    if client & !CLIENT_FLAGS != 0 || client & u32::from(FLAG_FIXED_NEWSTYLE) == 0 {
        return Err(protocol(format!("client flags {client:#x} (fixed newstyle required)")));
    }
    let no_zeroes = client & u32::from(FLAG_NO_ZEROES) != 0;
    for _ in 0..MAX_OPTIONS {
        let magic = io.read_u64().await?;
        if magic != IHAVEOPT {
            return Err(protocol(format!("option magic {magic:#x}")));
        }
        let option = io.read_u32().await?;
        let len = io.read_u32().await?;
        if len > MAX_OPTION {
            return Err(protocol(format!("option {option} of {len} bytes (at most {MAX_OPTION})")));
        }
        let mut data = vec![0u8; len as usize];
        io.read_exact(&mut data).await?;
        match option {
            OPT_EXPORT_NAME => {
                if data != export.as_bytes() {
                    // This option has no error reply: the server closes.
                    return Err(protocol(format!(
                        "export {:?} asked for; this server offers {export:?}",
                        String::from_utf8_lossy(&data)
                    )));
                }
                let mut reply = Vec::with_capacity(10 + 124);
                reply.extend_from_slice(&size.to_be_bytes());
                reply.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                io.write_all(&reply).await?;
                io.flush().await?;
                return Ok(true);
            }
            OPT_ABORT => {
                reply(io, option, REP_ACK, &[]).await?;
                return Ok(false);
            }
            OPT_LIST => {
                let mut server = (export.len() as u32).to_be_bytes().to_vec();
                server.extend_from_slice(export.as_bytes());
                reply(io, option, REP_SERVER, &server).await?;
                reply(io, option, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => match parse_go(&data) {
                Err(why) => reply(io, option, REP_ERR_INVALID, why.as_bytes()).await?,
                Ok(name) if name != export.as_bytes() && !name.is_empty() => {
                    reply(io, option, REP_ERR_UNKNOWN, b"no such export").await?;
                }
                Ok(_) => {
                    let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                    info.extend_from_slice(&size.to_be_bytes());
                    info.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                    reply(io, option, REP_INFO, &info).await?;
                    reply(io, option, REP_ACK, &[]).await?;
                    if option == OPT_GO {
                        return Ok(true);
                    }
                }
            },
            _ => reply(io, option, REP_ERR_UNSUP, b"not supported").await?,
        }
    }
    Err(protocol(format!("more than {MAX_OPTIONS} options before transmission")))
}

/// The export name of an `INFO` or `GO` option (its information requests are read and
/// ignored: the export's size and flags are always sent).
fn parse_go(data: &[u8]) -> Result<&[u8], String> {
    let len = data.get(..4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
    let Some(len) = len else { return Err("no export name length".into()) };
    let name = data.get(4..4 + len as usize).ok_or("export name past the option's end")?;
    let rest = &data[4 + len as usize..];
    let requests = rest.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match requests {
        Some(n) if rest.len() == 2 + 2 * n as usize => Ok(name),
        _ => Err("information requests do not fill the option".into()),
    }
}

async fn reply<S: AsyncWrite + Unpin>(
    io: &mut S,
    option: u32,
    kind: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    io.write_all(&b).await?;
    io.flush().await?;
    Ok(())
}

/// What a connection did, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Reads answered.
    pub reads: u64,
    /// Writes answered.
    pub writes: u64,
    /// Requests answered with an error.
    pub errors: u64,
}

/// Requests a connection has in progress at once (the kernel's driver keeps up to its
/// queue depth outstanding): a read that waits for a chunk does not hold up the reads
/// behind it.
pub const MAX_IN_FLIGHT: usize = 16;
/// Bytes of requests a connection holds at once (read buffers and write data): the
/// largest request fits.
pub const MAX_IN_FLIGHT_BYTES: u32 = 2 * MAX_REQUEST;

/// A request read off the connection, with its data and its share of
/// [`MAX_IN_FLIGHT_BYTES`].
struct Job {
    request: Request,
    data: Vec<u8>,
    _budget: tokio::sync::OwnedSemaphorePermit,
}

/// Serves `device` on a connection in transmission until the client disconnects
/// (`Ok`, once every request in progress is answered) or breaks the protocol. Up to
/// [`MAX_IN_FLIGHT`] requests run at once and are answered as each completes, in any
/// order (the client matches replies by cookie). Not cancel-safe: requests in
/// progress are lost with the connection.
pub async fn serve<S, D>(io: &mut S, device: &D) -> Result<Served, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: BlockDevice,
{
    let size = device.size();
    let (mut rx, mut tx) = tokio::io::split(io);
    let (jobs, mut queue) = tokio::sync::mpsc::channel::<Job>(MAX_IN_FLIGHT);
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_BYTES as usize));
    let reading = async move {
        let mut header = [0u8; Request::LEN];
        loop {
            match rx.read_exact(&mut header).await {
                Ok(_) => {}
                // A client that closes instead of sending DISC is done all the same.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(NbdError::from(e)),
            }
            let r = Request::parse(&header)?;
            let bytes = match r.kind {
                CMD_WRITE if r.len > MAX_REQUEST => {
                    return Err(protocol(format!(
                        "a write of {} bytes (at most {MAX_REQUEST})",
                        r.len
                    )))
                }
                CMD_WRITE => r.len,
                CMD_READ if r.len <= MAX_REQUEST => r.len,
                CMD_DISC => return Ok(()),
                _ => 0,
            };
            let permit = std::sync::Arc::clone(&budget)
                .acquire_many_owned(bytes)
                .await
                .expect("the budget is never closed");
            let mut data = Vec::new();
            if r.kind == CMD_WRITE {
                data.resize(r.len as usize, 0);
                rx.read_exact(&mut data).await?;
            }
            if jobs.send(Job { request: r, data, _budget: permit }).await.is_err() {
                return Ok(()); // the replies' side ended, with its error
            }
        }
    };
    let answering = async {
        let mut served = Served::default();
        let mut running = futures::stream::FuturesUnordered::new();
        let mut open = true;
        loop {
            tokio::select! {
                job = queue.recv(), if open && running.len() < MAX_IN_FLIGHT => match job {
                    Some(job) => running.push(run(device, size, job)),
                    None => open = false,
                },
                Some((job, result)) = futures::StreamExt::next(&mut running) => {
                    let Job { request: r, .. } = job;
                    match r.kind {
                        CMD_READ => served.reads += 1,
                        CMD_WRITE => served.writes += 1,
                        _ => {}
                    }
                    let (error, data) = match &result {
                        Ok(data) => (0, &data[..]),
                        Err(Errno(e)) => {
                            served.errors += 1;
                            (*e, &[][..])
                        }
                    };
                    let mut head = [0u8; 16];
                    head[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
                    head[4..8].copy_from_slice(&error.to_be_bytes());
                    head[8..16].copy_from_slice(&r.cookie.to_be_bytes());
                    tx.write_all(&head).await?;
                    tx.write_all(data).await?;
                    tx.flush().await?;
                }
                else => return Ok::<_, NbdError>(served),
            }
        }
    };
    let ((), served) = tokio::try_join!(reading, answering)?;
    Ok(served)
}

/// Does one request: its reply's data, or the errno.
async fn run<D: BlockDevice>(device: &D, size: u64, job: Job) -> (Job, Result<Vec<u8>, Errno>) {
    let r = job.request;
    let result = match r.kind {
        CMD_READ if r.len <= MAX_REQUEST && r.inside(size) => {
            let mut buf = vec![0; r.len as usize];
            device.read(r.offset, &mut buf).await.map(|()| buf)
        }
        CMD_WRITE if r.inside(size) => device
            .write(r.offset, &job.data, r.flags & CMD_FLAG_FUA != 0)
            .await
            .map(|()| Vec::new()),
        CMD_WRITE => Err(Errno(errno::ENOSPC)),
        CMD_FLUSH => device.flush().await.map(|()| Vec::new()),
        _ => Err(Errno(errno::EINVAL)),
    };
    (job, result)
}

/// A client of one export: sequential requests with simple replies. What the
/// simulated guest reads its disk with, and the tests.
#[derive(Debug)]
pub struct Client<S> {
    io: S,
    size: u64,
    cookie: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Negotiates export `export` with `NBD_OPT_GO`, within [`HANDSHAKE`].
    pub async fn connect(mut io: S, export: &str) -> Result<Self, NbdError> {
        let go = async {
            let magic = (io.read_u64().await?, io.read_u64().await?);
            if magic != (NBDMAGIC, IHAVEOPT) {
                return Err(protocol("not an NBD server (fixed newstyle)"));
            }
            let flags = io.read_u16().await?;
            if flags & FLAG_FIXED_NEWSTYLE == 0 {
                return Err(protocol("the server is not fixed newstyle"));
            }
            io.write_u32(CLIENT_FLAGS & u32::from(flags)).await?;
            let mut data = (export.len() as u32).to_be_bytes().to_vec();
            data.extend_from_slice(export.as_bytes());
            data.extend_from_slice(&0u16.to_be_bytes());
            let mut option = IHAVEOPT.to_be_bytes().to_vec();
            option.extend_from_slice(&OPT_GO.to_be_bytes());
            option.extend_from_slice(&(data.len() as u32).to_be_bytes());
            option.extend_from_slice(&data);
            io.write_all(&option).await?;
            io.flush().await?;
            let mut size = None;
            loop {
                let (magic, _, kind, len) = (
                    io.read_u64().await?,
                    io.read_u32().await?,
                    io.read_u32().await?,
                    io.read_u32().await?,
                );
                if magic != OPTION_REPLY_MAGIC || len > MAX_OPTION {
                    return Err(protocol("bad option reply"));
                }
                let mut body = vec![0u8; len as usize];
                io.read_exact(&mut body).await?;
                match kind {
                    REP_INFO if body.len() >= 12 && body[..2] == INFO_EXPORT.to_be_bytes() => {
                        size = Some(u64::from_be_bytes(body[2..10].try_into().expect("8 bytes")));
                    }
                    REP_INFO => {}
                    REP_ACK => break,
                    other => {
                        return Err(protocol(format!(
                            "export {export:?} refused ({other:#x}: {})",
                            String::from_utf8_lossy(&body)
                        )))
                    }
                }
            }
            size.ok_or_else(|| protocol("the server sent no export size"))
        };
        let size = tokio::time::timeout(HANDSHAKE, go).await.map_err(|_| NbdError::Slow)??;
        Ok(Client { io, size, cookie: 0 })
    }

    /// The export's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    async fn request(
        &mut self,
        kind: u16,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> Result<(), NbdError> {
        self.cookie += 1;
        let r = Request { flags: 0, kind, cookie: self.cookie, offset, len };
        self.io.write_all(&r.encode()).await?;
        self.io.write_all(data).await?;
        self.io.flush().await?;
        let (magic, error, cookie) =
            (self.io.read_u32().await?, self.io.read_u32().await?, self.io.read_u64().await?);
        if magic != SIMPLE_REPLY_MAGIC || cookie != self.cookie {
            return Err(protocol(format!("reply magic {magic:#x}, cookie {cookie}")));
        }
        match error {
            0 => Ok(()),
            errno => Err(NbdError::Remote { errno }),
        }
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, NbdError> {
        self.request(CMD_READ, offset, len, &[]).await?;
        let mut buf = vec![0u8; len as usize];
        self.io.read_exact(&mut buf).await?;
        Ok(buf)
    }

    /// Writes `data` at `offset`.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        let len = u32::try_from(data.len()).map_err(|_| protocol("a write over 4 GiB"))?;
        self.request(CMD_WRITE, offset, len, data).await
    }

    /// Asks the server to make every write durable.
    pub async fn flush(&mut self) -> Result<(), NbdError> {
        self.request(CMD_FLUSH, 0, 0, &[]).await
    }

    /// Ends the connection (no reply is sent to a disconnect).
    pub async fn disconnect(mut self) -> Result<(), NbdError> {
        self.cookie += 1;
        let r = Request { flags: 0, kind: CMD_DISC, cookie: self.cookie, offset: 0, len: 0 };
        self.io.write_all(&r.encode()).await?;
        self.io.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An export in memory.
    struct Ram(Mutex<Vec<u8>>);

    impl BlockDevice for Ram {
        fn size(&self) -> u64 {
            self.0.lock().expect("test step").len() as u64
        }
        async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
            let ram = self.0.lock().expect("test step");
            if offset == 4096 {
                return Err(Errno(errno::EIO)); // a sector that cannot be read
            }
            buf.copy_from_slice(&ram[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), Errno> {
            self.0.lock().expect("test step")[offset as usize..offset as usize + data.len()]
                .copy_from_slice(data);
            Ok(())
        }
        async fn flush(&self) -> Result<(), Errno> {
            Ok(())
        }
    }

    fn ram() -> Ram {
        Ram(Mutex::new((0..65536u32).map(|i| (i % 251) as u8).collect()))
    }

    /// A server for `ram` on one end of a pipe; the other end is returned.
    fn server(
        export: &'static str,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<Result<Served, NbdError>>) {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(async move {
            let dev = ram();
            if !handshake(&mut server, export, dev.size()).await? {
                return Ok(Served::default());
            }
            serve(&mut server, &dev).await
        });
        (client, task)
    }

    #[tokio::test]
    async fn a_client_reads_and_writes_through_the_handshake() {
        let (io, task) = server("vm1/xvda1");
        let mut c = Client::connect(io, "vm1/xvda1").await.expect("handshake");
        assert_eq!(c.size(), 65536);
        let want: Vec<u8> = (100..300u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(c.read(100, 200).await.expect("test step"), want);
        c.write(8192, b"written").await.expect("test step");
        assert_eq!(
            c.read(8190, 9).await.expect("test step"),
            [&[(8190 % 251) as u8, (8191 % 251) as u8][..], b"written"].concat()
        );
        c.flush().await.expect("test step");
        // A failed read is an error reply; the connection goes on.
        assert!(matches!(c.read(4096, 512).await, Err(NbdError::Remote { errno: errno::EIO })));
        // Outside the export: EINVAL, and still connected.
        assert!(matches!(
            c.read(65000, 1024).await,
            Err(NbdError::Remote { errno: errno::EINVAL })
        ));
        assert!(matches!(
            c.read(u64::MAX - 10, 100).await,
            Err(NbdError::Remote { errno: errno::EINVAL })
        ));
        assert!(matches!(
            c.read(0, MAX_REQUEST + 1).await,
            Err(NbdError::Remote { errno: errno::EINVAL })
        ));
        assert_eq!(c.read(0, 4).await.expect("test step"), [0, 1, 2, 3]);
        c.disconnect().await.expect("test step");
        let served = task.await.expect("test step").expect("clean end");
        assert_eq!((served.writes, served.errors), (1, 4));
    }

    /// A read that waits (for a chunk on its way) does not hold up the reads behind
    /// it: they are answered first, and the waiting one once it can be.
    #[tokio::test]
    async fn a_waiting_read_does_not_hold_up_the_next() {
        /// Reads at 0 wait until a read elsewhere has been made.
        struct Gate(Ram, tokio::sync::Notify);
        impl BlockDevice for Gate {
            fn size(&self) -> u64 {
                self.0.size()
            }
            async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
                if offset == 0 {
                    self.1.notified().await;
                } else {
                    self.1.notify_one();
                }
                self.0.read(offset, buf).await
            }
            async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Errno> {
                self.0.write(offset, data, fua).await
            }
            async fn flush(&self) -> Result<(), Errno> {
                Ok(())
            }
        }
        let (mut io, mut end) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(async move {
            let dev = Gate(ram(), tokio::sync::Notify::new());
            serve(&mut end, &dev).await
        });
        for (cookie, offset) in [(1u64, 0u64), (2, 8192)] {
            let r = Request { flags: 0, kind: CMD_READ, cookie, offset, len: 16 };
            io.write_all(&r.encode()).await.expect("test step");
        }
        let mut answered = Vec::new();
        for _ in 0..2 {
            let mut reply = [0u8; 16 + 16];
            tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut reply))
                .await
                .expect("answered, not held up behind the waiting read")
                .expect("test step");
            let cookie = u64::from_be_bytes(reply[8..16].try_into().expect("8 bytes"));
            let at = if cookie == 1 { 0 } else { 8192 };
            let want: Vec<u8> = (at..at + 16u32).map(|i| (i % 251) as u8).collect();
            assert_eq!(reply[16..], want[..], "reply to {cookie}");
            answered.push(cookie);
        }
        assert_eq!(answered, [2, 1]);
        drop(io);
        let served = task.await.expect("test step").expect("clean end");
        assert_eq!((served.reads, served.errors), (2, 0));
    }

    #[tokio::test]
    async fn another_export_is_refused() {
        let (io, task) = server("vm1/xvda1");
        let err = Client::connect(io, "vm2/xvda1").await.expect_err("not offered");
        assert!(err.to_string().contains("refused"), "{err}");
        drop(task);
    }

    /// Hostile clients: each violation ends the connection with an error naming it,
    /// and nothing is allocated past the limits.
    #[tokio::test]
    async fn protocol_violations_end_the_connection() {
        async fn after_handshake(bytes: Vec<u8>) -> String {
            let (mut io, task) = server("x");
            let mut hello = [0u8; 18];
            io.read_exact(&mut hello).await.expect("test step");
            io.write_u32(CLIENT_FLAGS).await.expect("test step");
            io.write_all(&bytes).await.expect("test step");
            task.await.expect("test step").expect_err("violation").to_string()
        }
        let opt = |option: u32, len: u32| {
            let mut b = IHAVEOPT.to_be_bytes().to_vec();
            b.extend_from_slice(&option.to_be_bytes());
            b.extend_from_slice(&len.to_be_bytes());
            b
        };
        assert!(after_handshake(opt(OPT_GO, MAX_OPTION + 1)).await.contains("8193 bytes"));
        let mut many = Vec::new();
        for _ in 0..=MAX_OPTIONS {
            many.extend(opt(99, 0));
        }
        assert!(after_handshake(many).await.contains("more than 32 options"));
        let mut bad = opt(OPT_EXPORT_NAME, 1);
        bad.push(b'y');
        assert!(after_handshake(bad).await.contains("export \"y\""));
        // In transmission: a wrong magic, and a write past the limit.
        let mut go = opt(OPT_EXPORT_NAME, 1);
        go.push(b'x');
        let mut r = Request { flags: 0, kind: CMD_READ, cookie: 1, offset: 0, len: 1 }.encode();
        r[0] = 0;
        assert!(after_handshake([go.clone(), r.to_vec()].concat()).await.contains("request magic"));
        let w = Request { flags: 0, kind: CMD_WRITE, cookie: 1, offset: 0, len: MAX_REQUEST + 1 };
        assert!(after_handshake([go, w.encode().to_vec()].concat()).await.contains("a write of"));
        // Bad client flags.
        let (mut io, task) = server("x");
        let mut hello = [0u8; 18];
        io.read_exact(&mut hello).await.expect("test step");
        io.write_u32(0x80).await.expect("test step");
        assert!(task
            .await
            .expect("test step")
            .expect_err("fails")
            .to_string()
            .contains("client flags"));
    }

    #[test]
    fn go_options_are_parsed_within_their_bounds() {
        let go = |name: &[u8], n: u16, extra: usize| {
            let mut d = (name.len() as u32).to_be_bytes().to_vec();
            d.extend_from_slice(name);
            d.extend_from_slice(&n.to_be_bytes());
            d.extend(vec![0u8; extra]);
            d
        };
        assert_eq!(parse_go(&go(b"vm", 0, 0)).expect("test step"), b"vm");
        assert_eq!(parse_go(&go(b"vm", 2, 4)).expect("test step"), b"vm");
        assert!(parse_go(&go(b"vm", 3, 4)).is_err());
        assert!(parse_go(&[0, 0, 1, 0]).is_err(), "a name past the end");
        assert!(parse_go(&[0, 0]).is_err());
    }
}
